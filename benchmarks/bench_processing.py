#!/usr/bin/env python
"""Pre- and post-processing speed of our MaskFormerImageProcessor vs transformers' (default,
torchvision backend), in one run on CPU.

    python benchmarks/bench_processing.py              # 8 images 480x640; 100 queries, 150 classes, 128x128 masks
    python benchmarks/bench_processing.py --repeats 3  # quicker

Pre-processing: 8 RGB images with ADE-style label maps (15 regions each, ``do_reduce_labels``,
``ignore_index=255``), both processors at transformers' defaults (shortest edge 800, longest 1333,
size divisor 32). Post-processing: 8 model outputs shaped like a trained MaskFormer's (~25 confident
queries owning the regions of a random partition, soft edges; the other queries predict "no
object"), resized to 480x640 by the semantic, panoptic and instance rules. Timings are interleaved
(ours, theirs, ours, ...) and reported as medians; agreement of the results is printed alongside.
Anything else running on the cores shifts both sides: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import MaskFormerImageProcessor as ReferenceProcessor

from maskformer_hf import MaskFormerImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import fake_segmentation_outputs  # noqa: E402  (one definition for tests and benchmark)

TARGETS = {"preprocess": 1.0, "semantic": 3.0, "panoptic": 4.0, "instance": 4.0}


def label_maps(count: int, height: int, width: int, regions: int = 15, seed: int = 0) -> list[np.ndarray]:
    """ADE-style uint8 maps: `regions` Voronoi cells with classes in 1..150 (0 = "other")."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    maps = []
    for _ in range(count):
        centres = rng.random((regions, 2)) * [height, width]
        nearest = np.argmin((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2, axis=0)
        maps.append(rng.integers(0, 151, regions)[nearest].astype(np.uint8))
    return maps


def agreement(task: str, ours, theirs) -> str:
    if task == "preprocess":
        diff = (ours["pixel_values"] - theirs["pixel_values"]).abs().max().item()
        same = all(torch.equal(a, b) for a, b in zip(ours["class_labels"], theirs["class_labels"]))
        return f"pixel_values max|diff| {diff:.1e}, class_labels equal: {same}"
    if task == "semantic":
        equal = sum(int((a == b).sum()) for a, b in zip(ours, theirs)) / sum(a.numel() for a in ours)
        return f"{equal:.6%} of pixels equal"
    counts = [(len(a["segments_info"]), len(b["segments_info"])) for a, b in zip(ours, theirs)]
    return "segments per image (ours, theirs): " + " ".join(f"{a}/{b}" for a, b in counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--mask-size", type=int, default=128)
    parser.add_argument("--confident", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/processing.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(args.batch)]
    maps = label_maps(args.batch, args.height, args.width)
    settings = {"ignore_index": 255, "do_reduce_labels": True}
    ours_processor, theirs_processor = MaskFormerImageProcessor(**settings), ReferenceProcessor(**settings)
    class_logits, mask_logits = fake_segmentation_outputs(args.batch, args.queries, args.classes,
                                                          (args.mask_size, args.mask_size), args.confident)
    outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    sizes = [(args.height, args.width)] * args.batch
    runs = {
        "preprocess": (lambda: ours_processor(images, segmentation_maps=maps),
                       lambda: theirs_processor(images, segmentation_maps=maps, return_tensors="pt")),
        "semantic": (lambda: ours_processor.post_process_semantic_segmentation(outputs, target_sizes=sizes),
                     lambda: theirs_processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)),
        "panoptic": (lambda: ours_processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes),
                     lambda: theirs_processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes,
                                                                                 label_ids_to_fuse=set())),
        "instance": (lambda: ours_processor.post_process_instance_segmentation(outputs, target_sizes=sizes),
                     lambda: theirs_processor.post_process_instance_segmentation(outputs, target_sizes=sizes)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"{args.height}x{args.width}; {args.queries} queries, {args.classes} classes, "
          f"{args.mask_size}x{args.mask_size} masks, {args.confident} confident queries")
    results = {}
    with torch.inference_mode():
        for task, (ours, theirs) in runs.items():
            note = agreement(task, ours(), theirs())  # also the warm-up
            times: dict[str, list[float]] = {"ours": [], "transformers": []}
            for _ in range(args.repeats):
                for key, fn in (("ours", ours), ("transformers", theirs)):
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            median = {k: statistics.median(v) for k, v in times.items()}
            results[task] = {
                "images_per_s": {k: args.batch / v for k, v in median.items()},
                "median_s": median,
                "speedup": median["transformers"] / median["ours"],
                "target": TARGETS[task],
                "agreement": note,
            }
    print(f"\n{'task':<11} {'transformers':>14} {'ours':>14} {'speed-up':>9} {'target':>7}")
    for task, r in results.items():
        rate = r["images_per_s"]
        print(f"{task:<11} {rate['transformers']:>9.1f} img/s {rate['ours']:>9.1f} img/s "
              f"{r['speedup']:>8.2f}x {r['target']:>6.1f}x")
    print()
    for task, r in results.items():
        print(f"{task}: {r['agreement']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": vars(args) | {"output": str(args.output)},
                                       "threads": torch.get_num_threads(), "results": results}, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
