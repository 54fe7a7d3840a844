"""COCO panoptic from the official local layout.

::

    coco/
      annotations/panoptic_train2017.json   annotations/panoptic_val2017.json
      panoptic_train2017/*.png              panoptic_val2017/*.png    (or annotations/panoptic_*2017/)
      train2017/*.jpg                       val2017/*.jpg

The JSON holds ``categories`` (``id``, ``name``, ``isthing``; 133 classes, ids 1..200 with gaps),
``images`` and ``annotations`` (``image_id``, ``file_name`` of the PNG, ``segments_info`` with
``id``, ``category_id``, ``iscrowd``). PNGs encode ``id = R + 256·G + 256²·B`` (0 = void) and are
used as they are. Category ids are mapped to contiguous label ids in ascending id order; the
metadata keeps ``thing_ids`` (label ids with ``isthing``) and ``source_category_ids`` (the COCO id
of each label, to write predictions back in COCO format).

The other COCO-format panoptic sets (Cityscapes, ADE20K panoptic) are read by the same
:func:`panoptic_json_split`, given where their images lie.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets

from .folder import SPLIT_ALIASES, _select
from .schema import SegmentationMetadata, dataset_info, get_metadata

logger = logging.getLogger(__name__)


def coco_panoptic_metadata(categories: Sequence[dict[str, Any]]) -> SegmentationMetadata:
    """Metadata from COCO ``categories`` (contiguous labels in ascending category id order)."""
    try:
        categories = sorted(categories, key=lambda c: int(c["id"]))
        names = [str(c["name"]) for c in categories]
        things = [label for label, c in enumerate(categories) if c.get("isthing", 0)]
        ids = [int(c["id"]) for c in categories]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"COCO categories must be dicts with 'id', 'name' (and 'isthing'): {error!r}") from None
    if len(set(ids)) != len(ids):
        raise ValueError(f"COCO category ids must be unique, got {ids}")
    return SegmentationMetadata(task="panoptic", id2label=dict(enumerate(names)), thing_ids=tuple(things),
                                source_category_ids=tuple(ids))


def _find_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    raise ValueError(f"no {what} folder under {root}: looked for {', '.join(candidates)}")


def load_coco_panoptic(
    root: str | Path,
    split: str | None = None,
    splits: Sequence[str] = ("train", "val"),
    year: str = "2017",
) -> datasets.Dataset | datasets.DatasetDict:
    """COCO panoptic -> the shared schema, splits ``train`` and ``validation``.

    Args:
        root: the folder holding ``annotations/`` and the image and PNG folders.
        split: ``"train"`` or ``"validation"`` for one ``Dataset``; default all of ``splits``.
        splits: COCO split names to load (``train``, ``val``) when ``split`` is not given; a
            missing JSON is skipped with a log line, unless nothing is found.
        year: the suffix of the folder names.
    """
    root = Path(root)
    loaded = {}
    for coco_split in wanted_splits(splits, split):
        json_path = root / "annotations" / f"panoptic_{coco_split}{year}.json"
        if not json_path.is_file():
            logger.info("skipping %s: no %s", coco_split, json_path)
            continue
        content = read_panoptic_json(json_path)
        image_dir = _find_dir(root, [f"{coco_split}{year}", f"images/{coco_split}{year}"], "image")
        png_dir = _find_dir(root, [f"panoptic_{coco_split}{year}", f"annotations/panoptic_{coco_split}{year}"],
                            "panoptic PNG")
        name = SPLIT_ALIASES.get(coco_split, coco_split)
        loaded[name] = panoptic_json_split(content, lambda image, d=image_dir: str(d / image["file_name"]), png_dir,
                                           name, json_path.name)
    if not loaded:
        raise ValueError(f"no annotations/panoptic_{{{','.join(splits)}}}{year}.json under {root}")
    return _select(combine_splits(loaded), split)


def wanted_splits(splits: Sequence[str], split: str | None) -> list[str]:
    """The dataset's own split names to read: all of ``splits``, or the one whose normalised name
    (``val`` -> ``validation``) is ``split``; an unknown ``split`` raises ``ValueError``."""
    if split is None:
        return list(splits)
    wanted = {SPLIT_ALIASES.get(s, s): s for s in splits}
    if split not in wanted:
        raise ValueError(f"split {split!r} not found; available: {list(wanted)}")
    return [wanted[split]]


def read_panoptic_json(path: Path) -> dict[str, Any]:
    """A COCO-format panoptic JSON (``images``, ``annotations``, ``categories``), checked for those keys."""
    try:
        content = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        raise ValueError(f"{path}: a COCO panoptic JSON needs 'images', 'annotations' and 'categories'; "
                         f"{missing} missing")
    return content


def combine_splits(loaded: dict[str, datasets.Dataset]) -> datasets.DatasetDict:
    """The splits as one ``DatasetDict``; their label spaces must agree."""
    metadata = {name: get_metadata(table) for name, table in loaded.items()}
    first = next(iter(loaded))
    for name, value in metadata.items():
        if value != metadata[first]:
            raise ValueError(f"split {name!r}: categories differ from those of split {first!r}")
    return datasets.DatasetDict(loaded)


def panoptic_json_split(
    content: dict[str, Any],
    image_path: Callable[[dict[str, Any]], str],
    png_dir: Path,
    split: str,
    source: str,
) -> datasets.Dataset:
    """One split of COCO-format panoptic annotations -> a ``Dataset`` of the shared schema.

    Args:
        content: the parsed JSON (:func:`read_panoptic_json`).
        image_path: an ``images`` entry -> the path of its image file (layouts differ: COCO's
            ``train2017/<file_name>``, Cityscapes' ``leftImg8bit/<split>/<city>/<file_name>``).
        png_dir: the folder of the PNGs named by the annotations' ``file_name``.
        split: the split's name (``train``, ``validation``).
        source: what to name in messages (the JSON's file name); the metadata is
            :func:`coco_panoptic_metadata` of the JSON's ``categories``.

    Rows whose image or PNG is missing are dropped with a warning naming them (a partial
    download); none left raises ``ValueError``.
    """
    metadata = coco_panoptic_metadata(content["categories"])
    label_of = {category_id: label for label, category_id in enumerate(metadata.source_category_ids)}
    image_of = {image["id"]: image for image in content["images"]}
    columns: dict[str, list[Any]] = {"image_id": [], "image": [], "annotation": [], "segments_info": []}
    for annotation in content["annotations"]:
        if annotation["image_id"] not in image_of:
            raise ValueError(f"{source}: annotation {annotation['file_name']} refers to image_id "
                             f"{annotation['image_id']}, which is not in 'images'")
        segments = []
        for segment in annotation["segments_info"]:
            if segment["category_id"] not in label_of:
                raise ValueError(f"{annotation['file_name']}: category_id {segment['category_id']} is not in "
                                 "'categories'")
            if int(segment["id"]) == 0:
                raise ValueError(f"{annotation['file_name']}: segment id 0 is reserved for void")
            segments.append({"id": int(segment["id"]), "label_id": label_of[segment["category_id"]],
                             "iscrowd": bool(segment.get("iscrowd", 0))})
        columns["image_id"].append(str(annotation["image_id"]))
        columns["image"].append(str(image_path(image_of[annotation["image_id"]])))
        columns["annotation"].append(str(png_dir / annotation["file_name"]))
        columns["segments_info"].append(segments)
    columns = _drop_missing_files(columns, source)
    info = dataset_info(metadata)
    table = datasets.Dataset.from_dict(columns, features=info.features, info=info, split=split)
    logger.info("%s: %d images", source, len(table))
    return table


def _drop_missing_files(columns: dict[str, list[Any]], source: str) -> dict[str, list[Any]]:
    """The rows whose image and PNG both exist; the others are dropped with a warning naming them
    (a partial download, a deleted file). Raises ``ValueError`` when none is left."""
    listings: dict[str, set[str]] = {}

    def exists(path: str) -> bool:  # one directory listing per folder, not one stat per file
        folder, name = os.path.split(path)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        return name in listings[folder]

    keep = [i for i, (image, png) in enumerate(zip(columns["image"], columns["annotation"]))
            if exists(image) and exists(png)]
    if len(keep) == len(columns["image"]):
        return columns
    missing = [path for i in sorted(set(range(len(columns["image"]))) - set(keep))
               for path in (columns["image"][i], columns["annotation"][i]) if not exists(path)]
    if not keep:
        raise ValueError(f"{source}: none of its {len(columns['image'])} images has both files, e.g. {missing[0]} "
                         "does not exist")
    logger.warning("%s: skipping %d of %d images whose files are missing, e.g. %s", source,
                   len(columns["image"]) - len(keep), len(columns["image"]), ", ".join(missing[:3]))
    return {name: [values[i] for i in keep] for name, values in columns.items()}
