"""Cityscapes (fine annotations): semantic from the official layout, panoptic from cityscapesScripts' output.

::

    cityscapes/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      gtFine/cityscapes_panoptic_{train,val}.json      (createPanopticImgs.py, for the panoptic loader)
      gtFine/cityscapes_panoptic_{train,val}/<city>_<seq>_<frame>_gtFine_panoptic.png

- :func:`load_cityscapes`: the ``*_labelIds.png`` maps are used as stored (values 0..33, -1 stored
  as 255); the metadata's ``label_values`` maps the 19 evaluated labelIds (7, 8, 11, ... 33) to the
  train ids 0..18 and every other value to ``ignore_index`` 255, applied by
  :class:`~maskformer_hf.data.transforms.SegmentationTransform`. ``image_id`` is
  ``<city>_<seq>_<frame>``.
- :func:`load_cityscapes_panoptic`: COCO-format JSON and RGB PNGs (segment id = labelId for stuff,
  labelId × 1000 + instance for things, crowd for thing pixels without an instance), read by the
  COCO panoptic machinery; categories are the JSON's (the 19 labelIds, or train ids 0..18 for the
  ``--use-train-id`` output), ``image_id`` is the JSON's ``<city>_<seq>_<frame>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from .coco_panoptic import combine_splits, panoptic_json_split, read_panoptic_json, wanted_splits
from .folder import _select, list_files, pair_by_key, require_dir, semantic_split
from .schema import SegmentationMetadata

logger = logging.getLogger(__name__)

# (labelId, name) of the 19 evaluated classes; train id k is entry k (cityscapesScripts' labels.py).
CITYSCAPES_CLASSES: tuple[tuple[int, str], ...] = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)
CITYSCAPES_THING_IDS: tuple[int, ...] = tuple(range(11, 19))  # person ... bicycle (hasInstances)
SPLITS = {"train": "train", "val": "validation", "test": "test"}  # Cityscapes folder -> our split name
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_metadata() -> SegmentationMetadata:
    """The 19 train ids, stored as labelIds (``label_values`` and ``source_category_ids``)."""
    label_ids = tuple(label_id for label_id, _ in CITYSCAPES_CLASSES)
    return SegmentationMetadata(task="semantic", id2label={i: name for i, (_, name) in enumerate(CITYSCAPES_CLASSES)},
                                thing_ids=CITYSCAPES_THING_IDS, ignore_index=255, label_values=label_ids,
                                source_category_ids=label_ids)


def load_cityscapes(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """Cityscapes fine semantic segmentation -> splits ``train``, ``validation`` (and ``test`` when
    ``gtFine/test`` is there), 19 classes.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"validation"`` or ``"test"`` for one ``Dataset``; default all found.

    A split folder of ``leftImg8bit`` without its ``gtFine`` folder is skipped with a log line; an
    image without its labelIds PNG, or a labelIds PNG without its image, raises ``ValueError``.
    """
    root = Path(root)
    image_root = require_dir(root / "leftImg8bit", "the Cityscapes images (leftImg8bit/{train,val,test}/<city>/)")
    label_root = require_dir(root / "gtFine", "the Cityscapes fine annotations (gtFine/{train,val,test}/<city>/)")
    metadata = cityscapes_metadata()
    splits = {}
    for folder in wanted_splits(list(SPLITS), split):
        if not (image_root / folder).is_dir():
            if split is not None:
                raise ValueError(f"split {split!r}: no folder {image_root / folder}")
            continue
        if not (label_root / folder).is_dir():
            if split is not None:
                raise ValueError(f"split {split!r}: images in {image_root / folder} but no {label_root / folder}")
            logger.info("skipping %s: no %s", folder, label_root / folder)
            continue
        ids, images, labels = pair_by_key(list_files(image_root / folder, IMAGE_SUFFIX, recursive=True),
                                          list_files(label_root / folder, LABEL_SUFFIX, recursive=True),
                                          image_root / folder, label_root / folder)
        splits[SPLITS[folder]] = semantic_split(ids, images, labels, metadata, SPLITS[folder])
        logger.info("%s/%s: %d images", root, folder, len(ids))
    if not splits:
        raise ValueError(f"no split of leftImg8bit/{{train,val,test}} with its gtFine folder under {root}")
    return _select(datasets.DatasetDict(splits), split)


def load_cityscapes_panoptic(
    root: str | Path,
    split: str | None = None,
    use_train_id: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Cityscapes panoptic (``createPanopticImgs.py`` output) -> splits ``train``, ``validation``
    (and ``test`` when its JSON is there).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"validation"`` or ``"test"`` for one ``Dataset``; default all found.
        use_train_id: read the ``cityscapes_panoptic_<split>_trainId`` files (category ids 0..18)
            instead of the default ones (category ids = labelIds).

    A missing JSON is skipped with a log line; rows whose image or PNG is missing are dropped with
    a warning (as for COCO); no JSON at all raises ``ValueError``.
    """
    root = Path(root)
    image_root = require_dir(root / "leftImg8bit", "the Cityscapes images (leftImg8bit/{train,val,test}/<city>/)")
    suffix = "_trainId" if use_train_id else ""
    loaded = {}
    for folder in wanted_splits(list(SPLITS), split):
        json_path = root / "gtFine" / f"cityscapes_panoptic_{folder}{suffix}.json"
        if not json_path.is_file():
            logger.info("skipping %s: no %s", folder, json_path)
            continue
        png_dir = require_dir(json_path.with_suffix(""), f"the panoptic PNGs of {json_path.name}")
        loaded[SPLITS[folder]] = panoptic_json_split(
            read_panoptic_json(json_path), lambda image, d=image_root / folder: str(_image_path(d, image)),
            png_dir, SPLITS[folder], json_path.name)
    if not loaded:
        raise ValueError(f"no gtFine/cityscapes_panoptic_{{train,val}}{suffix}.json under {root} "
                         "(cityscapesScripts' createPanopticImgs.py writes them)")
    return _select(combine_splits(loaded), split)


def _image_path(split_dir: Path, image: dict) -> Path:
    """``leftImg8bit/<split>/<city>/<file_name>``: the city is the file name's first field."""
    file_name = str(image["file_name"])
    return split_dir / file_name.split("_", 1)[0] / file_name

