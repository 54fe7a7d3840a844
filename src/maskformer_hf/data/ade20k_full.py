"""ADE20K-Full (847 classes, the paper's ADE20K-Full benchmark), in the layout MaskFormer's users prepare.

::

    ADE20K_2021_17_01/
      images_detectron2/{training,validation}/*.jpg
      annotations_detectron2/{training,validation}/*.tif   (16-bit single-channel TIFF)

(written by MaskFormer's ``prepare_ade20k_full_sem_seg.py`` from ``ADE20K_2021_17_01``). A TIFF
stores the label id 0..846 per pixel and 65535 for unlabelled pixels, so ``ignore_index`` is 65535
(255 is a class here). The maps decode losslessly (PIL mode ``I;16``) and are used as stored.
Class names and ADE20K object indices: :mod:`maskformer_hf.data.ade20k_full_classes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from .ade20k_full_classes import ADE20K_FULL_CLASSES
from .folder import _select, check_split, paired_semantic_splits, require_dir
from .schema import SegmentationMetadata

logger = logging.getLogger(__name__)

SPLITS = {"training": "train", "validation": "validation"}
IGNORE_INDEX = 65535


def ade20k_full_metadata() -> SegmentationMetadata:
    return SegmentationMetadata(task="semantic", id2label={i: name for i, (_, name) in enumerate(ADE20K_FULL_CLASSES)},
                                ignore_index=IGNORE_INDEX,
                                source_category_ids=tuple(index for index, _ in ADE20K_FULL_CLASSES))


def load_ade20k_full(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """ADE20K-Full -> splits ``train`` and ``validation``, 847 classes, ``ignore_index`` 65535.

    Args:
        root: the ``ADE20K_2021_17_01`` folder holding ``images_detectron2/`` and ``annotations_detectron2/``.
        split: ``"train"`` or ``"validation"`` for one ``Dataset``; default both (those present).

    An image without its TIFF, or a TIFF without its image, raises ``ValueError``.
    """
    root = Path(root)
    check_split(split, list(SPLITS.values()))
    image_root = require_dir(root / "images_detectron2", "the ADE20K-Full images (images_detectron2/{training,"
                             "validation}/, from prepare_ade20k_full_sem_seg.py)")
    label_root = require_dir(root / "annotations_detectron2", "the ADE20K-Full 16-bit TIFF annotations "
                             "(annotations_detectron2/{training,validation}/)")
    metadata = ade20k_full_metadata()
    splits = paired_semantic_splits(SPLITS, image_root, label_root, metadata, split, ".jpg", ".tif")
    if not splits:
        raise ValueError(f"no {' or '.join(f for f, n in SPLITS.items() if split in (None, n))} folder under "
                         f"{label_root}")
    return _select(datasets.DatasetDict(splits), split)
