"""benchmarks/bench_reliability.py: its growth figure on known samples, and a --quick run end to end
(pipeline, CLI in a child process, evaluation), whose report must hold every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_reliability  # noqa: E402

pytestmark = pytest.mark.system


def test_growth_after_warmup():
    samples = [{"images": i, "peak": r} for i, r in ((0, 50.0), (10, 100.0), (15, 104.0), (20, 112.0), (25, 108.0),
                                                    (30, 110.0))]
    g = bench_reliability.growth(samples, warmup=10, window=5)
    # after warm-up: the peak over images 10..15 (104); at the end: the peak over 25..30 (110)
    assert (g["warmup_images"], g["window_images"], g["end_images"]) == (10, 5, 30)
    assert g["after_warmup_mb"] == 104.0 and g["end_mb"] == 110.0
    assert g["growth_pct"] == pytest.approx(100 * 6 / 104) and g["growth_mb"] == pytest.approx(6.0)
    assert g["max_mb"] == 112.0 and g["max_growth_pct"] == pytest.approx(100 * 8 / 104)
    assert g["slope_mb_per_100_images"] == pytest.approx(48.0)  # least squares through the five samples from 10 on
    assert not g["passes"]
    assert bench_reliability.growth(samples[:3] + [{"images": 30, "peak": 108.0}], warmup=10, window=5)["passes"]
    with pytest.raises(ValueError, match="warm-up"):
        bench_reliability.growth(samples, warmup=40, window=5)


def test_the_last_window_replays_the_window_after_the_warm_up():
    paths = [Path(f"{i}.jpg") for i in range(30)]
    sequence = bench_reliability.replayed(paths, 30, 3)
    assert len(sequence) == 30 and sequence[:27] == paths[:27] and sequence[27:] == paths[3:6]
    with pytest.raises(ValueError, match="at least 3 x warmup"):
        bench_reliability.replayed(paths, 8, 3)


def test_quick_run_reports_every_figure(tmp_path):
    output = tmp_path / "reliability.json"
    subprocess.run([sys.executable, "benchmarks/bench_reliability.py", "--quick", "--pipeline-images", "12",
                    "--cli-images", "8", "--eval-images", "80", "--work-dir", str(tmp_path), "--output", str(output)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    report = json.loads(output.read_text())
    assert report["quick"] and report["target_growth_pct"] == 5.0
    assert report["torch"] and report["transformers"] and report["machine"]["threads"] >= 1
    runs = report["runs"]
    assert set(runs) == {"pipeline", "cli", "evaluation"}
    assert runs["cli"]["written"] == 8 and runs["cli"]["samples_taken"] >= 2
    assert sum(runs["pipeline"]["segments_per_call"].values()) > 0
    for name, images in (("pipeline", 12), ("cli", 8), ("evaluation", 80)):
        assert runs[name]["images"] == images
        for key in ("peak", "rss", "in_use") if name != "cli" else ("peak", "rss"):
            g = runs[name][key]
            assert g["end_images"] == images and 0 < g["warmup_images"] < images
            assert 10 < g["after_warmup_mb"] < 100_000 and g["max_mb"] >= max(g["end_mb"], g["after_warmup_mb"])
            assert all(math.isfinite(g[k]) for k in ("growth_pct", "growth_mb", "slope_mb_per_100_images"))
            assert g["growth_pct"] == pytest.approx(100 * (g["end_mb"] - g["after_warmup_mb"]) / g["after_warmup_mb"])
    evaluation = runs["evaluation"]
    assert [s["images"] for s in evaluation["samples"]][-1] == 80 and 0 <= evaluation["metrics"]["pq"] <= 1
    table = output.with_suffix(".md").read_text()
    for row in ("| pipeline, peak RSS | 12 |", "| cli, peak RSS | 8 |", "| evaluation, heap in use | 80 |"):
        assert row in table
