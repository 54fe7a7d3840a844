"""The one schema every loader of :mod:`maskformer_hf.data` returns, and its dataset-level metadata.

Columns (``datasets.Features``, see :func:`segmentation_features`):

- ``image_id`` (string): the file stem, or COCO's image id as a string.
- ``image`` (``datasets.Image(mode="RGB")``): decoded as an RGB PIL image.
- ``annotation`` (``datasets.Image()``): the label map exactly as stored on disk, decoded lazily.
  Semantic datasets: a single-channel map of class values (raw: see ``reduce_labels`` and
  ``label_values``; 8- or 16-bit, so 847 ADE20K-Full classes fit).
  Panoptic datasets: a segment-id map, RGB PNGs encoding ``id = R + 256·G + 256²·B`` (COCO) —
  lossless, ids above 255 included. :func:`read_label_map` turns either into an int64 array.
- ``segments_info`` (list of ``{"id": int64, "label_id": ClassLabel, "iscrowd": bool}``): one entry
  per segment of a panoptic annotation (empty for semantic datasets); ``label_id`` is the
  contiguous 0-based class; pixels whose id is not listed are void (COCO and every loader here
  write void as id 0 and never list id 0).

Dataset-level facts live in :class:`SegmentationMetadata`, stored as JSON in
``dataset.info.description`` (it survives ``map``/``filter``/``select``/``save_to_disk``) and read
back with :func:`get_metadata`; class names are also in the ``label_id`` ClassLabel feature.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import datasets
import numpy as np
from PIL import Image

TASKS = ("semantic", "panoptic")
_METADATA_KEY = "maskformer_hf_metadata"
AnyDataset = Union[datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict]


@dataclass(frozen=True)
class SegmentationMetadata:
    """What a model and a metric need to know about a segmentation dataset."""

    task: str  # "semantic" (annotation = class values) or "panoptic" (annotation = segment ids + segments_info)
    id2label: dict[int, str]  # contiguous 0-based label ids -> class names
    thing_ids: tuple[int, ...] = ()  # label ids of countable "thing" classes; every other label is "stuff"
    ignore_index: int = 255  # label of ignored pixels in a (reduced) semantic map
    reduce_labels: bool = False  # semantic annotation stores 0 = unlabelled and k = label k - 1 (ADE20K)
    source_category_ids: tuple[int, ...] | None = None  # dataset's own id of each label (COCO), for export
    # semantic data: the stored annotation value of each label id (Cityscapes' labelIds 7, 8, 11, ...);
    # every other stored value is ignore_index. None: the stored values are the label ids (after reduce_labels).
    label_values: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, JSON-serialisable

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "id2label", {int(k): str(v) for k, v in self.id2label.items()})
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"id2label keys must be 0..K-1, got {sorted(self.id2label)[:10]}...")
        object.__setattr__(self, "thing_ids", tuple(sorted(int(i) for i in self.thing_ids)))
        bad = [i for i in self.thing_ids if i not in self.id2label]
        if bad:
            raise ValueError(f"thing_ids must be label ids in [0, {self.num_labels}), got {bad}")
        if 0 <= self.ignore_index < self.num_labels:
            raise ValueError(f"ignore_index={self.ignore_index} collides with a label id (K={self.num_labels})")
        if self.label_values is not None:
            object.__setattr__(self, "label_values", tuple(int(v) for v in self.label_values))
            if self.task != "semantic" or self.reduce_labels:
                raise ValueError("label_values maps stored values of semantic data; it needs task='semantic' and "
                                 f"reduce_labels=False (got task={self.task!r}, reduce_labels={self.reduce_labels})")
            if len(self.label_values) != self.num_labels:
                raise ValueError(f"label_values needs {self.num_labels} entries (one stored value per label id), "
                                 f"got {len(self.label_values)}")
            if len(set(self.label_values)) != len(self.label_values) or min(self.label_values, default=0) < 0:
                raise ValueError(f"label_values must be distinct non-negative values, got {self.label_values[:10]}...")
        if self.source_category_ids is not None:
            object.__setattr__(self, "source_category_ids", tuple(int(i) for i in self.source_category_ids))
            if len(self.source_category_ids) != self.num_labels:
                raise ValueError(f"source_category_ids needs {self.num_labels} entries, "
                                 f"got {len(self.source_category_ids)}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i in self.id2label if i not in set(self.thing_ids))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SegmentationMetadata":
        values = dict(values)
        values["id2label"] = {int(k): v for k, v in values["id2label"].items()}
        return cls(**values)


def segmentation_features(class_names: Sequence[str]) -> datasets.Features:
    """The shared ``datasets.Features``; ``class_names`` name label ids 0..K-1."""
    return datasets.Features({
        "image_id": datasets.Value("string"),
        "image": datasets.Image(mode="RGB"),
        "annotation": datasets.Image(),
        "segments_info": datasets.List({
            "id": datasets.Value("int64"),
            "label_id": datasets.ClassLabel(names=list(class_names)),
            "iscrowd": datasets.Value("bool"),
        }),
    })


def dataset_info(metadata: SegmentationMetadata) -> datasets.DatasetInfo:
    """A ``DatasetInfo`` carrying the features and the metadata, for ``Dataset.from_dict(..., info=)``."""
    features = segmentation_features([metadata.id2label[i] for i in range(metadata.num_labels)])
    return datasets.DatasetInfo(description=json.dumps({_METADATA_KEY: metadata.to_dict()}), features=features)


def set_metadata(dataset: AnyDataset, metadata: SegmentationMetadata) -> AnyDataset:
    """Store ``metadata`` on ``dataset`` (every split of a DatasetDict), in place; returns the dataset."""
    splits = dataset.values() if isinstance(dataset, dict) else [dataset]
    for split in splits:
        split.info.description = json.dumps({_METADATA_KEY: metadata.to_dict()})
    return dataset


def get_metadata(dataset: AnyDataset) -> SegmentationMetadata:
    """The :class:`SegmentationMetadata` of a dataset built by a loader here (or given :func:`set_metadata`)."""
    if isinstance(dataset, dict):
        if not dataset:
            raise ValueError("get_metadata: the DatasetDict has no split")
        dataset = next(iter(dataset.values()))
    info = getattr(dataset, "info", None)
    if info is None:
        raise TypeError(f"get_metadata expects a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    try:
        return SegmentationMetadata.from_dict(json.loads(info.description or "")[_METADATA_KEY])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError("this dataset carries no maskformer_hf metadata: build it with a loader of "
                         "maskformer_hf.data or attach it with set_metadata(dataset, SegmentationMetadata(...)); "
                         "note that push_to_hub / to_parquet drop it") from None


def read_example(dataset: Any, index: int) -> dict[str, Any]:
    """``dataset[index]``, decoded; a file that cannot be decoded (missing, truncated, not an image)
    raises a ``ValueError`` naming the example's ``image_id`` and its files instead of PIL's bare
    ``OSError``."""
    try:
        return dataset[index]
    except (OSError, SyntaxError, ValueError) as error:  # PIL: OSError (truncated, unidentified), SyntaxError
        files = []
        for column in ("image", "annotation"):
            try:
                raw = dataset.cast_column(column, datasets.Image(decode=False))[index][column]
                files.append(raw.get("path") or f"<{len(raw.get('bytes') or b'')} bytes>")
            except Exception:  # noqa: BLE001 -- best effort: the message is what matters
                continue
        try:
            image_id = dataset.select_columns(["image_id"])[index]["image_id"]
        except Exception:  # noqa: BLE001
            image_id = "?"
        raise ValueError(f"example {index} (image_id {image_id}, files {', '.join(map(str, files)) or '?'}): "
                         f"could not be decoded ({type(error).__name__}: {error})") from error


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic decoding ``id = R + 256·G + 256²·B``: `(H, W, 3)` uint8 -> `(H, W)` int64."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_id expects an (H, W, 3) array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: `(H, W)` ints in ``[0, 2^24)`` -> `(H, W, 3)` uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError(f"segment ids must lie in [0, 2^24) to fit an RGB PNG, got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_label_map(annotation: Any, task: str) -> np.ndarray:
    """Decode an ``annotation`` value into an `(H, W)` int64 array.

    Args:
        annotation: a PIL image (what the ``annotation`` column decodes to) or a numpy array.
        task: ``"semantic"``: single-channel class values (modes L, P, I, I;16; an RGB image whose
            three channels are equal is accepted). ``"panoptic"``: RGB -> ``R + 256·G + 256²·B``;
            single-channel images are taken as ids directly.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if isinstance(annotation, Image.Image):
        if annotation.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "RGB"):
            raise ValueError(f"annotation image mode must be L, P, I, I;16 or RGB, got {annotation.mode}")
        array = np.asarray(annotation)
    elif isinstance(annotation, np.ndarray):
        array = annotation
    else:
        raise TypeError(f"annotation must be a PIL image or a numpy array, got {type(annotation).__name__}")
    if array.ndim == 2:
        return array.astype(np.int64)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"annotation must be (H, W) or (H, W, 3), got shape {array.shape}")
    if task == "panoptic":
        return rgb_to_id(array)
    if not ((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()):
        raise ValueError("a semantic annotation must hold one class value per pixel (a single-channel PNG); "
                         "got an RGB image with differing channels (a colour-coded mask?)")
    return array[..., 0].astype(np.int64)
