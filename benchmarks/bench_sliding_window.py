#!/usr/bin/env python
"""Peak memory of sliding-window inference against whole-image inference, over image sizes and tasks.

    python benchmarks/bench_sliding_window.py                                    # 1024², 2048², 4096²
    python benchmarks/bench_sliding_window.py --sizes 256 --crop 128 --stride 96 # quick

Model: a MaskFormer with timm's ResNet-18 (random weights), ``--classes`` classes and ``--queries``
queries. Each cell (image side, task, mode) runs in a fresh process on a random image and reports
the growth of the resident set during the call (``VmHWM`` reset first, benchmarks/memory.py) and its
wall time: ``whole`` is one forward pass plus the processor's post-processing at full resolution,
``slide`` is :func:`maskformer_hf.sliding_window.sliding_window_inference` with ``--crop`` /
``--stride``. Printed: every cell, and per mode the worst (largest) peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from memory import peak_extra_memory
from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.sliding_window import sliding_window_inference

side, task, mode, crop, stride, classes, queries = sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:9])
side = int(side)
torch.manual_seed(0)
config = MaskFormerConfig(backbone="resnet18", num_labels=classes, num_queries=queries, hidden_size=128,
                          decoder_layers=2, fpn_feature_size=128, mask_feature_size=128)
model = MaskFormerForUniversalSegmentation(config).eval()
processor = MaskFormerImageProcessor(num_labels=classes)
pixels = torch.randn(1, 3, side, side)
kept = {}

def run():
    with torch.no_grad():
        if mode == "slide":
            kept["out"] = sliding_window_inference(model, pixels, crop=crop, stride=stride, task=task, batch_size=1)
        else:
            outputs = model(pixel_values=pixels)
            post = getattr(processor, f"post_process_{task}_segmentation")
            kept["out"] = post(outputs, target_sizes=[(side, side)])

start = time.perf_counter()
peak = peak_extra_memory(run)
print(json.dumps({"peak_mib": None if peak is None else peak / 2**20, "seconds": time.perf_counter() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square image sides")
    parser.add_argument("--tasks", nargs="+", default=["semantic", "panoptic"])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=384)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/sliding_window.json"))
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    cells = []
    print(f"ResNet-18 MaskFormer, {args.classes} classes, {args.queries} queries; slide: crop {args.crop}, "
          f"stride {args.stride}")
    for side in args.sizes:
        for task in args.tasks:
            for mode in ("whole", "slide"):
                out = subprocess.run([sys.executable, "-c", CHILD, here, str(side), task, mode, str(args.crop),
                                      str(args.stride), str(args.classes), str(args.queries)],
                                     check=True, capture_output=True, text=True).stdout
                cell = {"side": side, "task": task, "mode": mode, **json.loads(out.strip().splitlines()[-1])}
                cells.append(cell)
                peak = "n/a" if cell["peak_mib"] is None else f"{cell['peak_mib']:8.0f} MiB"
                print(f"{side:5d}²  {task:9s} {mode:6s} peak RSS growth {peak}   {cell['seconds']:6.1f} s")
    for mode in ("whole", "slide"):
        measured = [c for c in cells if c["mode"] == mode and c["peak_mib"] is not None]
        if measured:
            worst = max(measured, key=lambda c: c["peak_mib"])
            print(f"worst {mode}: {worst['peak_mib']:.0f} MiB ({worst['side']}², {worst['task']})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": vars(args) | {"output": str(args.output)}, "cells": cells},
                                      indent=1))


if __name__ == "__main__":
    main()
