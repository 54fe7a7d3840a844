"""Every code block and command of README.md and docs/*.md runs, on tiny data, so that none can rot.

Each page runs top to bottom in a fresh workspace: a temporary folder holding what a reader has
after ``make demo`` (``demo_output/`` from a tiny run of the demo recipe), links to the repository's
``scripts/``, ``benchmarks/``, ``assets/`` and ``app.py``, small data sets in the official layouts
(``data/ADEChallengeData2016``, ``data/coco``, ``my_data`` as a panoptic folder), ``photos/`` and tiny
stand-ins for the Hub checkpoints the page names (``facebook/maskformer-*``: local folders of that
name, which ``from_pretrained`` takes before the Hub; the network is off) and for the original
release's files it names (``model_final_*.pkl``: tiny checkpoints in detectron2's layout).

* ``python`` blocks run in one namespace per page, as written (on the pages of ``OWN_PROCESS``,
  each block in a process of its own). The Hub is faked at ``HfApi``'s HTTP
  calls (``tests/fake_hub.py``), in the test's process and for ``maskformer-hf push`` / ``train
  --push_to_hub`` commands; every commit is checked to hold a complete checkpoint.
* ``bash`` blocks run one command per line through bash; ``maskformer-hf`` commands run in the
  test's process instead, through the CLI's ``main`` (``runs_in_process``), which saves a torch import each. Commands that train, evaluate, benchmark or
  generate data get budget flags appended (``BUDGETS``; argparse keeps the last value of a flag):
  the command as written, with 2 steps, 64-pixel crops, a few examples and, for paper presets, a tiny
  model of the same backbone family. ``make`` targets run in the repository with the demo's output folder and budget passed as
  variables; servers (``make app``, ``python app.py``) are started, asked for their page, and stopped.
* ``text`` blocks (layouts, outputs) are not commands; a fence of any other language fails the
  test. What else is not run, and why: ``NOT_RUN``; a command of a block that its budget makes
  identical to an earlier one of the block (``--threads 1`` on a benchmark already budgeted to it)
  runs once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import built_once, scene, tiny_hf_model
from fake_hub import FakeHub

from maskformer_hf.precision import NATIVE_BF16_ENV

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
NOT_RUN = {"make test": "the command that runs this very suite (CI runs it through .ci/run)",
           "make test-fast": "the fast tier of this very suite"}
# Pages whose python blocks run each in a process of its own (each block is self-contained there, and
# shows a user's whole script: loading, exporting, measuring every runtime).
OWN_PROCESS = {"docs/deployment.md"}
LINKED = ("scripts", "benchmarks", "assets", "app.py", "src")
HUB = ".fake_hub"  # the workspace folder holding the faked Hub's repositories (tests/fake_hub.py)

TINY_MODEL = {"hidden_size": 32, "fpn_feature_size": 32, "mask_feature_size": 32, "num_queries": 12,
              "decoder_layers": 2, "decoder_ffn_dim": 64, "decoder_attention_heads": 4, "encoder_layers": 0}
TINY_BACKBONES = {  # a paper preset's backbone family, shrunk
    "swin": {"backbone_config": {"model_type": "maskformer-swin", "embed_dim": 32, "depths": [1, 1, 2, 1],
                                 "num_heads": [1, 2, 2, 4], "window_size": 4, "image_size": 64}},
    "resnet": {"backbone": "resnet18", "backbone_config": None},
}
TRAIN_BUDGET = ["--max_steps", "2", "--per_device_batch_size", "2", "--num_workers", "0", "--crop_size", "64",
                "--eval_size", "64", "--max_train_samples", "8", "--max_eval_samples", "2", "--pretrained_backbone",
                "false", "--synthetic_num_train", "8", "--synthetic_num_val", "4", "--synthetic_size", "64"]
BUDGETS = {  # a piece of the command -> flags appended (benchmarks write into the workspace, not the repository)
    "benchmarks/bench_forward.py": ["--size", "96", "--repeats", "1", "--output", "results/forward.json"],
    "benchmarks/bench_train_step.py": ["--size", "64", "--steps", "1", "--segments", "2", "--repeats", "1",
                                       "--variants", "transformers", "ours", "--output", "results/train_step.json"],
    "benchmarks/bench_processing.py": ["--quick", "--threads", "1", "--output", "results/processing.json"],
    "benchmarks/bench_inference.py": ["--size", "64", "--batch-sizes", "1", "--repeats", "1", "--modes", "fp32",
                                      "onnxruntime", "--backbones", "resnet50", "--trained-size", "64",
                                      "--output", "results/inference.json"],
    "benchmarks/bench_data.py": ["--size", "80", "--crop", "64", "--train-steps", "1", "--batches", "2",
                                 "--images", "8", "--output", "results/data.json"],
    "benchmarks/bench_sliding_window.py": ["--sizes", "128", "--crop", "64", "--stride", "48", "--tasks", "semantic",
                                           "--output", "results/sliding_window.json"],
    "benchmarks/bench_coco_instances.py": ["--images", "50", "--output", "results/coco_instances.json"],
    "maskformer_hf.data.synthetic": ["--num-train", "4", "--num-val", "2", "--size", "64"],
    "maskformer-hf evaluate": ["--max_samples", "2"],
}


# ---------------------------------------------------------------------------------------------
# Reading the pages
# ---------------------------------------------------------------------------------------------
LANGUAGES = {"python": "run", "bash": "run", "text": "not code: layouts, outputs"}


def code_blocks(page: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block, in order; every fence names one of ``LANGUAGES``
    (so that no block can escape the harness under another name)."""
    text = (ROOT / page).read_text()
    fences = re.findall(r"^```(.*)$", text, flags=re.M)
    openings = fences[::2]
    assert len(fences) % 2 == 0 and all(f == "" for f in fences[1::2]), f"{page}: unbalanced fences"
    assert set(openings) <= set(LANGUAGES), f"{page}: fences {sorted(set(openings) - set(LANGUAGES))}"
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(code: str) -> list[list[str]]:
    """One token list per command (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", code)
    return [tokens for line in joined.splitlines() if (tokens := shlex.split(line, comments=True))]


def hub_ids(page: str) -> set[str]:
    return set(re.findall(r"facebook/maskformer-[\w.-]+", (ROOT / page).read_text()))


# ---------------------------------------------------------------------------------------------
# The workspace
# ---------------------------------------------------------------------------------------------
def write_panoptic_folder(root: Path, num_train: int = 8, num_val: int = 4) -> None:
    """``my_data`` as the README describes it: classes.json, images/, R = class / G = instance PNGs."""
    classes = ["sky", "road", {"name": "car", "isthing": True}, {"name": "person", "isthing": True}, "tree"]
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    for split, count in (("train", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(count):
            pixels, ids = scene(64, 64, 100 * len(split) + index)
            value = np.where(ids >= 100, ids - 98, ids) + 1  # car = 3, person = 4 (1-based class values)
            instance = (ids >= 100).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{index:04d}.jpg")
            Image.fromarray(np.dstack([value, instance, 0 * instance]).astype(np.uint8)).save(
                root / "annotations" / split / f"{index:04d}.png")


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """What every workspace starts from, built once per run (whatever the number of workers): a tiny
    demo run, data sets, photos."""
    return built_once(tmp_path_factory, "docs-shared", build_shared)


def build_shared(base: Path) -> None:
    from maskformer_hf.data.synthetic import write_synthetic_dataset
    from maskformer_hf.train_loop import train
    from maskformer_hf.training import TrainConfig

    demo = base / "demo_output"
    budget = dict(zip([f.lstrip("-") for f in TRAIN_BUDGET[::2]], TRAIN_BUDGET[1::2]))
    values = {k: (v == "true" if v in ("true", "false") else int(v)) for k, v in budget.items()}
    train(TrainConfig.from_file("demo", **values, output_dir=str(demo), data_dir=str(demo / "data")))
    shutil.rmtree(demo / "checkpoints")  # optimizer states: large, and no page needs them
    write_synthetic_dataset(base / "data", num_train=8, num_val=4, size=64)
    write_panoptic_folder(base / "my_data")
    (base / "photos").mkdir()
    Image.fromarray(scene(70, 90, 1)[0]).save(base / "photos" / "example.png")
    Image.fromarray(scene(64, 48, 2)[0]).save(base / "photos" / "other.jpg")


@pytest.fixture(scope="session")
def hub_stand_ins(tmp_path_factory):
    """Tiny transformers MaskFormer checkpoints (with their processor) under a Hub id's name."""
    from transformers import MaskFormerImageProcessor as ReferenceProcessor

    base = tmp_path_factory.mktemp("hub")

    def get(hub_id: str) -> Path:
        folder = base / hub_id
        if not folder.exists():
            tiny_hf_model("swin" if "swin" in hub_id else "resnet").save_pretrained(folder)
            ReferenceProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
        return folder
    return get


def make_workspace(path: Path, shared: Path, page: str, hub_stand_ins) -> Path:
    (path / "photos").symlink_to(shared / "photos")
    for name in ("demo_output", "my_data", "data"):  # copies: pages write into them
        shutil.copytree(shared / name, path / name)
    for name in LINKED:
        (path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "model_cards", path / "model_cards")  # a copy: `make_model_cards.py` rewrites it
    for hub_id in hub_ids(page):
        (path / hub_id).parent.mkdir(parents=True, exist_ok=True)
        (path / hub_id).symlink_to(hub_stand_ins(hub_id))
    for name in set(re.findall(r"model_final_\w+\.pkl", (ROOT / page).read_text())):
        write_detectron2_stand_in(path / name)
    return path


def write_detectron2_stand_in(path: Path) -> None:
    """An original-release checkpoint in detectron2's layout (ResNet-18, ADE20K's 150 classes, a tiny head)."""
    from test_conversion_detectron2 import reference_and_checkpoint

    from maskformer_hf import MaskFormerConfig

    config = MaskFormerConfig(backbone="resnet18", num_labels=150, num_queries=8, hidden_size=64, decoder_layers=2,
                              decoder_ffn_dim=64, decoder_attention_heads=8, fpn_feature_size=32, mask_feature_size=32)
    reference_and_checkpoint(config)[1].save(path)


# ---------------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------------
# The pages train with --mixed_precision bf16 after fp32 runs, in one process: run as on a CPU with native
# bf16 on every CPU (the tiny budgeted models train as fast emulated), so the pages' result never depends on it.
FORCED = {NATIVE_BF16_ENV: "1"}


def environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **FORCED)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def train_budget(tokens: list[str]) -> list[str]:
    """The training budget: 2 steps (``--run_steps`` becomes 1, so a later ``--resume_from latest``
    really resumes), small crops and sets; and when the command trains a paper preset from scratch, a
    tiny model of the preset's backbone family, merged into the recipe's own ``model_overrides``."""
    from maskformer_hf import PRESETS
    from maskformer_hf.training import TrainConfig

    recipe = TrainConfig.from_file(tokens[tokens.index("--config") + 1]) if "--config" in tokens else TrainConfig()
    model = tokens[tokens.index("--model") + 1] if "--model" in tokens else recipe.model
    budget = TRAIN_BUDGET + (["--run_steps", "1"] if "--run_steps" in tokens else [])
    if model not in PRESETS:
        return budget
    overrides = json.loads(tokens[tokens.index("--model_overrides") + 1]) if "--model_overrides" in tokens \
        else dict(recipe.model_overrides)
    family = "swin" if "swin" in model else "resnet"
    if "backbone" in overrides and "swin" not in str(overrides["backbone"]):
        family = "resnet"
    return budget + ["--model_overrides", json.dumps({**overrides, **TINY_MODEL, **TINY_BACKBONES[family]})]


def with_budget(tokens: list[str]) -> list[str]:
    text = " ".join(tokens)
    if "--help" in tokens:
        return tokens
    if "scripts/train.py" in tokens or "maskformer-hf train" in text:
        return tokens + train_budget(tokens)
    for piece, flags in BUDGETS.items():
        if piece in text:
            return tokens + flags
    return tokens


def command_key(tokens: list[str]) -> tuple:
    """What a command does once budgeted: its words before the first flag and, per flag, the values
    of its last occurrence (argparse keeps the last)."""
    full = with_budget(tokens)
    start = next((i for i, token in enumerate(full) if token.startswith("--")), len(full))
    flags: dict[str, list[str]] = {}
    for token in full[start:]:
        if token.startswith("--"):
            flag = token
            flags[flag] = []
        else:
            flags[flag].append(token)
    return tuple(full[:start]), tuple(sorted((flag, tuple(values)) for flag, values in flags.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_stop(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start a server command, wait until its page answers, stop it."""
    port = free_port()
    env = dict(env, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    process = subprocess.Popen(["bash", "-c", shlex.join(command)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{shlex.join(command)} exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{shlex.join(command)}: no page on port {port} after 180 s")
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def runs_in_process(tokens: list[str]) -> bool:
    """``maskformer-hf`` commands run as ``maskformer_hf.cli.main(argv)``, and ``python SCRIPT ...`` /
    ``python -m MODULE ...`` as ``__main__`` through ``runpy``, in the test's process (which has imported
    torch and transformers once, instead of once per command); except ``segment --fast`` (the user's
    path to every native runtime at once: it runs as the user runs it) and commands with shell syntax or
    an environment prefix. ``export`` runs here too: its check loads ONNX Runtime, as
    tests/test_export.py does."""
    shell_syntax = any(token in ("|", ">", ">>", "<", "&&", ";", "&") for token in tokens)
    if shell_syntax or len(tokens) < 2 or "--fast" in tokens:
        return False
    return tokens[0] in ("maskformer-hf", "python")


def run_in_process(tokens: list[str], text: str) -> None:
    import runpy

    import torch

    from maskformer_hf.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, path, threads = list(sys.argv), list(sys.path), torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if tokens[0] == "maskformer-hf":
                status = main(tokens[1:])
            elif tokens[1] == "-m":
                sys.argv = [tokens[2], *tokens[3:]]
                runpy.run_module(tokens[2], run_name="__main__", alter_sys=True)
                status = 0
            else:
                sys.argv = tokens[1:]
                sys.path.insert(0, str(Path(tokens[1]).resolve().parent))  # as python puts the script's folder first
                runpy.run_path(tokens[1], run_name="__main__")
                status = 0
        except SystemExit as exit_:  # argparse (--help, bad flags), sys.exit(main())
            status = exit_.code or 0
        finally:
            sys.argv[:], sys.path[:] = argv, path
            torch.set_num_threads(threads)  # a benchmark's --threads
    assert status == 0, f"{text}\n(run in process as: {shlex.join(tokens)})\n{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}"


# ---------------------------------------------------------------------------------------------
# What the commands and blocks write
# ---------------------------------------------------------------------------------------------
OUTPUT_FLAGS = ("--out", "--output", "--output_dir")


def last_value(tokens: list[str], flag: str) -> str | None:
    values = [tokens[i + 1] for i, token in enumerate(tokens[:-1]) if token == flag]
    return values[-1] if values else None


def written_by(tokens: list[str]) -> list[str]:
    """The files and folders a (budgeted) command says it writes: its ``--out`` / ``--output`` /
    ``--output_dir``, the folder ``maskformer-hf convert SRC DST`` names, the card ``maskformer-hf card
    MODEL`` writes."""
    paths = [value for flag in OUTPUT_FLAGS if (value := last_value(tokens, flag)) is not None]
    words = [t for t in tokens if not t.startswith("-")]
    if words[:2] == ["maskformer-hf", "convert"] and len(words) >= 4:
        paths.append(words[3])
    if words[:2] == ["maskformer-hf", "card"] and len(words) >= 3:
        paths.append(f"{words[2]}/README.md")
    return paths


def check_file(path: Path) -> None:
    """`path` exists and decodes as its suffix says."""
    assert path.is_file() and path.stat().st_size > 0, f"{path}: missing or empty"
    suffix = path.suffix.lower()
    if suffix == ".json":
        document = json.loads(path.read_text())  # a list may be empty (no instance over a page's threshold)
        assert isinstance(document, list) or document, f"{path}: an empty document"
    elif suffix == ".jsonl":
        assert all(json.loads(line) is not None for line in path.read_text().splitlines()), path
    elif suffix in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            image.load()
            assert image.width > 0 and image.height > 0, path
    elif suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    elif suffix in (".pt", ".pt2", ".bin"):
        import zipfile

        assert zipfile.is_zipfile(path), f"{path}: not a torch archive"
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as tensors:
            assert list(tensors.keys()), f"{path}: no tensors"
    elif suffix in (".md", ".txt", ".yaml"):
        assert path.read_text().strip(), f"{path}: empty"


def check_written(path: Path) -> None:
    """A file decodes (:func:`check_file`); a folder holds files, each of which decodes; a checkpoint
    folder (``config.json``) holds its weights; a training run's ``metrics.json`` holds the scores."""
    assert path.exists(), f"{path}: the page says it is written, but it is not"
    if path.is_file():
        return check_file(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    assert files, f"{path}: an empty folder"
    for file in files:
        check_file(file)
    for config in path.rglob("config.json"):
        if "model_type" in json.loads(config.read_text()):
            assert (config.parent / "model.safetensors").is_file() or \
                (config.parent / "model.safetensors.index.json").is_file(), f"{config.parent}: no weights"
    if (path / "metrics.json").is_file():
        assert "mean_iou" in json.loads((path / "metrics.json").read_text()), f"{path}/metrics.json"


PYTHON_WRITES = re.compile(r"(?:\.save|\.save_pretrained|export_model\([^\n]*?,)\(?\s*\"([^\"]+)\"")


def written_by_python(code: str) -> list[str]:
    """The paths a python block writes through ``.save("...")``, ``.save_pretrained("...")`` or
    ``export_model(model, "...", ...)``."""
    return PYTHON_WRITES.findall(code)


def run_command(tokens: list[str], workspace: Path) -> None:
    """Run one command of a page (budgeted, see the module docstring), then check what it says it writes."""
    _run_command(tokens, workspace)
    made = ["demo_output"] if tokens[:2] == ["make", "demo"] else []  # the run, its overlays, segmented images
    for path in made + written_by(with_budget(tokens)):
        check_written(workspace / path)


def _run_command(tokens: list[str], workspace: Path) -> None:
    env = environment()
    text = shlex.join(tokens)
    if tokens[0] == "make":
        target = tokens[1] if len(tokens) > 1 else "demo"
        demo_flags = shlex.join(train_budget(["--config", "demo"]))
        tokens = ["make", "-C", str(ROOT), *tokens[1:], f"DEMO_OUT={workspace / 'demo_output'}",
                  f"DEMO_FLAGS={demo_flags}"]
        if target == "app":
            return serve_and_stop(tokens, workspace, env)
    if "app.py" in tokens:
        return serve_and_stop(tokens, workspace, env)
    tokens = with_budget(tokens)
    if runs_in_process(tokens):
        return run_in_process(tokens, text)
    if tokens[0] == "maskformer-hf" and ("push" in tokens[1:2] or "--push_to_hub" in tokens):
        tokens = [sys.executable, str(ROOT / "tests" / "fake_hub.py"), str(workspace / HUB), *tokens[1:]]
    done = subprocess.run(["bash", "-c", shlex.join(tokens)], cwd=workspace, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{text}\n(run as: {shlex.join(tokens)})\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch, shared, hub_stand_ins):
    blocks = code_blocks(page)
    assert blocks or page == "docs/benchmarks.md"
    workspace = make_workspace(tmp_path, shared, page, hub_stand_ins)
    monkeypatch.chdir(workspace)
    for name, value in FORCED.items():  # the commands run in this process too
        monkeypatch.setenv(name, value)
    for name, value in environment().items():
        monkeypatch.setenv(name, value)
    hub = FakeHub(workspace / HUB)
    hub.install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_docs_token")
    # optimize's decisions: shared by the pages (each measures the same demo checkpoint), never the user's.
    monkeypatch.setenv("MASKFORMER_HF_CACHE", str(shared / ".cache"))
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for language, code in blocks:
        if language == "python" and page in OWN_PROCESS:
            script = workspace / f"_block_{ran}.py"
            script.write_text(code)
            done = subprocess.run([sys.executable, str(script)], cwd=workspace, env=environment(),
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{code}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
            ran += 1
        elif language == "python":
            exec(compile(code, page, "exec"), namespace)
            ran += 1
        if language == "python":
            for path in written_by_python(code):
                check_written(workspace / path)
        elif language == "bash":
            budgeted: set[tuple] = set()  # a block's commands that are one command once budgeted
            for tokens in shell_commands(code):
                if " ".join(tokens) in NOT_RUN or command_key(tokens) in budgeted:
                    continue
                budgeted.add(command_key(tokens))
                run_command(tokens, workspace)
                ran += 1
    assert ran > 0
    text = (ROOT / page).read_text()
    if "maskformer-hf push" in text or "push_to_hub(" in text or "--push_to_hub true" in text:
        assert hub.commits, "the page pushes to the Hub, but nothing was pushed"
        for commit in hub.commits:  # each push: one commit holding a complete checkpoint
            assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(commit["files"])


def test_readme_is_a_front_door_that_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"({page})" in readme, f"README.md does not link {page}"
    for target in re.findall(r"\]\(((?:docs/)?[\w/.-]+\.(?:md|png))(?:#[\w-]+)?\)", readme):
        assert (ROOT / target).exists(), target
