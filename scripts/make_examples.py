#!/usr/bin/env python
"""Write the web demo's bundled examples: ``assets/examples/synthetic_{0,1,2}.png``.

    python scripts/make_examples.py [--out assets/examples]

They are the first three images of the synthetic validation split with seed 0 (the same generator
seeds ``(0, 1, index)`` as ``maskformer_hf.data.synthetic``), saved as PNG rather than JPEG so that
they are lossless and byte-for-byte reproducible: a test re-runs this script and compares the files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from maskformer_hf.data.synthetic import generate_example

logger = logging.getLogger("make_examples")

ROOT = Path(__file__).resolve().parents[1]
SEED, VALIDATION_SPLIT, COUNT, SIZE = 0, 1, 3, 128


def write_examples(out: Path, count: int = COUNT, size: int = SIZE) -> list[Path]:
    """Write `count` synthetic validation images of `size`×`size` pixels into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ids, _segments = generate_example(np.random.default_rng([SEED, VALIDATION_SPLIT, index]), size)
        path = out / f"synthetic_{index}.png"
        Image.fromarray(image).save(path, format="png")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "examples",
                        help="folder to write the PNGs into (default: assets/examples)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_examples(args.out):
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
