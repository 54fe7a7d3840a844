#!/usr/bin/env python
"""Convert a transformers or an original (detectron2) MaskFormer checkpoint: ``maskformer-hf convert``.

    python scripts/convert_transformers_checkpoint.py facebook/maskformer-swin-base-ade ./maskformer-swin-base-ade
    python scripts/convert_transformers_checkpoint.py model_final_43ccd1.pkl ./maskformer-r50-ade

SRC is a folder or a Hub id of a transformers ``MaskFormerForInstanceSegmentation`` checkpoint
(4.x or 5.x key names), or a detectron2 weight file of the original MaskFormer release
(``model_final_*.pkl`` or ``.pth``; the config is inferred from the weights, and a ``.pkl`` is
unpickled, so convert only files from a trusted source). DST receives ``config.json`` +
``model.safetensors``, ``preprocessor_config.json`` (the source's when it has one),
``conversion_info.json`` and a model card (README.md). Flags: ``maskformer-hf convert --help``.
"""

import logging
import sys

from maskformer_hf.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
