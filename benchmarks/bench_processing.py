#!/usr/bin/env python
"""Pre- and post-processing speed of our MaskFormerImageProcessor vs transformers' (default,
torchvision backend) over a matrix of inputs, in one run on CPU, at 1 and 2 threads.

    python benchmarks/bench_processing.py                 # the whole matrix (about 15 minutes here)
    python benchmarks/bench_processing.py --repeats 3 --threads 2 --cells noisy smooth
    python benchmarks/bench_processing.py --list          # the cells
    python benchmarks/bench_processing.py --quick         # every cell at 1/8 of its size, once (a smoke test)

Post-processing cells (semantic, panoptic and instance rules on each; 100 queries):

* synthetic outputs shaped like a trained MaskFormer's (``tests/conftest.py:fake_segmentation_outputs``):
  confident queries own the regions of a random partition (Voronoi, soft edges) or of overlapping
  discs, the others predict "no object"; smooth logits or i.i.d. noise (std 0.5) on every mask
  logit; 5, 25 or 80 confident queries; 20 or 150 classes; fp32, bf16 or fp16 logits; targets from
  256x256 to 1024x2048 and a padded batch of mixed sizes;
* real outputs: the ``make demo`` checkpoint on its own validation images (skipped with a note when
  ``demo_output/model`` is missing), and a randomly initialised transformers MaskFormer (Swin-T)
  converted to ours on natural-looking synthetic scenes. A random model's classes are never
  confident: at the default threshold its panoptic and instance outputs are empty (a measure of
  overhead), so a second cell runs them with ``threshold=0``, where every query that does not
  predict "no object" competes with white-noise-like masks. That one is a stress cell beyond what
  users feed in: it is printed, marked, and left out of the medians and worst cells.

Pre-processing cells: 8 RGB images of 480x640 at ``shortest_edge`` 512 or 800 (longest edge 1333),
with and without label maps; maps of 5, 15 or 100 regions; ADE-style semantic maps with
``do_reduce_labels`` on or off, COCO-panoptic RGB-id maps with an ``instance_id_to_semantic_id``
mapping and void id 0 as ``ignore_index`` (transformers gets the decoded id map, which it needs; ours decodes the RGB PNG array
itself); and a batch of mixed sizes.

Per cell and thread count the two implementations run interleaved (ours, theirs, ...), one warm-up
each, and the table reports medians (of more calls for fast cells: about 0.5 s per side). Peak memory: the resident set's growth during one call (reset
through ``/proc/self/clear_refs`` after ``malloc_trim``). Semantic agreement is printed per cell. Run
it on an idle machine: anything else on the cores shifts the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import MaskFormerImageProcessor as ReferenceProcessor

from maskformer_hf import MaskFormerImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import fake_segmentation_outputs  # noqa: E402  (one definition for tests and benchmark)
from memory import peak_extra_memory  # noqa: E402  (this folder is on sys.path)

TARGETS = {"preprocess": 1.2, "semantic": 3.0, "panoptic": 4.0, "instance": 4.0}  # medians; every cell >= 1
TASKS = ("semantic", "panoptic", "instance")

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def voronoi_ids(height: int, width: int, regions: int, rng: np.random.Generator) -> np.ndarray:
    """`(H, W)` index of the nearest of `regions` random centres."""
    yy, xx = np.mgrid[:height, :width]
    centres = rng.random((regions, 2)) * [height, width]
    dist = (yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2
    return np.argmin(dist, axis=0)


def pre_inputs(cell: dict, seed: int = 0, scale: int = 1) -> tuple[list, Any, Any, dict]:
    """(images, our maps, transformers' maps, settings) for a pre-processing cell (sizes divided by `scale`)."""
    rng = np.random.default_rng(seed)
    sizes = [(h // scale, w // scale) for h, w in cell.get("sizes", [(480, 640)] * 8)][: 8 // scale or 1]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    size = {"shortest_edge": cell["shortest_edge"] // scale, "longest_edge": 1333 // scale}
    if not cell["maps"]:
        return images, None, None, {"size": size}
    ours, theirs, mappings = [], [], []
    for h, w in sizes:
        cells = voronoi_ids(h, w, cell["regions"], rng)
        if cell["maps"] == "panoptic":  # COCO panoptic: segment ids R + 256 G + 256^2 B, 0 = void
            segment_ids = rng.choice(np.arange(1, 1 << 20), cell["regions"], replace=False)
            ids = segment_ids[cells]
            ids[rng.random((h, w)) < 0.01] = 0
            ours.append(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8))
            theirs.append(ids.astype(np.int64))
            mappings.append({int(s): int(c) for s, c in zip(segment_ids, rng.integers(1, 134, cell["regions"]))})
        else:  # ADE-style semantic map: classes 0..150 (0 = "other")
            ids = rng.integers(0, 151, cell["regions"])[cells].astype(np.uint8)
            ours.append(ids)
            theirs.append(ids)
    settings = {"size": size, "ignore_index": 0 if mappings else 255, "do_reduce_labels": cell["reduce"]}
    if mappings:
        settings["instance_id_to_semantic_id"] = mappings
    return images, ours, theirs, settings


def real_outputs(source: str, scale: int = 1) -> tuple[Any, list[tuple[int, int]]] | None:
    """(outputs, target sizes) of a real model on images, or None when its checkpoint is missing."""
    from PIL import Image

    from maskformer_hf import MaskFormerForUniversalSegmentation
    from maskformer_hf.data.synthetic import generate_example

    if source == "demo":
        path = Path("demo_output/model")
        images_dir = Path("demo_output/data/coco/val2017")
        if not (path / "config.json").exists() or not images_dir.is_dir():
            return None
        model = MaskFormerForUniversalSegmentation.from_pretrained(path).eval()
        processor = MaskFormerImageProcessor.from_pretrained(path)
        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(images_dir.iterdir())[:8]]
    else:  # a transformers model, converted: its weights, our code (outputs equal transformers')
        from transformers import MaskFormerConfig as HFConfig
        from transformers import MaskFormerForInstanceSegmentation

        from maskformer_hf import convert_from_transformers

        torch.manual_seed(0)
        model = convert_from_transformers(MaskFormerForInstanceSegmentation(HFConfig()).eval()).eval()
        side = max(64, 384 // scale)
        processor = MaskFormerImageProcessor(size={"shortest_edge": side, "longest_edge": 1333})
        images = [generate_example(np.random.default_rng((3, i)), size=side)[0] for i in range(4 if scale == 1 else 1)]
    batch = processor(images)
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    outputs = SimpleNamespace(class_queries_logits=out.class_queries_logits,
                              masks_queries_logits=out.masks_queries_logits)
    return outputs, [tuple(np.asarray(image).shape[:2]) for image in images]


def synthetic_outputs(cell: dict, scale: int = 1) -> tuple[Any, list[tuple[int, int]]]:
    batch, target, mask = cell.get("batch", 8), cell.get("target", (480, 640)), cell.get("mask", (128, 128))
    if scale > 1:
        batch = 4 if cell.get("mixed") else min(batch, 2)
        target, mask = (target[0] // scale, target[1] // scale), (max(8, mask[0] // scale), max(8, mask[1] // scale))
    class_logits, mask_logits = fake_segmentation_outputs(batch, 100, cell.get("classes", 150), mask,
                                                          cell.get("confident", 25), noise=cell.get("noise", 0.5),
                                                          layout=cell.get("layout", "partition"))
    dtype = cell.get("dtype", torch.float32)
    outputs = SimpleNamespace(class_queries_logits=class_logits.to(dtype), masks_queries_logits=mask_logits.to(dtype))
    sizes = [target] * batch
    if cell.get("mixed"):  # a padded batch: images of different sizes, 4x the mask size, bottom/right padded
        valid = [(h * mask[0] // 128, w * mask[1] // 160) for h, w in ((128, 160), (96, 160), (128, 96), (72, 128))]
        valid = valid * (batch // 4)
        outputs.pixel_mask = torch.zeros(batch, 4 * mask[0], 4 * mask[1], dtype=torch.int64)
        for i, (h, w) in enumerate(valid):
            outputs.pixel_mask[i, : 4 * h, : 4 * w] = 1
        sizes = [(int(h * 3.75), int(w * 3.75)) for h, w in valid]
    return outputs, sizes


POST_CELLS: dict[str, dict] = {
    "smooth": {"noise": 0.0},
    "noisy": {},  # the base cell: 8 x 128^2 masks -> 480x640, 25 confident, 150 classes, noise 0.5, fp32
    "noisy overlapping": {"layout": "overlap"},
    "smooth overlapping": {"layout": "overlap", "noise": 0.0},
    "5 confident": {"confident": 5},
    "80 confident": {"confident": 80},
    "80 confident overlapping": {"confident": 80, "layout": "overlap"},
    "20 classes": {"classes": 20},
    "bf16 logits": {"dtype": torch.bfloat16},
    "fp16 logits": {"dtype": torch.float16},
    "256x256": {"mask": (64, 64), "target": (256, 256)},
    "1024x2048": {"mask": (256, 512), "target": (1024, 2048), "batch": 2},
    "1024x2048 overlapping": {"mask": (256, 512), "target": (1024, 2048), "batch": 2, "layout": "overlap"},
    "mixed sizes, padded": {"mask": (128, 160), "mixed": True},
    "demo checkpoint, val images": {"source": "demo"},
    "transformers Swin-T (random), scenes": {"source": "transformers"},
    "transformers Swin-T (random), threshold 0": {"source": "transformers", "threshold": 0.0, "stress": True},
}
PRE_CELLS: dict[str, dict] = {
    "512, semantic maps (15 regions)": {"shortest_edge": 512, "maps": "semantic", "regions": 15, "reduce": True},
    "800, semantic maps (15 regions)": {"shortest_edge": 800, "maps": "semantic", "regions": 15, "reduce": True},
    "512, images only": {"shortest_edge": 512, "maps": None},
    "800, images only": {"shortest_edge": 800, "maps": None},
    "512, 5 regions": {"shortest_edge": 512, "maps": "semantic", "regions": 5, "reduce": True},
    "512, 100 regions": {"shortest_edge": 512, "maps": "semantic", "regions": 100, "reduce": True},
    "512, no label reduction": {"shortest_edge": 512, "maps": "semantic", "regions": 15, "reduce": False},
    "800, panoptic RGB-id maps (30 segments)": {"shortest_edge": 800, "maps": "panoptic", "regions": 30,
                                                "reduce": False},
    "512, panoptic RGB-id maps (100 segments)": {"shortest_edge": 512, "maps": "panoptic", "regions": 100,
                                                 "reduce": False},
    "512, mixed sizes + maps": {"shortest_edge": 512, "maps": "semantic", "regions": 15, "reduce": True,
                                "sizes": [(480, 640), (375, 500), (640, 427), (512, 512)] * 2},
}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def interleaved(ours: Callable, theirs: Callable, repeats: int, min_seconds: float = 0.5) -> dict[str, float]:
    """Medians of interleaved calls: `repeats` each, more for fast calls (until about `min_seconds`
    per side, at most 60), whose medians are otherwise at the mercy of a few noisy calls."""
    start = time.perf_counter()
    ours()
    theirs()
    pair = time.perf_counter() - start
    repeats = max(repeats, min(60, int(2 * min_seconds / max(pair, 1e-6))))
    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    for _ in range(repeats):
        for key, fn in (("ours", ours), ("transformers", theirs)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def time_row(row: dict, ours: Callable, theirs: Callable, threads: list[int], repeats: int,
             min_seconds: float = 0.5) -> dict:
    """Fill `row` with the medians and speed-ups at each thread count (and a printable ``line``)."""
    for t in threads:
        torch.set_num_threads(t)
        median = interleaved(ours, theirs, repeats, min_seconds)
        row["median_s"][str(t)] = median
        row["speedup"][str(t)] = median["transformers"] / median["ours"]
    row["line"] = " ".join(f"{t}t: {row['median_s'][str(t)]['transformers'] * 1e3:7.1f} / "
                           f"{row['median_s'][str(t)]['ours'] * 1e3:7.1f} ms = {row['speedup'][str(t)]:5.2f}x"
                           for t in threads)
    return row


def semantic_agreement(ours: list, theirs: list) -> float:
    return sum(int((a == b).sum()) for a, b in zip(ours, theirs)) / sum(a.numel() for a in ours)


def post_runs(outputs: Any, sizes: list, threshold: float | None) -> dict[str, tuple[Callable, Callable]]:
    ours, theirs = MaskFormerImageProcessor(), ReferenceProcessor()
    kw = {} if threshold is None else {"threshold": threshold}
    return {
        "semantic": (lambda: ours.post_process_semantic_segmentation(outputs, target_sizes=sizes),
                     lambda: theirs.post_process_semantic_segmentation(outputs, target_sizes=sizes)),
        "panoptic": (lambda: ours.post_process_panoptic_segmentation(outputs, target_sizes=sizes, **kw),
                     lambda: theirs.post_process_panoptic_segmentation(outputs, target_sizes=sizes,
                                                                       label_ids_to_fuse=set(), **kw)),
        "instance": (lambda: ours.post_process_instance_segmentation(outputs, target_sizes=sizes, **kw),
                     lambda: theirs.post_process_instance_segmentation(outputs, target_sizes=sizes, **kw)),
    }


def pre_runs(cell: dict, scale: int = 1) -> tuple[Callable, Callable]:
    images, ours_maps, theirs_maps, settings = pre_inputs(cell, scale=scale)
    mapping = settings.pop("instance_id_to_semantic_id", None)
    ours, theirs = MaskFormerImageProcessor(**settings), ReferenceProcessor(**settings)
    return (lambda: ours(images, segmentation_maps=ours_maps, instance_id_to_semantic_id=mapping),
            lambda: theirs(images, segmentation_maps=theirs_maps, instance_id_to_semantic_id=mapping,
                           return_tensors="pt"))


def summary(rows: list[dict], threads: list[int]) -> list[str]:
    """Median and worst speed-up per task and thread count over the matrix (stress cells left out)."""
    lines = []
    for task in ("preprocess", *TASKS):
        for t in threads:
            ratios = [r["speedup"][str(t)] for r in rows
                      if r["task"] == task and str(t) in r["speedup"] and not r.get("stress")]
            if ratios:
                worst = min(ratios)
                lines.append(f"{task:<10} {t} thread(s): median {statistics.median(ratios):.2f}x (target "
                             f">= {TARGETS[task]}x), worst {worst:.2f}x (target >= 1x) over {len(ratios)} cells")
    return lines


def markdown(rows: list[dict], threads: list[int]) -> str:
    """The matrix as a Markdown table (per call: transformers / ours, speed-up; peak memory)."""
    head = "| input | task | " + " | ".join(f"{t} thread{'s' * (t > 1)}: transformers / ours, speed-up" for t in threads)
    head += " | peak MB, transformers / ours | agreement |"
    lines = [head, "|" + "---|" * (4 + len(threads))]
    for r in rows:
        cells = [f"{r['median_s'][str(t)]['transformers'] * 1e3:.1f} / {r['median_s'][str(t)]['ours'] * 1e3:.1f} ms, "
                 f"**{r['speedup'][str(t)]:.2f}×**" for t in threads]
        peak = f"{r['peak_mb']['transformers']:.0f} / {r['peak_mb']['ours']:.0f}" if "peak_mb" in r else "–"
        if "agreement" in r:
            note = f"{r['agreement']:.4%} pixels equal"
        elif "segments" in r:
            note = f"segments {r['segments'][1]} / {r['segments'][0]}"
        else:
            note = f"pixel_values ≤ {r['pixel_values_max_diff']:.1e}" + (
                f", labels equal: {r['labels_equal']}" if "labels_equal" in r else "")
        name = f"{r['cell']} (stress, not in the summary)" if r.get("stress") else r["cell"]
        lines.append(f"| {name} | {r['task']} | " + " | ".join(cells) + f" | {peak} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (post-processing)")
    parser.add_argument("--pre-repeats", type=int, default=15, help="timed calls per pre-processing cell (fast, noisy)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cells", nargs="*", default=None, help="substrings of cell names to run (default all)")
    parser.add_argument("--no-pre", action="store_true", help="skip the pre-processing cells")
    parser.add_argument("--no-post", action="store_true", help="skip the post-processing cells")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument("--quick", action="store_true", help="every cell at 1/8 of its size, timed once (smoke test)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/processing.json"))
    args = parser.parse_args()
    if args.list:
        print("post-processing:", *POST_CELLS, sep="\n  ")
        print("pre-processing:", *PRE_CELLS, sep="\n  ")
        return

    scale = 8 if args.quick else 1
    min_seconds = 0.5  # per side and cell: fast calls are repeated until then (see interleaved)
    if args.quick:  # timed once: a smoke test of every cell, not a measurement
        args.repeats = args.pre_repeats = 1
        min_seconds = 0.0

    def chosen(name: str) -> bool:
        return args.cells is None or any(c in name for c in args.cells)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"medians of {args.repeats} (post) and {args.pre_repeats} (pre) calls")
    rows: list[dict] = []
    with torch.inference_mode():
        for name, cell in (POST_CELLS.items() if not args.no_post else ()):
            if not chosen(name):
                continue
            made = real_outputs(cell["source"], scale) if "source" in cell else synthetic_outputs(cell, scale)
            if made is None:
                print(f"{name}: skipped (no demo checkpoint; `make demo` trains one)")
                continue
            outputs, sizes = made
            runs = post_runs(outputs, sizes, cell.get("threshold"))
            for task, (ours, theirs) in runs.items():
                row = {"cell": name, "task": task, "images": len(sizes), "speedup": {}, "median_s": {},
                       "stress": bool(cell.get("stress"))}
                first_ours, first_theirs = ours(), theirs()  # also the warm-up
                if task == "semantic":
                    row["agreement"] = semantic_agreement(first_ours, first_theirs)
                else:
                    row["segments"] = [sum(len(r["segments_info"]) for r in first_ours),
                                       sum(len(r["segments_info"]) for r in first_theirs)]
                row["peak_mb"] = {"ours": (peak_extra_memory(ours) or 0) / 2**20,
                                  "transformers": (peak_extra_memory(theirs) or 0) / 2**20}
                rows.append(time_row(row, ours, theirs, args.threads, args.repeats, min_seconds))
                print(f"{name:<40} {task:<9} {row['line']}  peak MB {row['peak_mb']['transformers']:.0f} / "
                      f"{row['peak_mb']['ours']:.0f}", flush=True)
        for name, cell in (PRE_CELLS.items() if not args.no_pre else ()):
            if not chosen(name):
                continue
            ours, theirs = pre_runs(cell, scale)
            a, b = ours(), theirs()
            row = {"cell": name, "task": "preprocess", "images": len(a["pixel_values"]), "speedup": {}, "median_s": {},
                   "pixel_values_max_diff": float((a["pixel_values"] - b["pixel_values"]).abs().max())}
            if "mask_labels" in a:
                row["labels_equal"] = all(torch.equal(x, y) for x, y in zip(a["class_labels"], b["class_labels"]))
            rows.append(time_row(row, ours, theirs, args.threads, args.pre_repeats, min_seconds))
            print(f"{name:<40} {'pre':<9} {row['line']}", flush=True)
    print("\n(times: transformers / ours, per call)")
    lines = summary(rows, args.threads)
    print("\n".join(lines))
    table = markdown(rows, args.threads)
    print("\n" + table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text(table + "\n\n" + "\n".join(lines) + "\n")
    args.output.write_text(json.dumps({"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                       "torch": torch.__version__, "rows": rows, "summary": lines}, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
