"""COCO-Stuff (171 classes: 80 things, 91 stuff), semantic PNGs, in either of its two usual layouts.

COCO-Stuff-164k, the official ``stuffthingmaps_trainval2017.zip`` next to the COCO images::

    coco/
      train2017/*.jpg   val2017/*.jpg                       (or images/{train2017,val2017}/)
      stuffthingmaps_trainval2017/{train2017,val2017}/*.png  (value = COCO category id - 1, 255 unlabelled)

COCO-Stuff-10K as MaskFormer's users prepare it (``prepare_coco_stuff_10k_v1.0_sem_seg.py``; the
paper's COCO-Stuff-10K benchmark, 9,000 train / 1,000 test images)::

    coco_stuff_10k/
      images_detectron2/{train,test}/*.jpg
      annotations_detectron2/{train,test}/*.png   (values 0..170 = label ids, 255 unlabelled)

The layout is detected from the folders present. Label ids 0..170 are the classes in ascending COCO
category id (things 1..90, stuff 92..182); ``source_category_ids`` holds those ids. The 164k maps
are used as stored: the metadata's ``label_values`` (id - 1 of each class) maps them to label ids,
any other value (the 11 unused ids, 255) to ``ignore_index``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from .folder import _select, check_split, paired_semantic_splits, require_dir
from .schema import SegmentationMetadata

logger = logging.getLogger(__name__)

# (COCO category id, name) of the 171 classes in label-id order: 80 things (ids 1..90), 91 stuff (92..182).
COCO_STUFF_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
    (92, "banner"), (93, "blanket"), (94, "branch"), (95, "bridge"), (96, "building-other"), (97, "bush"),
    (98, "cabinet"), (99, "cage"), (100, "cardboard"), (101, "carpet"), (102, "ceiling-other"),
    (103, "ceiling-tile"), (104, "cloth"), (105, "clothes"), (106, "clouds"), (107, "counter"),
    (108, "cupboard"), (109, "curtain"), (110, "desk-stuff"), (111, "dirt"), (112, "door-stuff"),
    (113, "fence"), (114, "floor-marble"), (115, "floor-other"), (116, "floor-stone"), (117, "floor-tile"),
    (118, "floor-wood"), (119, "flower"), (120, "fog"), (121, "food-other"), (122, "fruit"),
    (123, "furniture-other"), (124, "grass"), (125, "gravel"), (126, "ground-other"), (127, "hill"),
    (128, "house"), (129, "leaves"), (130, "light"), (131, "mat"), (132, "metal"), (133, "mirror-stuff"),
    (134, "moss"), (135, "mountain"), (136, "mud"), (137, "napkin"), (138, "net"), (139, "paper"),
    (140, "pavement"), (141, "pillow"), (142, "plant-other"), (143, "plastic"), (144, "platform"),
    (145, "playingfield"), (146, "railing"), (147, "railroad"), (148, "river"), (149, "road"), (150, "rock"),
    (151, "roof"), (152, "rug"), (153, "salad"), (154, "sand"), (155, "sea"), (156, "shelf"),
    (157, "sky-other"), (158, "skyscraper"), (159, "snow"), (160, "solid-other"), (161, "stairs"),
    (162, "stone"), (163, "straw"), (164, "structural-other"), (165, "table"), (166, "tent"),
    (167, "textile-other"), (168, "towel"), (169, "tree"), (170, "vegetable"), (171, "wall-brick"),
    (172, "wall-concrete"), (173, "wall-other"), (174, "wall-panel"), (175, "wall-stone"), (176, "wall-tile"),
    (177, "wall-wood"), (178, "water-other"), (179, "waterdrops"), (180, "window-blind"),
    (181, "window-other"), (182, "wood"),
)
COCO_STUFF_THING_IDS: tuple[int, ...] = tuple(range(80))  # the COCO things come first
LAYOUT_164K = {"train2017": "train", "val2017": "validation"}  # folder -> split
LAYOUT_10K = {"train": "train", "test": "test"}


def coco_stuff_metadata(stored_as_category_ids: bool) -> SegmentationMetadata:
    """171 classes; ``stored_as_category_ids``: the maps store COCO id - 1 (164k), else label ids (10K)."""
    ids = tuple(category_id for category_id, _ in COCO_STUFF_CATEGORIES)
    return SegmentationMetadata(
        task="semantic", id2label={i: name for i, (_, name) in enumerate(COCO_STUFF_CATEGORIES)},
        thing_ids=COCO_STUFF_THING_IDS, ignore_index=255, source_category_ids=ids,
        label_values=tuple(i - 1 for i in ids) if stored_as_category_ids else None)


def load_coco_stuff(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """COCO-Stuff -> the shared schema: splits ``train`` and ``validation`` (164k) or ``train`` and
    ``test`` (10K, whose test split is the paper's evaluation set).

    Args:
        root: the COCO folder holding ``stuffthingmaps_trainval2017/`` (164k), or the
            ``coco_stuff_10k`` folder holding ``annotations_detectron2/`` (10K).
        split: one split as a ``Dataset``; default all found.

    A split folder of images without its annotation folder is skipped with a log line; an image
    without its PNG, or a PNG without its image, raises ``ValueError``.
    """
    root = Path(root)
    if (root / "annotations_detectron2").is_dir():
        layout, image_root, label_root = LAYOUT_10K, root / "images_detectron2", root / "annotations_detectron2"
        require_dir(image_root, "the COCO-Stuff-10K images (images_detectron2/{train,test}/)")
    elif (root / "stuffthingmaps_trainval2017").is_dir():
        layout, label_root = LAYOUT_164K, root / "stuffthingmaps_trainval2017"
        image_root = root / "images" if (root / "images" / "train2017").is_dir() or (
            root / "images" / "val2017").is_dir() else root
    else:
        raise ValueError(f"no COCO-Stuff annotations under {root}: expected stuffthingmaps_trainval2017/"
                         "{train2017,val2017}/ (COCO-Stuff-164k) or annotations_detectron2/{train,test}/ "
                         "(COCO-Stuff-10K)")
    check_split(split, list(layout.values()))
    metadata = coco_stuff_metadata(stored_as_category_ids=layout is LAYOUT_164K)
    splits = paired_semantic_splits(layout, image_root, label_root, metadata, split, ".jpg", ".png")
    if not splits:
        raise ValueError(f"no annotation folder {', '.join(layout)} under {label_root}"
                         + (f" for split {split!r}" if split else ""))
    return _select(datasets.DatasetDict(splits), split)
