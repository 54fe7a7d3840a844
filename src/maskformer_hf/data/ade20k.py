"""ADE20K-150 (SceneParsing): from the official ``ADEChallengeData2016/`` folder or from parquet; its
panoptic version (:func:`load_ade20k_panoptic`) from MaskFormer's prepared files in the same folder.

Folder layout (the official zip): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` (mode L: 0 = "other", 1..150 = classes), 20,210 / 2,000
images. Annotations are kept raw; the metadata says ``reduce_labels=True`` (0 -> ignore 255,
k -> k-1), applied by :class:`maskformer_hf.data.transforms.SegmentationTransform`.

The Hub's ``scene_parse_150`` is a loading script, which ``datasets`` >= 4 refuses to run; use the
folder route, or a parquet copy of the dataset (given by Hub name or local files) with
:func:`load_ade20k_parquet` — copies name their columns differently, hence ``image_column`` and
``annotation_column``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from .coco_panoptic import combine_splits, panoptic_json_split, read_panoptic_json
from .folder import SPLIT_ALIASES, _select, build_semantic_dataset_dict, check_split, read_classes_json, require_dir
from .schema import SegmentationMetadata, dataset_info

logger = logging.getLogger(__name__)

# Label ids 0..149 (file values 1..150), objectInfo150 order.
ADE20K_150_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)


def ade20k_metadata(class_names: Sequence[str] = ADE20K_150_CLASSES, thing_ids: Sequence[int] = (),
                    reduce_labels: bool = True) -> SegmentationMetadata:
    """Semantic metadata of ADE20K-style data (0 = other, k = class k-1)."""
    return SegmentationMetadata(task="semantic", id2label=dict(enumerate(class_names)), thing_ids=tuple(thing_ids),
                                ignore_index=255, reduce_labels=reduce_labels)


def load_ade20k(
    root: str | Path,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """ADE20K-150 from an ``ADEChallengeData2016/`` folder -> splits ``train`` and ``validation``.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"train"`` or ``"validation"`` for one ``Dataset``; default both in a ``DatasetDict``.
        class_names: default: ``root/classes.json`` if present (as written by the synthetic
            generator, see :mod:`maskformer_hf.data.folder`), else the 150 ADE20K classes.
    """
    root = Path(root)
    things: Sequence[int] = ()
    if class_names is None and (root / "classes.json").is_file():
        classes = read_classes_json(root / "classes.json")
        class_names, things = classes["names"], classes["things"]
    metadata = ade20k_metadata(class_names or ADE20K_150_CLASSES, things)
    return _select(build_semantic_dataset_dict(root, metadata, split_aliases=SPLIT_ALIASES), split)


def load_ade20k_panoptic(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """ADE20K panoptic (150 classes, as MaskFormer's ``prepare_ade20k_pan_seg.py`` writes it) -> splits
    ``train`` and ``validation``.

    Layout, inside ``ADEChallengeData2016/``: ``ade20k_panoptic_{train,val}.json`` (COCO panoptic
    format; categories 0..149 with ``isthing``), ``ade20k_panoptic_{train,val}/*.png`` (RGB segment
    ids) and the images ``images/{training,validation}/*.jpg``. Read by the COCO panoptic machinery:
    a missing JSON is skipped with a log line, rows whose image or PNG is missing are dropped with a
    warning, and no JSON at all raises ``ValueError``.
    """
    root = Path(root)
    loaded = {}
    for name, image_folder in wanted_panoptic_splits(split):
        json_path = root / f"ade20k_panoptic_{name}.json"
        if not json_path.is_file():
            logger.info("skipping %s: no %s", name, json_path)
            continue
        image_dir = require_dir(root / "images" / image_folder, f"the images of {json_path.name}")
        png_dir = require_dir(root / f"ade20k_panoptic_{name}", f"the panoptic PNGs of {json_path.name}")
        loaded[SPLIT_ALIASES.get(name, name)] = panoptic_json_split(
            read_panoptic_json(json_path), lambda image, d=image_dir: str(d / image["file_name"]), png_dir,
            SPLIT_ALIASES.get(name, name), json_path.name)
    if not loaded:
        raise ValueError(f"no ade20k_panoptic_{{train,val}}.json under {root} (MaskFormer's "
                         "datasets/prepare_ade20k_pan_seg.py writes them)")
    return _select(combine_splits(loaded), split)


def wanted_panoptic_splits(split: str | None) -> list[tuple[str, str]]:
    """(JSON split name, image folder) pairs to read for ``split``."""
    pairs = {"train": ("train", "training"), "validation": ("val", "validation")}
    check_split(split, list(pairs))
    return [pair for name, pair in pairs.items() if split in (None, name)]


def load_ade20k_parquet(
    path_or_name: str | Path | None = None,
    split: str | None = None,
    image_column: str = "image",
    annotation_column: str = "annotation",
    image_id_column: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    class_names: Sequence[str] = ADE20K_150_CLASSES,
    reduce_labels: bool = True,
    **load_dataset_kwargs: Any,
) -> datasets.Dataset | datasets.DatasetDict:
    """ADE20K-150 from parquet: a Hub dataset name, a local folder of parquet files, or ``data_files``.

    Args:
        path_or_name: Hub dataset name (e.g. a parquet copy of scene_parse_150) or a local folder;
            omit it when giving ``data_files``.
        split: one split as a ``Dataset``; default all splits (names normalised: ``val`` -> ``validation``).
        image_column / annotation_column: the copy's column names for the image and the label map.
        image_id_column: column to use as ``image_id``; default ``"<split>_<row index>"``.
        data_files: local parquet file(s), or ``{split: files}``.
        class_names: names of label ids 0..K-1.
        reduce_labels: the stored maps use 0 = other, k = class k-1 (True for ADE20K copies).
        load_dataset_kwargs: passed to ``datasets.load_dataset`` (``revision``, ``token``, ...).
    """
    if data_files is not None:
        raw = datasets.load_dataset("parquet", data_files=data_files, **load_dataset_kwargs)
    elif path_or_name is not None:
        raw = datasets.load_dataset(str(path_or_name), **load_dataset_kwargs)
    else:
        raise ValueError("give path_or_name (Hub name or local folder) or data_files")
    metadata = ade20k_metadata(class_names, reduce_labels=reduce_labels)
    info = dataset_info(metadata)
    splits = {}
    for name, table in raw.items():
        missing = [c for c in (image_column, annotation_column, image_id_column) if c and c not in table.column_names]
        if missing:
            raise ValueError(f"split {name!r} has no column(s) {missing}; its columns are {table.column_names}; "
                             "set image_column / annotation_column / image_id_column")
        keep = {image_column: "image", annotation_column: "annotation"}
        if image_id_column:
            keep[image_id_column] = "image_id"
        table = table.select_columns(list(keep)).rename_columns(keep)
        if image_id_column:
            table = table.cast_column("image_id", datasets.Value("string"))
        else:
            table = table.add_column("image_id", [f"{name}_{i:08d}" for i in range(len(table))])
        table = table.add_column("segments_info", [[] for _ in range(len(table))])
        table = table.cast(info.features)
        table.info.description = info.description
        splits[SPLIT_ALIASES.get(name, name)] = table
        logger.info("%s/%s: %d images", path_or_name or "parquet", name, len(table))
    return _select(datasets.DatasetDict(splits), split)
