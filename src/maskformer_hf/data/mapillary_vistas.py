"""Mapillary Vistas v1.2 semantic segmentation (65 classes), from the official layout.

::

    mapillary_vistas/
      config.json                     (v2.0 download: config_v1.2.json)
      training/images/*.jpg           training/labels/*.png      (v2.0 download: training/v1.2/labels/)
      validation/images/*.jpg         validation/labels/*.png
      testing/images/*.jpg            (no labels: not loaded)

``config.json`` lists the labels in value order: ``{"labels": [{"name", "readable", "instances",
"evaluate", "color"}, ...]}``; v1.2 has 66, the last ``"Unlabeled"`` with ``evaluate: false``.
The label PNGs (8-bit, palette) store that index per pixel and are used as stored: the evaluated
labels become label ids 0..64 in order (names: ``readable``; things: ``instances: true``) through
the metadata's ``label_values``, and any other value (65, any label with ``evaluate: false``) is
``ignore_index`` 255. 18,000 training / 2,000 validation images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets

from .folder import _select, check_split, list_files, pair_by_key, require_dir, semantic_split
from .schema import SegmentationMetadata

logger = logging.getLogger(__name__)

SPLITS = {"training": "train", "validation": "validation"}  # folder -> split; testing/ has no labels
CONFIG_FILES = ("config.json", "config_v1.2.json")
LABEL_DIRS = ("labels", "v1.2/labels")


def mapillary_vistas_metadata(labels: list[dict[str, Any]], source: str = "config.json") -> SegmentationMetadata:
    """Metadata from config.json's ``labels``: the ``evaluate`` ones, in value order."""
    try:
        kept = [(value, str(label.get("readable") or label["name"]), bool(label.get("instances", False)))
                for value, label in enumerate(labels) if label.get("evaluate", True)]
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"{source}: 'labels' must be a list of {{'name', 'readable', 'instances', 'evaluate'}} "
                         f"dicts ({error!r})") from None
    if not kept:
        raise ValueError(f"{source}: no label has evaluate: true")
    return SegmentationMetadata(
        task="semantic", id2label={i: name for i, (_, name, _) in enumerate(kept)},
        thing_ids=tuple(i for i, (_, _, thing) in enumerate(kept) if thing), ignore_index=255,
        label_values=tuple(value for value, _, _ in kept), source_category_ids=tuple(value for value, _, _ in kept))


def load_mapillary_vistas(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """Mapillary Vistas v1.2 -> splits ``train`` and ``validation``.

    Args:
        root: the folder holding ``config.json`` and ``training/``, ``validation/``.
        split: ``"train"`` or ``"validation"`` for one ``Dataset``; default both (those present).

    An image without its label PNG, or a label PNG without its image, raises ``ValueError``.
    """
    root = Path(root)
    check_split(split, list(SPLITS.values()))
    config_path = next((root / name for name in CONFIG_FILES if (root / name).is_file()), None)
    if config_path is None:
        raise ValueError(f"no {' or '.join(CONFIG_FILES)} under {root}: Mapillary Vistas' label list is needed")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("labels"), list):
        raise ValueError(f'{config_path}: expected {{"labels": [...]}}')
    metadata = mapillary_vistas_metadata(config["labels"], str(config_path))
    splits = {}
    for folder, name in SPLITS.items():
        if split is not None and name != split:
            continue
        if not (root / folder).is_dir():
            logger.info("skipping %s: no %s", folder, root / folder)
            continue
        image_dir = require_dir(root / folder / "images", f"the {folder} images")
        label_dir = next((root / folder / d for d in LABEL_DIRS if (root / folder / d).is_dir()), None)
        if label_dir is None:
            raise ValueError(f"no label folder for {image_dir}: expected {root / folder / 'labels'}")
        ids, images, labels = pair_by_key(list_files(image_dir, ".jpg"), list_files(label_dir, ".png"),
                                          image_dir, label_dir)
        splits[name] = semantic_split(ids, images, labels, metadata, name)
        logger.info("%s/%s: %d images", root, folder, len(ids))
    if not splits:
        raise ValueError(f"no {' or '.join(f for f, n in SPLITS.items() if split in (None, n))} folder under {root}")
    return _select(datasets.DatasetDict(splits), split)
