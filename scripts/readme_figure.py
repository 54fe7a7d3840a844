#!/usr/bin/env python
"""The README's figure: ``maskformer-hf segment`` overlays of a few images, side by side.

    python scripts/readme_figure.py --model demo_output/model --out docs/images/segment_example.png

Runs exactly what the command runs (``maskformer_hf.segment.segment_files``) on the images, then
puts the overlays it wrote next to each other (``maskformer_hf.visualize.side_by_side``), each under
its image's name, scaled up by an integer factor (nearest, so pixels stay sharp).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from PIL import Image

from maskformer_hf import visualize
from maskformer_hf.segment import find_images, load_segmenter, segment_files

logger = logging.getLogger("readme_figure")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo_output/model", help="checkpoint folder or Hub id")
    parser.add_argument("--images", nargs="+", default=["assets/examples"], help="image files, folders or globs")
    parser.add_argument("--task", default="panoptic", choices=["semantic", "instance", "panoptic"])
    parser.add_argument("--scale", type=int, default=2, help="integer upscaling of each overlay")
    parser.add_argument("--out", default="docs/images/segment_example.png", help="the PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths, problems = find_images(args.images)
    if not paths:
        raise SystemExit(f"no images: {'; '.join(problems)}")
    model, processor = load_segmenter(args.model, "cpu")
    with tempfile.TemporaryDirectory() as folder:
        run = segment_files(paths, model, processor, folder, task=args.task, progress=False, report=logger.info)
        overlays = [p for p in run.files if p.name.endswith("_overlay.png")]
        panels = []
        for path in overlays:
            with Image.open(path) as overlay:
                panels.append(overlay.resize((overlay.width * args.scale, overlay.height * args.scale),
                                             Image.Resampling.NEAREST))
    figure = visualize.side_by_side(panels, [p.name for p, _ in run.segmented])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    logger.info("wrote %s (%dx%d)", out, figure.width, figure.height)
    return out


if __name__ == "__main__":
    main()
