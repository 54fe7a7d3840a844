"""COCO *instance* JSON (what labelling tools export) -> the shared schema, masks rasterised lazily.

::

    annotations/instances_val2017.json     val2017/*.jpg     (any annotation file + image folder)

The JSON holds ``images`` (``id``, ``file_name``, ``height``, ``width``), ``categories`` (``id``,
``name``) and ``annotations`` (``id``, ``image_id``, ``category_id``, ``segmentation``, ``area``,
``iscrowd``). A ``segmentation`` is a list of polygons ``[[x1, y1, x2, y2, ...], ...]``, an
uncompressed RLE ``{"size": [h, w], "counts": [ints]}`` or a compressed one (``counts`` a string),
as pycocotools reads them.

Nothing is rasterised at load time: each row keeps its image's annotations as a compact JSON string
(column ``instances``), and a format transform (``dataset.set_transform``) turns them into the
schema's ``annotation`` when the example is read, so a 100k-image file never sits in memory as
masks. What a reader sees is the panoptic flavour of the shared schema: ``annotation`` is a
`(H, W)` segment-id map (PIL mode ``I``, 0 = no object), ``segments_info`` lists every instance
(``id`` = its 1-based rank in annotation-id order, ``label_id``, ``iscrowd``); every class is a thing.

**Overlaps** (instances may overlap in COCO; a segment map cannot) are resolved deterministically:
a pixel covered by several instances belongs to the non-crowd one of smallest ``area`` (the JSON's,
else its pixel count), ties to the lowest annotation id, so small objects in front of large ones
stay whole; crowd regions only keep the pixels no non-crowd instance covers. An instance hidden
entirely stays in ``segments_info`` and is dropped by :class:`~maskformer_hf.data.transforms.SegmentationTransform`
(it keeps only segments present in the map). Mask AP does not go through the map: it reads the
original, overlapping masks with :func:`read_instances`.

Categories map to contiguous label ids in ascending category-id order (``source_category_ids``
keeps COCO's ids); the metadata's ``extra["instances"]`` is ``"coco"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .coco_panoptic import _find_dir, coco_panoptic_metadata, wanted_splits
from .folder import SPLIT_ALIASES, _select
from .schema import SegmentationMetadata, dataset_info

logger = logging.getLogger(__name__)

INSTANCES_COLUMN = "instances"
CHUNK = 10_000  # images converted to Arrow at a time


def coco_instances_metadata(categories: Sequence[Mapping[str, Any]]) -> SegmentationMetadata:
    """Metadata from COCO ``categories``: contiguous labels in ascending id order, all things."""
    metadata = coco_panoptic_metadata(categories)
    return dataclasses.replace(metadata, thing_ids=tuple(metadata.id2label), extra={"instances": "coco"})


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> `(height, width)` bool."""
    if isinstance(segmentation, list):  # polygons: one or more [x1, y1, ...] lists, merged
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
        if isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Validate the shape of a ``segmentation`` without rasterising it."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"{where}: a polygon must be a flat list of at least 3 (x, y) pairs, got "
                                 f"{str(polygon)[:60]}")
        return
    if not isinstance(segmentation, Mapping) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict with 'size' and "
                         f"'counts', got {str(segmentation)[:60]}")
    if [int(s) for s in segmentation["size"]] != [height, width]:
        raise ValueError(f"{where}: RLE size {list(segmentation['size'])} != the image's [height, width] "
                         f"[{height}, {width}]")


def _areas(instances: Sequence[Mapping[str, Any]], masks: Sequence[np.ndarray]) -> list[float]:
    """Each instance's JSON ``area``, else its mask's pixel count."""
    return [float(i["area"]) if i.get("area") is not None else float(m.sum()) for i, m in zip(instances, masks)]


def paint_instances(instances: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """Rasterise one image's instances -> `(height, width)` int32 segment ids (0 = none), with the
    overlap rule of the module docstring. Each instance: ``{"segment_id", "segmentation", "area",
    "iscrowd", "annotation_id"}``."""
    ids = np.zeros((height, width), dtype=np.int32)
    masks = [segmentation_to_mask(i["segmentation"], height, width) for i in instances]
    areas = _areas(instances, masks)
    # Painted last wins: crowd before non-crowd, then larger before smaller, then higher id before lower.
    order = sorted(range(len(instances)), key=lambda k: (not instances[k]["iscrowd"], -areas[k],
                                                         -instances[k]["annotation_id"]))
    for k in order:
        ids[masks[k]] = instances[k]["segment_id"]
    return ids


class RasterizeInstances:
    """The format transform of :func:`load_coco_instances`: a batch's ``instances`` JSON -> its
    ``annotation`` segment map (PIL mode ``I``); other columns pass through, ``instances`` is dropped."""

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {key: values for key, values in batch.items() if key != INSTANCES_COLUMN}
        if INSTANCES_COLUMN in batch:
            maps = []
            for text in batch[INSTANCES_COLUMN]:
                record = json.loads(text)
                maps.append(Image.fromarray(paint_instances(record["objects"], record["height"], record["width"])))
            out["annotation"] = maps
        return out


def read_instances(raw: datasets.Dataset, index: int) -> dict[str, Any]:
    """The original (overlapping) instances of example ``index``, as mask AP's reference:
    ``{"masks": (M, H, W) bool, "labels": (M,), "iscrowd": (M,) bool, "area": (M,) float}``
    (``area`` is the JSON's, as pycocotools uses it for the area ranges).

    Args:
        raw: the dataset viewed without its transform, ``dataset.with_format(None, columns=["instances"])``
            (make it once, not per example).
    """
    record = json.loads(raw[index][INSTANCES_COLUMN])
    height, width, objects = record["height"], record["width"], record["objects"]
    masks = np.stack([segmentation_to_mask(o["segmentation"], height, width) for o in objects]) if objects else \
        np.zeros((0, height, width), dtype=bool)
    areas = _areas(objects, masks)
    return {"masks": masks, "labels": np.array([o["label_id"] for o in objects], dtype=np.int64),
            "iscrowd": np.array([bool(o["iscrowd"]) for o in objects], dtype=bool),
            "area": np.array(areas, dtype=np.float64)}


def has_instances(dataset: Any) -> bool:
    """Whether ``dataset`` was built by :func:`load_coco_instances` (and keeps its raw instances)."""
    return INSTANCES_COLUMN in (getattr(dataset, "column_names", None) or [])


def load_coco_instances(
    annotation_file: str | Path,
    images_dir: str | Path,
    split: str | None = None,
) -> datasets.Dataset:
    """A COCO instance JSON and its image folder -> a ``datasets.Dataset`` of the shared schema.

    Args:
        annotation_file: e.g. ``annotations/instances_val2017.json`` (polygons and/or RLE).
        images_dir: the folder the images' ``file_name`` are relative to.
        split: the split name recorded on the dataset; default from the file name
            (``instances_val2017.json`` -> ``validation``), else ``train``.

    Images without annotations are kept (no objects); images whose file is missing are dropped with
    a warning naming them. See the module docstring for the overlap rule and the lazy rasterisation.
    """
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    if not annotation_file.is_file():
        raise ValueError(f"load_coco_instances: no annotation file {annotation_file}")
    if not images_dir.is_dir():
        raise ValueError(f"load_coco_instances: no image folder {images_dir}")
    try:
        content = json.loads(annotation_file.read_text())
        images, categories, annotations = content["images"], content["categories"], content.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{annotation_file}: not a COCO instance file with 'images', 'categories' and "
                         f"'annotations' ({type(error).__name__}: {error})") from None
    metadata = coco_instances_metadata(categories)
    label_of = {category_id: label for label, category_id in enumerate(metadata.source_category_ids)}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for annotation in annotations:
        by_image[annotation.get("image_id")].append(annotation)
    count = len(annotations)
    del content, annotations  # from here on each image's parsed annotations are freed once stored as JSON text
    known = {image.get("id") for image in images}
    orphans = [a.get("id") for key, group in by_image.items() if key not in known for a in group]
    if orphans:
        raise ValueError(f"{annotation_file}: annotations {orphans[:5]} refer to image ids not in 'images'")
    info = dataset_info(metadata)
    info.features = datasets.Features({**info.features, INSTANCES_COLUMN: datasets.Value("string")})
    empty = lambda: {name: [] for name in info.features}  # noqa: E731
    columns: dict[str, list[Any]] = empty()
    parts, kept = [], 0  # Arrow tables of CHUNK images each: the Python lists never hold the whole file
    listing = set(os.listdir(images_dir))
    missing = []
    for image in images:
        try:
            height, width, file_name = int(image["height"]), int(image["width"]), str(image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{annotation_file}: image {image.get('id')} needs 'file_name', 'height' and "
                             "'width'") from None
        if file_name not in listing and not (images_dir / file_name).is_file():
            missing.append(file_name)
            by_image.pop(image["id"], None)
            continue
        objects, segments = [], []
        for rank, annotation in enumerate(sorted(by_image.pop(image["id"], []), key=lambda a: a.get("id", 0)), 1):
            where = f"{annotation_file}: annotation {annotation.get('id')} (image {image['id']})"
            if annotation.get("category_id") not in label_of:
                raise ValueError(f"{where}: category_id {annotation.get('category_id')} is not in 'categories'")
            if "segmentation" not in annotation:
                raise ValueError(f"{where}: no 'segmentation'")
            _check_segmentation(annotation["segmentation"], height, width, where)
            label, crowd = label_of[annotation["category_id"]], bool(annotation.get("iscrowd", 0))
            objects.append({"segment_id": rank, "annotation_id": int(annotation.get("id", rank)), "label_id": label,
                            "iscrowd": crowd, "area": annotation.get("area"),
                            "segmentation": annotation["segmentation"]})
            segments.append({"id": rank, "label_id": label, "iscrowd": crowd})
        columns["image_id"].append(str(image["id"]))
        columns["image"].append(str(images_dir / file_name))
        columns["annotation"].append(None)
        columns["segments_info"].append(segments)
        columns[INSTANCES_COLUMN].append(json.dumps({"height": height, "width": width, "objects": objects},
                                                    separators=(",", ":")))
        if len(columns["image"]) == CHUNK:
            parts.append(datasets.Dataset.from_dict(columns, features=info.features))
            kept, columns = kept + CHUNK, empty()
    if columns["image"] or not parts:
        kept += len(columns["image"])
        parts.append(datasets.Dataset.from_dict(columns, features=info.features))
    if missing:
        if not kept:
            raise ValueError(f"{annotation_file}: none of its {len(images)} images is in {images_dir}, "
                             f"e.g. {missing[0]}")
        logger.warning("%s: skipping %d of %d images whose files are missing from %s, e.g. %s", annotation_file,
                       len(missing), len(images), images_dir, ", ".join(missing[:3]))
    if split is None:
        stem = annotation_file.stem.removeprefix("instances_").rstrip("0123456789")
        split = SPLIT_ALIASES.get(stem, stem) if stem in ("train", "val", "test", "validation") else "train"
    dataset = datasets.concatenate_datasets(parts, info=info, split=split)
    dataset.set_transform(RasterizeInstances())
    logger.info("%s: %d images, %d annotations", annotation_file, len(dataset), count)
    return dataset


def load_coco_instances_root(
    root: str | Path,
    split: str | None = None,
    splits: Sequence[str] = ("train", "val"),
    year: str = "2017",
) -> datasets.Dataset | datasets.DatasetDict:
    """The COCO layout ``root/annotations/instances_{train,val}YEAR.json`` + ``root/{train,val}YEAR/``
    -> splits ``train`` and ``validation`` (a missing JSON is skipped, unless none is found)."""
    root = Path(root)
    loaded = {}
    for coco_split in wanted_splits(splits, split):  # one split asked for: the other JSON is not parsed
        json_path = root / "annotations" / f"instances_{coco_split}{year}.json"
        if not json_path.is_file():
            logger.info("skipping %s: no %s", coco_split, json_path)
            continue
        image_dir = _find_dir(root, [f"{coco_split}{year}", f"images/{coco_split}{year}"], "image")
        name = SPLIT_ALIASES.get(coco_split, coco_split)
        loaded[name] = load_coco_instances(json_path, image_dir, split=name)
    if not loaded:
        raise ValueError(f"no annotations/instances_{{{','.join(splits)}}}{year}.json under {root}")
    return _select(datasets.DatasetDict(loaded), split)
