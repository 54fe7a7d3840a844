#!/usr/bin/env python
"""Convert a transformers or an original (detectron2) MaskFormer checkpoint into a maskformer_hf checkpoint.

    python scripts/convert_transformers_checkpoint.py facebook/maskformer-swin-base-ade ./maskformer-swin-base-ade
    python scripts/convert_transformers_checkpoint.py model_final_43ccd1.pkl ./maskformer-r50-ade

SRC is a folder or a Hub id of a transformers ``MaskFormerForInstanceSegmentation`` checkpoint
(4.x or 5.x key names), or a detectron2 weight file of the original MaskFormer release
(``model_final_*.pkl`` or ``.pth``; the config is inferred from the weights, and a ``.pkl`` is
unpickled, so convert only files from a trusted source). DST receives ``config.json`` +
``model.safetensors`` loadable with ``MaskFormerForUniversalSegmentation.from_pretrained`` or
``AutoModelForUniversalSegmentation``, and ``preprocessor_config.json`` (the source's when it has
one). A model card (``model_cards/converted_from_transformers.md`` filled in) is written as
DST/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maskformer_hf import convert_checkpoint

logger = logging.getLogger("convert_transformers_checkpoint")
CARD = Path(__file__).resolve().parents[1] / "model_cards" / "converted_from_transformers.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder or Hub id of a transformers MaskFormer checkpoint, or a detectron2 "
                                    "model_final_*.pkl / .pth file")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--revision", default=None, help="Hub revision of SRC")
    parser.add_argument("--id2label", type=Path, default=None,
                        help="JSON file of class names (a list, or an object id -> name) replacing the source's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    id2label = json.loads(args.id2label.read_text()) if args.id2label else None
    model = convert_checkpoint(args.src, args.dst, id2label=id2label, revision=args.revision)
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
