"""Custom data from folders: images + semantic PNGs, or images + panoptic PNGs (five-minute route).

Layout (split folders are optional: images directly under ``images/`` make one split "train")::

    my_data/
      classes.json
      images/train/0001.jpg ...          images/validation/0107.jpg ...
      annotations/train/0001.png ...     annotations/validation/0107.png ...

An annotation has the image's file stem and the extension ``.png``. Split folder names
``training``/``val``/``valid`` become ``train``/``validation``.

``classes.json`` lists the classes in order; class k (1-based) is written as the value k in the
PNGs and 0 means "unlabelled" (ignored), as in ADE20K::

    {"classes": ["grass", "sky", {"name": "car", "isthing": true}]}

(entries are names or ``{"name", "isthing", "id"}`` dicts; ``id`` overrides the value k.)

- :func:`load_semantic_folder`: single-channel PNGs (mode L/P) of class values. With
  ``reduce_labels=False`` (or ``"reduce_labels": false`` in classes.json) values are 0-based class
  indices instead and ``ignore_index`` (255) marks unlabelled pixels.
- :func:`load_panoptic_folder`: RGB PNGs with **R = class value** (0 = unlabelled), **G = instance
  number** (0 for stuff; 1, 2, ... for the objects of a thing class; B extends G: ``G + 256·B``).
  Write one with ``PIL.Image.fromarray(np.dstack([classes, instances, zeros]).astype(np.uint8))``.
  Each (class, instance) pair becomes a segment with ``id = R + 256·G + 256²·B``, the COCO
  decoding, so the PNG is used as it is; the loader reads every PNG once to list the segments.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from .schema import SegmentationMetadata, dataset_info, read_label_map

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {"training": "train", "val": "validation", "valid": "validation"}


def read_classes_json(path: str | Path) -> dict[str, Any]:
    """Parse classes.json -> ``{"names": [...], "values": [...], "things": [...], **other keys}``.

    ``values[i]`` is the pixel value of class i (default i + 1); ``things`` holds label ids.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if isinstance(content, list):
        content = {"classes": content}
    if not isinstance(content, dict) or not isinstance(content.get("classes"), list) or not content["classes"]:
        raise ValueError(f'{path}: expected {{"classes": [name or {{"name", "isthing", "id"}}, ...]}}')
    names, values, things = [], [], []
    for index, entry in enumerate(content["classes"]):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{path}: class {index} must be a name or a dict with a 'name', got {entry!r}")
        names.append(entry["name"])
        values.append(int(entry.get("id", index + 1)))
        if entry.get("isthing", False):
            things.append(index)
    if len(set(values)) != len(values):
        raise ValueError(f"{path}: class ids must be unique, got {values}")
    extra = {k: v for k, v in content.items() if k != "classes"}
    return {"names": names, "values": values, "things": things, **extra}


def find_split_dirs(directory: Path, split_aliases: Mapping[str, str] = SPLIT_ALIASES) -> dict[str, Path]:
    """``{split name: folder}``: sub-folders holding images, or ``{"train": directory}`` if images lie directly in it."""
    if not directory.is_dir():
        raise ValueError(f"expected an image folder at {directory}, found none")
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in directory.iterdir() if p.is_file()):
        return {"train": directory}
    splits = {split_aliases.get(p.name, p.name): p for p in sorted(directory.iterdir()) if p.is_dir()}
    if not splits:
        raise ValueError(f"{directory} holds neither images ({', '.join(IMAGE_EXTENSIONS)}) nor split folders")
    return splits


def pair_files(image_dir: Path, annotation_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """Sorted (image ids, image paths, annotation paths) of the images in ``image_dir`` with their PNGs."""
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    annotations = [annotation_dir / f"{p.stem}.png" for p in images]
    missing = [str(a) for a in annotations if not a.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of {len(images)} images in {image_dir} have no annotation, e.g. {missing[0]}")
    return [p.stem for p in images], [str(p) for p in images], [str(a) for a in annotations]


def pair_by_key(images: Mapping[str, str], annotations: Mapping[str, str], image_dir: Path | str,
                annotation_dir: Path | str) -> tuple[list[str], list[str], list[str]]:
    """Sorted (keys, image paths, annotation paths) of two ``{key: path}`` listings (key = the image id,
    e.g. Cityscapes' ``<city>_<seq>_<frame>``); a key on one side only raises ``ValueError`` naming
    the file without a partner, and an empty listing raises too."""
    if not images:
        raise ValueError(f"no image in {image_dir}")
    if not annotations:
        raise ValueError(f"no annotation in {annotation_dir}")
    lonely_images = sorted(set(images) - set(annotations))
    if lonely_images:
        raise ValueError(f"{len(lonely_images)} of {len(images)} images in {image_dir} have no annotation in "
                         f"{annotation_dir}, e.g. {images[lonely_images[0]]}")
    lonely_annotations = sorted(set(annotations) - set(images))
    if lonely_annotations:
        raise ValueError(f"{len(lonely_annotations)} of {len(annotations)} annotations in {annotation_dir} have no "
                         f"image in {image_dir}, e.g. {annotations[lonely_annotations[0]]}")
    keys = sorted(images)
    return keys, [images[k] for k in keys], [annotations[k] for k in keys]


def semantic_split(ids: Sequence[str], images: Sequence[str], annotations: Sequence[str],
                   metadata: SegmentationMetadata, split: str) -> datasets.Dataset:
    """One split of a semantic dataset (paired file lists) -> a ``Dataset`` of the shared schema; only
    the first annotation's header is read, to check it is a single-channel map."""
    with Image.open(annotations[0]) as first:
        if first.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"semantic annotations must be single-channel PNGs or TIFFs (mode L, P, I;16) of class "
                             f"values; {annotations[0]} has mode {first.mode}")
    info = dataset_info(metadata)
    return datasets.Dataset.from_dict(
        {"image_id": list(ids), "image": list(images), "annotation": list(annotations),
         "segments_info": [[] for _ in ids]}, info=info, features=info.features, split=split)


def list_files(directory: Path, suffix: str, recursive: bool = False) -> dict[str, str]:
    """``{file name without suffix: path}`` of the files in ``directory`` (and its sub-folders when
    ``recursive``, e.g. Cityscapes' city folders) whose name ends with ``suffix`` (case-insensitive)."""
    found: dict[str, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if recursive and entry.is_dir():
                found.update(list_files(Path(entry.path), suffix, recursive))
            elif entry.is_file() and entry.name.lower().endswith(suffix.lower()):
                found[entry.name[:len(entry.name) - len(suffix)]] = entry.path
    return found


def check_split(split: str | None, available: Sequence[str]) -> None:
    """A ``ValueError`` when ``split`` (None: all) is not one of a loader's ``available`` split names."""
    if split is not None and split not in available:
        raise ValueError(f"split {split!r} not found; available: {list(available)}")


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a ``ValueError`` naming it and ``what`` it should hold."""
    if not path.is_dir():
        raise ValueError(f"expected {what} at {path}, found no such folder")
    return path


def paired_semantic_splits(folders: Mapping[str, str], image_root: Path, label_root: Path,
                           metadata: SegmentationMetadata, split: str | None, image_suffix: str,
                           label_suffix: str) -> dict[str, datasets.Dataset]:
    """``{split name: Dataset}`` of the folder pairs ``image_root/F`` + ``label_root/F`` for each
    ``F -> split name`` of `folders` (only `split` when given), files paired by stem; a folder without
    annotations is skipped (logged), one without its images or an unpaired file raises ``ValueError``."""
    splits = {}
    for folder, name in folders.items():
        if split is not None and name != split:
            continue
        if not (label_root / folder).is_dir():
            logger.info("skipping %s: no %s", folder, label_root / folder)
            continue
        image_dir = require_dir(image_root / folder, f"the images of {label_root / folder}")
        ids, images, labels = pair_by_key(list_files(image_dir, image_suffix),
                                          list_files(label_root / folder, label_suffix), image_dir, label_root / folder)
        splits[name] = semantic_split(ids, images, labels, metadata, name)
        logger.info("%s/%s: %d images", label_root, folder, len(ids))
    return splits


def _select(dataset_dict: datasets.DatasetDict, split: str | None) -> datasets.Dataset | datasets.DatasetDict:
    if split is None:
        return dataset_dict
    if split not in dataset_dict:
        raise ValueError(f"split {split!r} not found; available: {list(dataset_dict)}")
    return dataset_dict[split]


def build_semantic_dataset_dict(
    root: Path,
    metadata: SegmentationMetadata,
    image_dir: str = "images",
    annotation_dir: str = "annotations",
    split_aliases: Mapping[str, str] = SPLIT_ALIASES,
) -> datasets.DatasetDict:
    """``images/<split>/*`` + ``annotations/<split>/*.png`` -> DatasetDict (no pixel is read but one PNG's header)."""
    splits = {}
    for split, folder in find_split_dirs(root / image_dir, split_aliases).items():
        annotations = root / annotation_dir / folder.relative_to(root / image_dir)
        ids, images, labels = pair_files(folder, annotations)
        splits[split] = semantic_split(ids, images, labels, metadata, split)
        logger.info("%s/%s: %d images", root, split, len(ids))
    return datasets.DatasetDict(splits)


def load_semantic_folder(
    root: str | Path,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    reduce_labels: bool | None = None,
    ignore_index: int = 255,
) -> datasets.Dataset | datasets.DatasetDict:
    """Images + semantic PNGs (layout in the module docstring) -> the shared schema.

    Args:
        root: the folder holding ``images/``, ``annotations/`` and ``classes.json``.
        split: return only this split (a ``Dataset``); default: all splits (a ``DatasetDict``).
        class_names: overrides classes.json.
        reduce_labels: PNG value 0 = unlabelled and k = class k-1 (default True, or classes.json's
            ``"reduce_labels"``); False: values are class indices and ``ignore_index`` is unlabelled.
        ignore_index: label of unlabelled pixels after reduction.
    """
    root = Path(root)
    things: list[int] = []
    if class_names is None:
        if not (root / "classes.json").is_file():
            raise ValueError(f"no class names: pass class_names or write {root / 'classes.json'}")
        classes = read_classes_json(root / "classes.json")
        class_names, things = classes["names"], classes["things"]
        if classes["values"] != list(range(1, len(class_names) + 1)):
            raise ValueError(f"{root / 'classes.json'}: semantic classes take the values 1..K in order; "
                             "explicit 'id's are for panoptic folders")
        if reduce_labels is None:
            reduce_labels = bool(classes.get("reduce_labels", True))
    metadata = SegmentationMetadata(
        task="semantic", id2label=dict(enumerate(class_names)), thing_ids=tuple(things), ignore_index=ignore_index,
        reduce_labels=True if reduce_labels is None else reduce_labels)
    return _select(build_semantic_dataset_dict(root, metadata), split)


def _panoptic_segments(annotation_path: str, value_to_label: Mapping[int, int]) -> list[dict[str, Any]]:
    """List the (class, instance) segments of one R=class / G=instance PNG; unknown class values raise."""
    with Image.open(annotation_path) as image:
        if image.mode != "RGB":
            raise ValueError(f"{annotation_path}: panoptic annotations must be RGB PNGs (R = class, G = instance), "
                             f"got mode {image.mode}")
        ids = np.unique(read_label_map(image.convert("RGB"), "panoptic"))
    ids = ids[ids % 256 != 0]  # R = 0: unlabelled
    unknown = sorted({int(i) % 256 for i in ids} - set(value_to_label))
    if unknown:
        raise ValueError(f"{annotation_path}: class values {unknown} (red channel) are not in classes.json "
                         f"(known: {sorted(value_to_label)})")
    return [{"id": int(i), "label_id": value_to_label[int(i) % 256], "iscrowd": False} for i in ids]


def load_panoptic_folder(
    root: str | Path,
    split: str | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Images + R=class / G=instance PNGs + classes.json (layout in the module docstring) -> the shared schema.

    Args:
        root: the folder holding ``images/``, ``annotations/`` and ``classes.json``.
        split: return only this split (a ``Dataset``); default: all splits (a ``DatasetDict``).
        num_proc: processes used to scan the PNGs for their segments.
    """
    root = Path(root)
    if not (root / "classes.json").is_file():
        raise ValueError(f"a panoptic folder needs {root / 'classes.json'} (class names, which are things)")
    classes = read_classes_json(root / "classes.json")
    bad = [v for v in classes["values"] if not 1 <= v <= 255]
    if bad:
        raise ValueError(f"{root / 'classes.json'}: class values are stored in the red channel, 1..255; got {bad}")
    value_to_label = {value: label for label, value in enumerate(classes["values"])}
    metadata = SegmentationMetadata(task="panoptic", id2label=dict(enumerate(classes["names"])),
                                    thing_ids=tuple(classes["things"]))
    info = dataset_info(metadata)
    splits = {}
    for name, folder in find_split_dirs(root / "images").items():
        ids, images, labels = pair_files(folder, root / "annotations" / folder.relative_to(root / "images"))
        table = datasets.Dataset.from_dict({"image_id": ids, "image": images, "annotation": labels})
        table = table.map(lambda row: {"segments_info": _panoptic_segments(row["annotation"], value_to_label)},
                          num_proc=num_proc, desc=f"listing segments ({name})")
        splits[name] = datasets.Dataset.from_dict(table.to_dict(), features=info.features, info=info, split=name)
        logger.info("%s/%s: %d images", root, name, len(ids))
    return _select(datasets.DatasetDict(splits), split)
