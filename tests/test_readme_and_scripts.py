"""README commands and scripts are code under test."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quickstart = readme_python_blocks()[0]
    namespace: dict = {}
    exec(compile(quickstart, "README.md", "exec"), namespace)
    assert (tmp_path / "my-maskformer" / "model.safetensors").is_file()
    assert namespace["out"].masks_queries_logits.shape == (2, 100, 128, 128)


def test_bench_forward_runs(tmp_path):
    out = tmp_path / "forward.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_forward.py"), "--size", "96", "--repeats", "1",
         "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up ours/transformers" in result.stdout and out.is_file()


def test_readme_training_example_runs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    exec(compile(readme_python_blocks()[2], "README.md", "exec"), namespace)
    assert namespace["out"].loss.requires_grad
    assert len(namespace["out"].loss_dict) == 18


def test_bench_train_step_runs(tmp_path):
    out = tmp_path / "train.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_train_step.py"), "--size", "64", "--steps", "1",
         "--segments", "2", "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "matching + loss" in result.stdout and out.is_file()


def test_bench_processing_runs(tmp_path):
    out = tmp_path / "processing.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_processing.py"), "--batch", "2", "--height", "48", "--width", "64",
         "--queries", "12", "--classes", "10", "--mask-size", "16", "--confident", "4", "--repeats", "1",
         "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up" in result.stdout and "semantic" in result.stdout and out.is_file()


def test_readme_processing_example_runs(tmp_path, monkeypatch):
    blocks = [b for b in readme_python_blocks() if "post_process_panoptic_segmentation(" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["semantic"].shape == (200, 300)
    assert {"segmentation", "segments_info"} <= set(namespace["panoptic"])
    assert all({"label", "score", "mask"} <= set(s) for s in namespace["segments"])
    assert (tmp_path / "my-segmenter" / "modeling_maskformer.py").is_file()
