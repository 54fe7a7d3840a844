#!/usr/bin/env python
"""Loading a large COCO instance JSON: ``load_coco_instances`` against pycocotools' ``COCO``.

    python benchmarks/bench_coco_instances.py                 # 100k images, 7 polygons each (about 515 MB of JSON)
    python benchmarks/bench_coco_instances.py --images 200    # quick

The JSON is generated (``--images`` images of 640×480, ``--objects`` 16-vertex polygons each, 80
categories; every image file a symlink to one small JPEG). Each loader runs in a process of its own
and reports its wall time and peak RSS growth during the load (``VmHWM`` reset first, benchmarks/memory.py); ours
also reads one example (its masks rasterised then). The figure to watch: the peak stays that of the
parsed JSON, where the masks would take ``images × objects × 640 × 480`` bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from memory import peak_extra_memory  # VmHWM, reset first: ru_maxrss would carry this script's own peak
which, annotation_file, images_dir = sys.argv[1:4]
if which == "ours":
    from maskformer_hf.data import load_coco_instances
else:
    import contextlib, io
    from pycocotools.coco import COCO
kept = {}
def load():
    start = time.perf_counter()
    if which == "ours":
        kept["data"] = load_coco_instances(annotation_file, images_dir)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            kept["data"] = COCO(annotation_file)
    kept["load_s"] = time.perf_counter() - start
peak = peak_extra_memory(load)
read = None
if which == "ours":
    start = time.perf_counter()
    kept["data"][len(kept["data"]) // 2]
    read = time.perf_counter() - start
print(json.dumps({"load_s": kept["load_s"], "example_s": read, "peak_mb": peak / 2**20 if peak else None}))
"""


def write_json(root: Path, images: int, objects: int, seed: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (640, 480)).save(root / "images" / "0.jpg")
    for i in range(1, images):
        os.symlink(root / "images" / "0.jpg", root / "images" / f"{i}.jpg")
    rng = random.Random(seed)
    annotations = []
    for i in range(images):
        for _ in range(objects):
            x, y, r = rng.uniform(40, 600), rng.uniform(40, 440), rng.uniform(5, 40)
            polygon = [c for t in range(16) for c in (x + r * math.cos(t * math.pi / 8), y + r * math.sin(t * math.pi / 8))]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": rng.randint(1, 80),
                                "iscrowd": 0, "area": math.pi * r * r, "segmentation": [polygon]})
    content = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(images)],
               "categories": [{"id": c, "name": f"class {c}"} for c in range(1, 81)], "annotations": annotations}
    path = root / "instances_train2017.json"
    path.write_text(json.dumps(content))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=7, help="polygons per image")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/coco_instances.json"))
    args = parser.parse_args()
    report = {"images": args.images, "objects": args.objects}
    with tempfile.TemporaryDirectory() as folder:
        path = write_json(Path(folder), args.images, args.objects)
        print(f"{args.images} images, {args.images * args.objects} polygons, {path.stat().st_size / 1e6:.0f} MB of JSON; "
              f"as uint8 masks: {args.images * args.objects * 640 * 480 / 1e9:.1f} GB")
        for which in ("ours", "pycocotools"):
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(path), str(Path(folder) / "images"),
                                  str(Path(__file__).resolve().parent)],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            report[which] = result
            line = f"{which:12s} load {result['load_s']:7.1f} s   peak RSS growth {result['peak_mb']:7.0f} MiB"
            if result["example_s"] is not None:
                line += f"   one example (rasterised) {result['example_s'] * 1000:.1f} ms"
            print(line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
