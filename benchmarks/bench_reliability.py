#!/usr/bin/env python
"""Memory under load: 300 images through the pipeline and through ``maskformer-hf segment``, and
an evaluation of a 2,000-image split, with the process's resident set (RSS) sampled along the way.

    python benchmarks/bench_reliability.py            # 300 / 300 / 2,000 images (10-25 min on 2 shared cores)
    python benchmarks/bench_reliability.py --quick    # 40 / 40 / 200 images, tiny models (a smoke test, ~40 s)
    python benchmarks/bench_reliability.py --skip cli evaluation --pipeline-images 100

Model (pipeline and CLI): ``MaskFormerConfig.from_preset("resnet50")`` (41 M parameters, 100
queries, 6 decoder layers, 6 classes of the synthetic data), randomly initialised
(``use_pretrained_backbone=False``) with its class and mask heads sharpened as in
``tests/test_pipeline.py`` (so that panoptic and instance calls return segments), saved with
``save_pretrained`` and a processor (shortest edge 256, longest 640) into a folder, and loaded from
that folder by ``pipeline("image-segmentation", model=folder)`` and by the CLI, as a user would.
Images: synthetic scenes (``maskformer_hf.data.synthetic.generate_example`` at 256 px, resized) of
random sizes, height and width each drawn in [256, 640] (seeded), written once as JPEG files. The
last ``N / 10`` of the ``N`` images replay the ``N / 10`` that follow the warm-up (:func:`replayed`):
an image's memory depends on its size and content, so the two windows whose peaks are compared
hold the same images, and any difference between them is memory the run kept.

1. **Pipeline**: one call per image, in one process, the subtask cycling panoptic, semantic,
   instance (each subtask sees every third image); the results are dropped as a caller would.
2. **CLI**: ``python -m maskformer_hf.cli segment IMAGES --model FOLDER --out OUT`` (the entry point
   of ``maskformer-hf``; panoptic, its default batch size (1 on the CPU), progress bar on) in a child
   process, its memory read from ``/proc/PID/status`` every 0.2 s and matched to progress by
   counting the ``*_overlay.png`` files written so far.
3. **Evaluation**: ``evaluate_segmentation`` (mIoU and PQ accumulators) of a tiny model
   (``tests/conftest.py:tiny_config``, 96 px inputs) on a synthetic panoptic split written to disk
   in the COCO layout and read back lazily with ``load_coco_panoptic``; RSS sampled each time the
   evaluation asks the dataset for image ``k * every`` (a multiple of the batch size, so ``k *
   every`` images have been evaluated by then), and once more when it returns.

Each sample holds the peak RSS since the previous one (``VmHWM``, reset after each read through
``/proc/PID/clear_refs``, so no short peak between samples is missed), the RSS at the sample
(``VmRSS``) and, in process (runs 1 and 3), the heap memory glibc counts as allocated
(``mallinfo2``: blocks in use plus mmapped ones), which tells a leak (in use grows) from heap
fragmentation (RSS grows, in use does not). Growth after warm-up = (peak at the end - peak after
warm-up) / peak after warm-up, where "after warm-up" is the largest over the ``window`` images
that follow the first ``warmup`` ones and "at the end" the largest over the last ``window``
images (``warmup = window = N / 10``; a padded batch's memory depends on its images); also the
largest after warm-up and the slope of a least-squares line through all samples after warm-up (MB
per 100 images). Target: peak RSS growth <= 5 % (issue 15). Nothing is done to the processes'
memory; ``MALLOC_*`` variables of the environment (which the CLI inherits) are recorded, so that
``MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/bench_reliability.py`` measures that remedy.
Memory figures do not depend on other load on the machine; times do.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

import maskformer_hf  # registers MaskFormer with transformers' Auto classes and the pipeline
from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.data import load_coco_panoptic
from maskformer_hf.data.synthetic import (CLASS_NAMES, STUFF_CLASSES, THING_IDS, generate_example,
                                          write_synthetic_dataset)
from maskformer_hf.evaluation import evaluate_segmentation
from maskformer_hf.optimize import _cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_config  # noqa: E402  (one tiny model for tests and benchmark)

TARGET_GROWTH_PCT = 5.0
KINDS = {"peak": "peak RSS", "rss": "RSS at the samples", "in_use": "heap in use"}
SUBTASKS = ("panoptic", "semantic", "instance")
LABELS = dict(enumerate(CLASS_NAMES))
STUFF_IDS = [len(THING_IDS) + i for i in range(len(STUFF_CLASSES))]
FULL = {"pipeline_images": 300, "cli_images": 300, "eval_images": 2000, "model": "resnet50",
        "shortest_edge": 256, "longest_edge": 640, "image_sides": (256, 640), "eval_size": 96}
QUICK = {"pipeline_images": 40, "cli_images": 40, "eval_images": 200, "model": "tiny",
         "shortest_edge": 64, "longest_edge": 160, "image_sides": (64, 160), "eval_size": 64}


class _MallInfo2(ctypes.Structure):  # glibc >= 2.33, <malloc.h>
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _MALLINFO2 = ctypes.CDLL("libc.so.6").mallinfo2
    _MALLINFO2.restype = _MallInfo2
except (OSError, AttributeError):
    _MALLINFO2 = None


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def sample(images: int, pid: int | str = "self") -> dict[str, float]:
    """``{"images", "peak", "rss"}`` of a process, in MiB: its peak RSS since the previous sample
    (``VmHWM``, then reset to the current RSS) and its RSS now; for this process also ``in_use``,
    the heap memory glibc counts as allocated (``mallinfo2``'s ``uordblks + hblkhd``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / 1024
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from the current RSS
    values = {"images": images, "peak": fields["VmHWM"], "rss": fields["VmRSS"]}
    if pid == "self" and _MALLINFO2 is not None:
        info = _MALLINFO2()
        values["in_use"] = (info.uordblks + info.hblkhd) / 2**20
    return values


def growth(samples: list[dict[str, float]], warmup: int, window: int, key: str = "peak") -> dict[str, float]:
    """Growth of ``samples[key]`` (samples ``{"images": done, key: MB}``) from the largest value over
    images ``[warmup, warmup + window]`` to the largest over the last `window` images: in % and
    MB; the largest value after warm-up (and its growth in %), and the slope of a least-squares
    line through the samples after warm-up, in MB per 100 images."""
    after = [s for s in samples if s["images"] >= warmup]
    if not after:
        raise ValueError(f"no sample at or after the warm-up ({warmup} images)")
    last = after[-1]["images"]
    first = max(warmup + window, after[0]["images"])  # a window holds at least one sample (batches jump)
    start = max(s[key] for s in after if s["images"] <= first)
    end = max(s[key] for s in after if s["images"] >= last - window)
    peak = max(s[key] for s in after)
    x = np.array([s["images"] for s in after], dtype=float)
    y = np.array([s[key] for s in after], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) * 100 if len(after) > 1 and np.ptp(x) > 0 else 0.0
    return {"warmup_images": warmup, "window_images": window, "end_images": last, "after_warmup_mb": start,
            "end_mb": end, "growth_mb": end - start, "growth_pct": 100 * (end - start) / start, "max_mb": peak,
            "max_growth_pct": 100 * (peak - start) / start, "slope_mb_per_100_images": slope,
            "passes": 100 * (end - start) / start <= TARGET_GROWTH_PCT}


def figures(samples: list[dict[str, float]], warmup: int) -> dict[str, dict[str, float]]:
    """:func:`growth` of each of KINDS the samples hold (window = warm-up)."""
    return {key: growth(samples, warmup, warmup, key) for key in KINDS if all(key in s for s in samples)}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def build_checkpoint(folder: Path, model: str, shortest_edge: int, longest_edge: int) -> dict[str, Any]:
    """Save a randomly initialised model (``model``: a preset name, or ``tiny``) and its processor
    into `folder`; its heads sharpened so that calls return segments. Returns its sizes."""
    torch.manual_seed(0)
    labels = dict(id2label=LABELS, stuff_label_ids=STUFF_IDS, num_labels=len(LABELS))
    config = (tiny_config(**labels) if model == "tiny"
              else MaskFormerConfig.from_preset(model, use_pretrained_backbone=False, **labels))
    network = MaskFormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # confident classes and masks (as in tests/test_pipeline.py)
        network.class_predictor.weight.mul_(5.0)
        network.mask_embedder.layers[-1].weight.mul_(100.0)
        network.mask_embedder.layers[-1].bias.mul_(100.0)
    network.save_pretrained(folder)
    size = {"shortest_edge": shortest_edge, "longest_edge": longest_edge}
    MaskFormerImageProcessor(size=size).save_pretrained(folder)
    return {"model": model, "backbone": config.backbone,
            "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6, "num_queries": config.num_queries,
            "decoder_layers": config.decoder_layers, "num_labels": config.num_labels, **size}


def write_images(folder: Path, count: int, sides: tuple[int, int], seed: int = 0) -> list[Path]:
    """`count` synthetic scenes of random height and width in ``[sides[0], sides[1]]``, as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = np.random.default_rng((seed, index))
        height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        scene = generate_example(rng, size=min(256, sides[1]))[0]
        path = folder / f"scene_{index:04d}.jpg"
        Image.fromarray(scene).resize((width, height), Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def replayed(paths: list[Path], count: int, warmup: int) -> list[Path]:
    """`count` images: the first ``count - warmup`` of `paths`, then images ``[warmup, 2 warmup)``
    again, so that the window after the warm-up and the last window hold the same images."""
    if count < 3 * warmup:
        raise ValueError(f"count: expected at least 3 x warmup = {3 * warmup}, got {count}")
    return paths[:count - warmup] + paths[warmup:2 * warmup]


class CountingDataset:
    """A dataset that samples the process's RSS whenever image ``k * every`` is asked for."""

    def __init__(self, dataset: Any, every: int) -> None:
        self.dataset, self.every, self.asked, self.samples = dataset, every, 0, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if self.asked % self.every == 0:
            self.samples.append(sample(self.asked))
        self.asked += 1
        return self.dataset[index]


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def measure_pipeline(checkpoint: Path, paths: list[Path], warmup: int, every: int) -> dict[str, Any]:
    """One pipeline call per image (subtask cycling through SUBTASKS), RSS sampled every `every` images."""
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(checkpoint))
    samples, segments = [sample(0)], {task: [] for task in SUBTASKS}
    start = time.perf_counter()
    for index, path in enumerate(paths):
        task = SUBTASKS[index % len(SUBTASKS)]
        result = segmenter(str(path), subtask=task, threshold=0.5)
        segments[task].append(len(result))
        del result
        if (index + 1) % every == 0 or index + 1 == len(paths):
            samples.append(sample(index + 1))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "subtasks": list(SUBTASKS), "seconds": seconds,
            "segments_per_call": {t: float(np.mean(v)) for t, v in segments.items() if v},
            "samples": samples, **figures(samples, warmup)}


def measure_cli(checkpoint: Path, image_dir: Path, out_dir: Path, images: int, warmup: int,
                interval: float = 0.2) -> dict[str, Any]:
    """``maskformer-hf segment`` on `image_dir` in a child process, its memory sampled from outside
    every `interval` seconds and matched to the number of overlays written so far."""
    command = [sys.executable, "-m", "maskformer_hf.cli", "segment", str(image_dir), "--model", str(checkpoint),
               "--out", str(out_dir), "--task", "panoptic"]
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    start = time.perf_counter()
    with open(out_dir.parent / "cli_stdout.txt", "w") as stdout, open(out_dir.parent / "cli_stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        while process.poll() is None:
            done = sum(1 for name in os.listdir(out_dir) if name.endswith("_overlay.png"))
            try:
                samples.append({**sample(done, process.pid), "seconds": time.perf_counter() - start})
            except (OSError, KeyError):  # exited between poll() and the read
                break
            time.sleep(interval)
        process.wait()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}: "
                           f"{(out_dir.parent / 'cli_stderr.txt').read_text()[-2000:]}")
    written = sum(1 for name in os.listdir(out_dir) if name.endswith("_overlay.png"))
    if written != images:
        raise RuntimeError(f"the CLI wrote {written} overlays for {images} images")
    return {"images": images, "written": written, "command": " ".join(command[1:]), "seconds": seconds,
            "samples_taken": len(samples), "samples": _thin(samples), **figures(samples, warmup)}


def _thin(samples: list[dict], keep: int = 400) -> list[dict]:
    """At most `keep` samples, evenly spaced (the JSON stays readable), always the last one."""
    if len(samples) <= keep:
        return samples
    step = len(samples) / keep
    return [samples[int(i * step)] for i in range(keep)] + [samples[-1]]


def measure_evaluation(root: Path, images: int, size: int, warmup: int, every: int) -> dict[str, Any]:
    """``evaluate_segmentation`` of a tiny model on an `images`-image synthetic panoptic split
    written to `root` (COCO layout), RSS sampled every `every` images."""
    start = time.perf_counter()
    coco = write_synthetic_dataset(root, num_train=0, num_val=images, size=size, layouts=("coco",))["coco"]
    generation = time.perf_counter() - start
    dataset = load_coco_panoptic(coco, split="validation")
    metadata = maskformer_hf.data.get_metadata(dataset)
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=len(LABELS), id2label=LABELS,
                                                           stuff_label_ids=STUFF_IDS)).eval()
    processor = MaskFormerImageProcessor(size={"shortest_edge": size, "longest_edge": 4 * size})
    counted = CountingDataset(dataset, every)
    start = time.perf_counter()
    metrics = evaluate_segmentation(model, processor, counted, metadata, batch_size=4, progress=True)
    seconds = time.perf_counter() - start
    samples = counted.samples + [sample(len(dataset))]
    return {"images": len(dataset), "image_size": size, "batch_size": 4, "generation_seconds": generation,
            "seconds": seconds, "metrics": {k: metrics[k] for k in ("mean_iou", "pq") if k in metrics},
            "model_parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "samples": samples, **figures(samples, warmup)}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    machine, model = report["machine"], report["model"]
    lines = ["# Memory under load (`benchmarks/bench_reliability.py`)", "",
             f"{machine['cpu']}, {machine['threads']} threads, {machine['memory_gb']:.0f} GB; torch {report['torch']}, "
             f"transformers {report['transformers']}; {'quick run (smoke test)' if report['quick'] else 'full run'}, "
             f"{report['seconds'] / 60:.1f} min.", "",
             f"Pipeline and CLI model: `{model['model']}` preset (backbone {model['backbone']}, "
             f"{model['parameters_m']:.1f} M parameters, {model['num_queries']} queries, random weights), inputs at "
             f"shortest edge {model['shortest_edge']} (longest {model['longest_edge']}); images of random sizes, "
             f"sides in {report['settings']['image_sides']} px.", "",
             "| run | images | RSS after warm-up | RSS at the end | growth | largest after warm-up | slope | "
             f"≤ {TARGET_GROWTH_PCT:.0f} % |", "|---|---|---|---|---|---|---|---|"]
    for name, result in report["runs"].items():
        for key in KINDS:
            if key not in result:
                continue
            g = result[key]
            w, n, end = g["warmup_images"], g["window_images"], g["end_images"]
            lines.append(f"| {name}, {KINDS[key]} | {result['images']} | {g['after_warmup_mb']:.0f} MB (images "
                         f"{w}-{w + n}) | {g['end_mb']:.0f} MB ({end - n}-{end}) | {g['growth_pct']:+.1f} % "
                         f"({g['growth_mb']:+.0f} MB) | {g['max_mb']:.0f} MB ({g['max_growth_pct']:+.1f} %) | "
                         f"{g['slope_mb_per_100_images']:+.2f} MB / 100 images | "
                         f"{('yes' if g['passes'] else '**no**') if key == 'peak' else '–'} |")
    lines.append("")
    runs = report["runs"]
    if "pipeline" in runs:
        p = runs["pipeline"]
        lines.append(f"Pipeline: {p['images']} calls in {p['seconds']:.0f} s, subtasks cycling "
                     f"{', '.join(p['subtasks'])}; segments per call "
                     + ", ".join(f"{t} {n:.1f}" for t, n in p["segments_per_call"].items()) + ".")
    if "cli" in runs:
        c = runs["cli"]
        lines.append(f"CLI: `{c['command']}`, {c['written']} images in {c['seconds']:.0f} s (model loading "
                     f"included), {c['samples_taken']} RSS samples from outside.")
    if "evaluation" in runs:
        e = runs["evaluation"]
        lines.append(f"Evaluation: {e['images']} synthetic {e['image_size']} px images (COCO panoptic layout, "
                     f"written in {e['generation_seconds']:.0f} s, read lazily), tiny model "
                     f"({e['model_parameters_m']:.1f} M parameters), batch {e['batch_size']}, {e['seconds']:.0f} s.")
    lines += ["", "Peak RSS: the resident set's high-water mark between samples (VmHWM, reset at each sample; "
              "the CLI's read from outside every 0.2 s); RSS at the samples: VmRSS. After warm-up: the largest "
              "over the N/10 images after the first N/10; at the end: the largest over the last N/10. Heap in use: "
              "what glibc counts as allocated (`mallinfo2`), flat when nothing leaks; RSS above it is freed memory "
              "the allocator keeps."]
    lines.append(f"glibc malloc settings from the environment: {report['malloc_env'] or 'none (the defaults)'}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 / 40 / 200 images, tiny models (a smoke test)")
    parser.add_argument("--pipeline-images", type=int, help="default 300 (quick: 40)")
    parser.add_argument("--cli-images", type=int, help="default 300 (quick: 40)")
    parser.add_argument("--eval-images", type=int, help="default 2000 (quick: 200)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "cli", "evaluation"])
    parser.add_argument("--work-dir", type=Path, default=None, help="where images and outputs go (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/reliability.json"))
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    for key in ("pipeline_images", "cli_images", "eval_images"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        model = build_checkpoint(work / "model", settings["model"], settings["shortest_edge"], settings["longest_edge"])
        count = max(settings["pipeline_images"], settings["cli_images"])  # (written, some replayed)
        start = time.perf_counter()
        paths = write_images(work / "images", count, settings["image_sides"])
        print(f"model: {model}; {count} images written in {time.perf_counter() - start:.0f} s", flush=True)
        runs: dict[str, Any] = {}
        if "pipeline" not in args.skip:
            n = settings["pipeline_images"]
            runs["pipeline"] = measure_pipeline(work / "model", replayed(paths, n, max(n // 10, 1)),
                                                warmup=max(n // 10, 1), every=max(n // 30, 1))
            print(f"pipeline: {_summary(runs['pipeline'])}", flush=True)
        if "cli" not in args.skip:
            n = settings["cli_images"]
            cli_dir = work / "cli_images"
            cli_dir.mkdir()
            for position, path in enumerate(replayed(paths, n, max(n // 10, 1))):  # named in the CLI's order;
                shutil.copyfile(path, cli_dir / f"{position:04d}_{path.name}")  # copies: the CLI reads a file once
            runs["cli"] = measure_cli(work / "model", cli_dir, work / "cli_out", n, warmup=max(n // 10, 1))
            print(f"cli: {_summary(runs['cli'])}", flush=True)
        if "evaluation" not in args.skip:
            n = settings["eval_images"]
            runs["evaluation"] = measure_evaluation(work / "eval_data", n, settings["eval_size"], warmup=n // 10,
                                                    every=4 * max(n // 80, 1))
            print(f"evaluation: {_summary(runs['evaluation'])}", flush=True)
    report = {"quick": args.quick, "target_growth_pct": TARGET_GROWTH_PCT, "settings": settings, "model": model,
              "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                          "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
                          "platform": platform.platform(), "python": platform.python_version()},
              "torch": torch.__version__, "transformers": transformers.__version__,
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "seconds": time.perf_counter() - begin, "runs": runs,
              "passes": all(r["peak"]["passes"] for r in runs.values())}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    args.output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")


def _summary(result: dict[str, Any]) -> str:
    parts = []
    for key in KINDS:
        if key in result:
            g = result[key]
            parts.append(f"{key} {g['after_warmup_mb']:.0f} -> {g['end_mb']:.0f} MB ({g['growth_pct']:+.1f} %, "
                         f"max {g['max_mb']:.0f}, {g['slope_mb_per_100_images']:+.2f} MB/100 images)")
    return f"{result['images']} images, {result['seconds']:.0f} s; " + "; ".join(parts)


if __name__ == "__main__":
    main()
