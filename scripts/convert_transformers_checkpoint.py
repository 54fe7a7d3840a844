#!/usr/bin/env python
"""Convert a transformers MaskFormer checkpoint into a maskformer_hf checkpoint.

    python scripts/convert_transformers_checkpoint.py facebook/maskformer-swin-base-ade ./maskformer-swin-base-ade

SRC is a folder or a Hub id of a ``MaskFormerForInstanceSegmentation`` checkpoint (4.x or 5.x key
names); DST receives ``config.json`` + ``model.safetensors`` loadable with
``MaskFormerForUniversalSegmentation.from_pretrained`` or ``AutoModelForUniversalSegmentation``.
The image processor of SRC, when there is one, is copied along, and a model card
(``model_cards/converted_from_transformers.md`` filled in) is written as DST/README.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from maskformer_hf import convert_from_transformers

logger = logging.getLogger("convert_transformers_checkpoint")
CARD = Path(__file__).resolve().parents[1] / "model_cards" / "converted_from_transformers.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder or Hub id of a transformers MaskFormer checkpoint")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--revision", default=None, help="Hub revision of SRC")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    kwargs = {"revision": args.revision} if args.revision else {}
    model = convert_from_transformers(args.src, **kwargs)
    model.save_pretrained(args.dst)
    src_processor = Path(args.src) / "preprocessor_config.json"
    if src_processor.is_file():
        shutil.copy(src_processor, Path(args.dst) / "preprocessor_config.json")
    n_params = sum(p.numel() for p in model.parameters())
    backbone = model.config.backbone_config.model_type if model.config.backbone_config else model.config.backbone
    card = CARD.read_text().format(backbone=backbone, source=args.src, destination=args.dst,
                                   parameters=f"{n_params / 1e6:.1f}M", num_labels=model.config.num_labels,
                                   num_queries=model.config.num_queries)
    (Path(args.dst) / "README.md").write_text(card)
    logger.info("wrote %s (%.1fM parameters, %d classes)", args.dst, n_params / 1e6, model.config.num_labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
