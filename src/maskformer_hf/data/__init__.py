"""Segmentation data through ``datasets``: loaders sharing one schema, a synthetic set, augmentation.

Every loader returns a ``datasets.DatasetDict`` of splits (``train``, ``validation``, ...), or one
``datasets.Dataset`` when given ``split=``, with the same columns:

======================  ====================================================================
``image_id``            string: file stem, or COCO's image id
``image``               ``datasets.Image(mode="RGB")``
``annotation``          ``datasets.Image()``, the label map as stored on disk, decoded lazily:
                        semantic data: single-channel class values (raw; see ``reduce_labels``);
                        panoptic data: segment ids, RGB PNG with ``id = R + 256·G + 256²·B``
``segments_info``       list of ``{"id", "label_id", "iscrowd"}`` (panoptic; empty for semantic):
                        ``label_id`` is the contiguous 0-based class, ids not listed are void
======================  ====================================================================

and a :class:`SegmentationMetadata` (``get_metadata(dataset)``): ``task`` ("semantic" /
"panoptic"), ``id2label``, ``thing_ids``, ``ignore_index``, ``reduce_labels`` (annotation value 0 =
unlabelled, k = label k-1, as in ADE20K), ``source_category_ids`` (COCO ids). :func:`read_label_map`
decodes an ``annotation`` into an int64 array; :func:`read_example` reads one example, naming its
files when one cannot be decoded.

Loaders:

- :func:`load_ade20k` (``ADEChallengeData2016/`` folder), :func:`load_ade20k_parquet` (Hub name or
  local parquet, configurable column names; the Hub's ``scene_parse_150`` is a loading script that
  ``datasets`` >= 4 refuses to run);
- :func:`load_coco_panoptic` (official local layout);
- :func:`load_coco_instances` (COCO instance JSON, polygons / RLE, masks rasterised lazily; every class a
  thing, overlaps resolved as :mod:`maskformer_hf.data.coco_instances` documents);
- :func:`load_semantic_folder`, :func:`load_panoptic_folder`: custom data, layout in
  :mod:`maskformer_hf.data.folder`;
- :mod:`maskformer_hf.data.synthetic`: ``write_synthetic_dataset`` writes a small deterministic
  panoptic dataset in both the ADE20K and the COCO layouts, read back by the loaders above.

Augmentation and conversion to tensors: :mod:`maskformer_hf.data.transforms`.
"""

from .ade20k import ADE20K_150_CLASSES, load_ade20k, load_ade20k_parquet
from .coco_instances import load_coco_instances
from .coco_panoptic import load_coco_panoptic
from .folder import load_panoptic_folder, load_semantic_folder, read_classes_json
from .schema import (
    SegmentationMetadata,
    get_metadata,
    id_to_rgb,
    read_example,
    read_label_map,
    rgb_to_id,
    segmentation_features,
    set_metadata,
)

__all__ = [
    "ADE20K_150_CLASSES",
    "SegmentationMetadata",
    "get_metadata",
    "id_to_rgb",
    "load_ade20k",
    "load_ade20k_parquet",
    "load_coco_instances",
    "load_coco_panoptic",
    "load_panoptic_folder",
    "load_semantic_folder",
    "read_classes_json",
    "read_example",
    "read_label_map",
    "rgb_to_id",
    "segmentation_features",
    "set_metadata",
]
