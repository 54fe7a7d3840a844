"""Segmentation data through ``datasets``: loaders sharing one schema, a synthetic set, augmentation.

Every loader returns a ``datasets.DatasetDict`` of splits (``train``, ``validation``, ...), or one
``datasets.Dataset`` when given ``split=``, with the same columns:

======================  ====================================================================
``image_id``            string: file stem, or COCO's image id
``image``               ``datasets.Image(mode="RGB")``
``annotation``          ``datasets.Image()``, the label map as stored on disk, decoded lazily:
                        semantic data: single-channel class values, 8- or 16-bit (raw; see
                        ``reduce_labels`` and ``label_values``);
                        panoptic data: segment ids, RGB PNG with ``id = R + 256·G + 256²·B``
``segments_info``       list of ``{"id", "label_id", "iscrowd"}`` (panoptic; empty for semantic):
                        ``label_id`` is the contiguous 0-based class, ids not listed are void
======================  ====================================================================

and a :class:`SegmentationMetadata` (``get_metadata(dataset)``): ``task`` ("semantic" /
"panoptic"), ``id2label``, ``thing_ids``, ``ignore_index``, ``reduce_labels`` (annotation value 0 =
unlabelled, k = label k-1, as in ADE20K), ``label_values`` (the stored value of each label id, every
other value ignored, as Cityscapes' labelIds), ``source_category_ids`` (the data set's own ids).
:func:`read_label_map` decodes an ``annotation`` into an int64 array; :func:`read_example` reads one
example, naming its files when one cannot be decoded.

Loaders:

- :func:`load_ade20k` (``ADEChallengeData2016/`` folder), :func:`load_ade20k_parquet` (Hub name or
  local parquet, configurable column names; the Hub's ``scene_parse_150`` is a loading script that
  ``datasets`` >= 4 refuses to run);
- :func:`load_ade20k_panoptic` (MaskFormer's ``ade20k_panoptic_*`` files in ``ADEChallengeData2016/``),
  :func:`load_ade20k_full` (ADE20K-Full, 847 classes, 16-bit TIFFs, ignore 65535);
- :func:`load_coco_panoptic` (official local layout), :func:`load_coco_stuff` (COCO-Stuff-164k or
  -10K, 171 classes);
- :func:`load_cityscapes` (19 classes from the labelIds PNGs), :func:`load_cityscapes_panoptic`
  (cityscapesScripts' COCO-format output);
- :func:`load_mapillary_vistas` (v1.2, 65 classes from ``config.json``);
- :func:`load_coco_instances` (COCO instance JSON, polygons / RLE, masks rasterised lazily; every class a
  thing, overlaps resolved as :mod:`maskformer_hf.data.coco_instances` documents);
- :func:`load_semantic_folder`, :func:`load_panoptic_folder`: custom data, layout in
  :mod:`maskformer_hf.data.folder`;
- :mod:`maskformer_hf.data.synthetic`: ``write_synthetic_dataset`` writes a small deterministic
  panoptic dataset in both the ADE20K and the COCO layouts, read back by the loaders above.

Augmentation and conversion to tensors: :mod:`maskformer_hf.data.transforms`.
"""

from .ade20k import ADE20K_150_CLASSES, load_ade20k, load_ade20k_panoptic, load_ade20k_parquet
from .ade20k_full import load_ade20k_full
from .ade20k_full_classes import ADE20K_FULL_CLASSES
from .cityscapes import CITYSCAPES_CLASSES, load_cityscapes, load_cityscapes_panoptic
from .coco_instances import load_coco_instances
from .coco_panoptic import load_coco_panoptic
from .coco_stuff import COCO_STUFF_CATEGORIES, load_coco_stuff
from .folder import load_panoptic_folder, load_semantic_folder, read_classes_json
from .mapillary_vistas import load_mapillary_vistas
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
    "ADE20K_FULL_CLASSES",
    "CITYSCAPES_CLASSES",
    "COCO_STUFF_CATEGORIES",
    "SegmentationMetadata",
    "get_metadata",
    "id_to_rgb",
    "load_ade20k",
    "load_ade20k_full",
    "load_ade20k_panoptic",
    "load_ade20k_parquet",
    "load_cityscapes",
    "load_cityscapes_panoptic",
    "load_coco_instances",
    "load_coco_panoptic",
    "load_coco_stuff",
    "load_mapillary_vistas",
    "load_panoptic_folder",
    "load_semantic_folder",
    "read_classes_json",
    "read_example",
    "read_label_map",
    "rgb_to_id",
    "segmentation_features",
    "set_metadata",
]
