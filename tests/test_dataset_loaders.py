"""The paper's other data sets (Cityscapes, COCO-Stuff, Mapillary Vistas, ADE20K-Full, ADE20K panoptic):
each loader on a fixture written here in the exact official layout (file names, formats, JSON), the
label ids SegmentationTransform produces pixel for pixel, bad layouts, and ``load_splits``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskformer_hf import MaskFormerImageProcessor
from maskformer_hf.data import (
    ADE20K_150_CLASSES,
    ADE20K_FULL_CLASSES,
    SegmentationMetadata,
    get_metadata,
    id_to_rgb,
    load_ade20k_full,
    load_ade20k_panoptic,
    load_cityscapes,
    load_cityscapes_panoptic,
    load_coco_stuff,
    load_mapillary_vistas,
    read_label_map,
)
from maskformer_hf.data.collate import MaskFormerCollator
from maskformer_hf.data.transforms import SegmentationTransform
from maskformer_hf.training import TrainConfig, load_splits, train_transforms

H, W = 6, 8  # every fixture image


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":  # Mapillary's label PNGs are palettised: the palette index is the label
        image = Image.new("P", (array.shape[1], array.shape[0]))
        image.putdata(array.astype(np.uint8).flatten().tolist())
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _labels(values, seed: int) -> np.ndarray:
    """An (H, W) map holding every value of ``values`` (first pixels) and random ones elsewhere."""
    values = np.asarray(values)
    array = np.random.default_rng(seed).choice(values, size=(H, W))
    array.flat[:len(values)] = values
    return array


# --- Cityscapes -------------------------------------------------------------------------------------
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
CITYSCAPES_FRAMES = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
                     "val": ["frankfurt_000000_000294"], "test": ["berlin_000000_000019"]}
CITYSCAPES_CATEGORIES = [  # createPanopticImgs.py: the labels not ignoreInEval, id = labelId
    {"id": i, "name": n, "supercategory": s, "isthing": int(i >= 24), "color": [i, i, i]}
    for i, n, s in [(7, "road", "flat"), (8, "sidewalk", "flat"), (11, "building", "construction"),
                    (12, "wall", "construction"), (13, "fence", "construction"), (17, "pole", "object"),
                    (19, "traffic light", "object"), (20, "traffic sign", "object"), (21, "vegetation", "nature"),
                    (22, "terrain", "nature"), (23, "sky", "sky"), (24, "person", "human"), (25, "rider", "human"),
                    (26, "car", "vehicle"), (27, "truck", "vehicle"), (28, "bus", "vehicle"),
                    (31, "train", "vehicle"), (32, "motorcycle", "vehicle"), (33, "bicycle", "vehicle")]]


@pytest.fixture()
def cityscapes_root(tmp_path):
    """leftImg8bit + gtFine (labelIds and the other gtFine files), and createPanopticImgs' val output."""
    root = tmp_path / "cityscapes"
    stored = {}
    for n, (folder, frames) in enumerate(CITYSCAPES_FRAMES.items()):
        for k, frame in enumerate(frames):
            city = frame.split("_")[0]
            _jpg(root / "leftImg8bit" / folder / city / f"{frame}_leftImg8bit.png", 10 * n + k)
            label = _labels([0, 1, 4, 7, 26, 33, 255, 24, 21], 10 * n + k).astype(np.uint8)
            stored[frame] = label
            gt = root / "gtFine" / folder / city
            _png(gt / f"{frame}_gtFine_labelIds.png", label)
            _png(gt / f"{frame}_gtFine_color.png", np.zeros((H, W, 3), np.uint8))
            _png(gt / f"{frame}_gtFine_instanceIds.png", np.minimum(label, 33).astype(np.uint16) * 1000)
            (gt / f"{frame}_gtFine_polygons.json").write_text("{}")
    # Panoptic val: road (stuff, id 7), two cars (26001, 26002), a person crowd (24), void (0).
    ids = np.zeros((H, W), np.int64)
    ids[:3] = 7
    ids[3:, :3] = 26001
    ids[3:, 3:5] = 26002
    ids[3:, 5:7] = 24
    frame = "frankfurt_000000_000294"
    _png(root / "gtFine/cityscapes_panoptic_val" / f"{frame}_gtFine_panoptic.png", id_to_rgb(ids))
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0, "area": 24, "bbox": [0, 0, 8, 3]},
                {"id": 26001, "category_id": 26, "iscrowd": 0, "area": 9, "bbox": [0, 3, 3, 3]},
                {"id": 26002, "category_id": 26, "iscrowd": 0, "area": 6, "bbox": [3, 3, 2, 3]},
                {"id": 24, "category_id": 24, "iscrowd": 1, "area": 6, "bbox": [5, 3, 2, 3]}]
    content = {"images": [{"id": frame, "width": W, "height": H, "file_name": f"{frame}_leftImg8bit.png"}],
               "annotations": [{"image_id": frame, "file_name": f"{frame}_gtFine_panoptic.png",
                                "segments_info": segments}],
               "categories": CITYSCAPES_CATEGORIES}
    (root / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps(content, sort_keys=True, indent=4))
    return root, stored, ids


def _cityscapes_train_id(label_ids: np.ndarray) -> np.ndarray:
    lut = np.full(256, 255)
    lut[CITYSCAPES_LABEL_IDS] = np.arange(19)
    return lut[label_ids]


def test_cityscapes(cityscapes_root):
    root, stored, _ = cityscapes_root
    dataset = load_cityscapes(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 3, "validation": 1, "test": 1}
    assert dataset["train"]["image_id"] == CITYSCAPES_FRAMES["train"]
    metadata = get_metadata(dataset["validation"])
    assert metadata.task == "semantic" and metadata.num_labels == 19 and metadata.ignore_index == 255
    assert [metadata.id2label[i] for i in (0, 10, 11, 13, 18)] == ["road", "sky", "person", "car", "bicycle"]
    assert metadata.thing_ids == tuple(range(11, 19)) and not metadata.reduce_labels
    assert metadata.label_values == tuple(CITYSCAPES_LABEL_IDS) == metadata.source_category_ids
    example = dataset["train"][2]
    assert example["image_id"] == "bochum_000000_000313" and example["image"].size == (W, H)
    label_map = SegmentationTransform(metadata)(example)["label_map"]
    assert label_map.flatten()[:9].tolist() == [255, 255, 255, 0, 13, 18, 255, 11, 8]  # 26 -> car 13
    np.testing.assert_array_equal(label_map.numpy(), _cityscapes_train_id(stored["bochum_000000_000313"]))
    np.testing.assert_array_equal(read_label_map(example["annotation"], "semantic"), stored["bochum_000000_000313"])
    assert load_cityscapes(root, split="validation")[0]["image_id"] == "frankfurt_000000_000294"


def test_cityscapes_bad_layouts(cityscapes_root):
    root, _, _ = cityscapes_root
    (root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(ValueError, match="annotations in .*gtFine/train have no image .*aachen_000001_000019_gtFine"):
        load_cityscapes(root)
    (root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match="images in .*leftImg8bit/train have no annotation .*bochum_000000_000313_left"):
        load_cityscapes(root, split="train")
    (root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match="no annotation in .*gtFine/val"):
        load_cityscapes(root, split="validation")
    with pytest.raises(ValueError, match="split 'val' not found"):
        load_cityscapes(root, split="val")
    with pytest.raises(ValueError, match=r"gtFine.*no such folder"):
        load_cityscapes(root / "gtFine")


def test_cityscapes_panoptic(cityscapes_root):
    root, _, ids = cityscapes_root
    dataset = load_cityscapes_panoptic(root)
    assert list(dataset) == ["validation"] and dataset["validation"].num_rows == 1  # no train json here
    metadata = get_metadata(dataset)
    assert metadata.task == "panoptic" and metadata.num_labels == 19
    assert metadata.id2label[13] == "car" and metadata.thing_ids == tuple(range(11, 19))
    assert metadata.source_category_ids == tuple(CITYSCAPES_LABEL_IDS)
    example = dataset["validation"][0]
    assert example["image_id"] == "frankfurt_000000_000294" and example["image"].size == (W, H)
    assert example["segments_info"] == [{"id": 7, "label_id": 0, "iscrowd": False},
                                        {"id": 26001, "label_id": 13, "iscrowd": False},
                                        {"id": 26002, "label_id": 13, "iscrowd": False},
                                        {"id": 24, "label_id": 11, "iscrowd": True}]
    out = SegmentationTransform(metadata)(example)
    np.testing.assert_array_equal(out["label_map"].numpy(), ids)
    assert out["instance_id_to_semantic_id"] == {7: 0, 26001: 13, 26002: 13}
    semantic = SegmentationTransform(metadata, to_semantic=True)(example)["label_map"]
    assert semantic[0].tolist() == [0] * W and semantic[5].tolist() == [13, 13, 13, 13, 13, 255, 255, 255]
    with pytest.raises(ValueError, match="cityscapes_panoptic_"):
        load_cityscapes_panoptic(root, split="train")
    (root / "gtFine/cityscapes_panoptic_val.json").unlink()
    with pytest.raises(ValueError, match="createPanopticImgs"):
        load_cityscapes_panoptic(root)


# --- COCO-Stuff -------------------------------------------------------------------------------------
@pytest.fixture()
def coco_stuff_164k(tmp_path):
    """stuffthingmaps_trainval2017 (value = COCO id - 1) next to train2017/ and val2017/."""
    root = tmp_path / "coco"
    stored = {}
    for n, (folder, stems) in enumerate({"train2017": ["000000000009", "000000000025"],
                                         "val2017": ["000000000139"]}.items()):
        for k, stem in enumerate(stems):
            _jpg(root / folder / f"{stem}.jpg", n * 10 + k)
            # person (id 1), unused id 12, stop sign (13), banner (92), wood (182), unlabelled
            stored[stem] = _labels([0, 11, 12, 91, 181, 255], n * 10 + k).astype(np.uint8)
            _png(root / "stuffthingmaps_trainval2017" / folder / f"{stem}.png", stored[stem])
    return root, stored


def test_coco_stuff_164k(coco_stuff_164k):
    root, stored = coco_stuff_164k
    dataset = load_coco_stuff(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 2, "validation": 1}
    metadata = get_metadata(dataset["train"])
    assert metadata.num_labels == 171 and metadata.thing_ids == tuple(range(80)) and metadata.ignore_index == 255
    assert [metadata.id2label[i] for i in (0, 11, 79, 80, 170)] == ["person", "stop sign", "toothbrush", "banner",
                                                                     "wood"]
    assert metadata.source_category_ids[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)
    assert metadata.source_category_ids[-1] == 182 and metadata.label_values[80] == 91
    example = dataset["validation"][0]
    assert example["image_id"] == "000000000139"
    label_map = SegmentationTransform(metadata)(example)["label_map"]
    assert label_map.flatten()[:6].tolist() == [0, 255, 11, 80, 170, 255]
    lut = np.full(256, 255)
    lut[list(metadata.label_values)] = np.arange(171)
    np.testing.assert_array_equal(label_map.numpy(), lut[stored["000000000139"]])


def test_coco_stuff_10k(tmp_path):
    root = tmp_path / "coco_stuff_10k"
    stems = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000113"]}
    stored = {}
    for n, (folder, names) in enumerate(stems.items()):
        for k, stem in enumerate(names):
            _jpg(root / "images_detectron2" / folder / f"{stem}.jpg", n + k)
            stored[stem] = _labels([0, 80, 170, 255], n + k).astype(np.uint8)
            _png(root / "annotations_detectron2" / folder / f"{stem}.png", stored[stem])
    dataset = load_coco_stuff(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 2, "test": 1}
    metadata = get_metadata(dataset)
    assert metadata.num_labels == 171 and metadata.label_values is None and metadata.id2label[80] == "banner"
    example = dataset["test"][0]
    assert example["image_id"] == "COCO_train2014_000000000113"
    np.testing.assert_array_equal(SegmentationTransform(metadata)(example)["label_map"].numpy(),
                                  stored["COCO_train2014_000000000113"])
    (root / "images_detectron2/train/COCO_train2014_000000000078.jpg").unlink()
    with pytest.raises(ValueError, match="1 of 2 annotations .* have no image .*COCO_train2014_000000000078.png"):
        load_coco_stuff(root)
    with pytest.raises(ValueError, match="stuffthingmaps_trainval2017.*annotations_detectron2"):
        load_coco_stuff(tmp_path)


# --- Mapillary Vistas -------------------------------------------------------------------------------
def _mapillary_config(evaluate_off=()) -> dict:
    """config.json of v1.2: 66 labels in value order, the real first ones, the last "Unlabeled"."""
    first = [("animal--bird", "Bird", True, [165, 42, 42]), ("animal--ground-animal", "Ground Animal", True,
             [0, 192, 0]), ("construction--barrier--curb", "Curb", False, [196, 196, 196])]
    labels = [{"color": c, "instances": i, "readable": r, "name": n, "evaluate": True} for n, r, i, c in first]
    labels += [{"color": [k, k, k], "instances": k % 2 == 0, "readable": f"Label {k}", "name": f"object--label-{k}",
                "evaluate": True} for k in range(3, 63)]
    labels += [{"color": [32, 32, 32], "instances": False, "readable": "Car Mount", "name": "void--car-mount",
                "evaluate": True},
               {"color": [120, 10, 10], "instances": False, "readable": "Ego Vehicle", "name": "void--ego-vehicle",
                "evaluate": True},
               {"color": [0, 0, 0], "instances": False, "readable": "Unlabeled", "name": "void--unlabeled",
                "evaluate": False}]
    for k in evaluate_off:
        labels[k]["evaluate"] = False
    return {"labels": labels, "version": 1.2, "mapping": "public",
            "folder_structure": "{split}/{content}/{key:.{22}}.{ext}"}


@pytest.fixture()
def mapillary_root(tmp_path):
    root = tmp_path / "mapillary_vistas"
    stored = {}
    for n, (folder, keys) in enumerate({"training": ["-0F1qBdlwUD8Kr3GJVhSag", "0035fkbjWljhaftpVM37-g"],
                                        "validation": ["_1Gn_xkw7sa_i9GU4mkxxQ"]}.items()):
        for k, key in enumerate(keys):
            _jpg(root / folder / "images" / f"{key}.jpg", n + k)
            stored[key] = _labels([0, 2, 64, 65, 30], n + k).astype(np.uint8)
            _png(root / folder / "labels" / f"{key}.png", stored[key], mode="P")
            _png(root / folder / "instances" / f"{key}.png", stored[key].astype(np.uint16) * 256)
    _jpg(root / "testing/images/zzz_test_image_000000.jpg", 9)  # no labels: not loaded
    (root / "config.json").write_text(json.dumps(_mapillary_config(), indent=2))
    return root, stored


def test_mapillary_vistas(mapillary_root):
    root, stored = mapillary_root
    assert Image.open(root / "training/labels/0035fkbjWljhaftpVM37-g.png").mode == "P"
    dataset = load_mapillary_vistas(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 2, "validation": 1}
    assert dataset["train"]["image_id"] == ["-0F1qBdlwUD8Kr3GJVhSag", "0035fkbjWljhaftpVM37-g"]
    metadata = get_metadata(dataset)
    assert metadata.num_labels == 65 and metadata.ignore_index == 255 and metadata.label_values == tuple(range(65))
    assert [metadata.id2label[i] for i in (0, 2, 64)] == ["Bird", "Curb", "Ego Vehicle"]
    assert metadata.thing_ids[:3] == (0, 1, 4) and 2 not in metadata.thing_ids and 64 not in metadata.thing_ids
    example = dataset["validation"][0]
    label_map = SegmentationTransform(metadata)(example)["label_map"]
    assert label_map.flatten()[:5].tolist() == [0, 2, 64, 255, 30]  # 65 "Unlabeled" -> ignore
    stored_map = stored["_1Gn_xkw7sa_i9GU4mkxxQ"]
    np.testing.assert_array_equal(label_map.numpy(), np.where(stored_map == 65, 255, stored_map))
    # A label with evaluate: false in the middle is ignored and the later ones move down.
    (root / "config.json").write_text(json.dumps(_mapillary_config(evaluate_off=[2])))
    metadata = get_metadata(load_mapillary_vistas(root, split="validation"))
    assert metadata.num_labels == 64 and metadata.id2label[2] == "Label 3"
    label_map = SegmentationTransform(metadata)(example)["label_map"]
    assert label_map.flatten()[:5].tolist() == [0, 255, 63, 255, 29]


def test_mapillary_vistas_bad_layouts(mapillary_root):
    root, _ = mapillary_root
    (root / "training/images/0035fkbjWljhaftpVM37-g.jpg").unlink()
    with pytest.raises(ValueError, match="have no image .*training/labels/0035fkbjWljhaftpVM37-g.png"):
        load_mapillary_vistas(root)
    (root / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_mapillary_vistas(root)


# --- ADE20K-Full ------------------------------------------------------------------------------------
@pytest.fixture()
def ade20k_full_root(tmp_path):
    """images_detectron2 + annotations_detectron2 with 16-bit TIFFs (65535 = unlabelled)."""
    root = tmp_path / "ADE20K_2021_17_01"
    stored = {}
    for n, (folder, stems) in enumerate({"training": ["ADE_train_00000001", "ADE_train_00000002"],
                                         "validation": ["ADE_val_00000001"]}.items()):
        for k, stem in enumerate(stems):
            _jpg(root / "images_detectron2" / folder / f"{stem}.jpg", n + k)
            stored[stem] = _labels([0, 255, 256, 700, 846, 65535], n + k).astype(np.uint16)
            _png(root / "annotations_detectron2" / folder / f"{stem}.tif", stored[stem])
    return root, stored


def test_ade20k_full(ade20k_full_root):
    root, stored = ade20k_full_root
    assert Image.open(root / "annotations_detectron2/validation/ADE_val_00000001.tif").mode == "I;16"
    dataset = load_ade20k_full(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 2, "validation": 1}
    metadata = get_metadata(dataset)
    assert metadata.num_labels == 847 == len(ADE20K_FULL_CLASSES) and metadata.ignore_index == 65535
    assert metadata.id2label[0] == "wall" and metadata.id2label[14] == "car, auto, automobile, machine, motorcar"
    assert metadata.id2label[846] == "adding machine, totalizer, totaliser" and metadata.source_category_ids[0] == 2978
    assert len(set(metadata.source_category_ids)) == 847
    example = dataset["validation"][0]
    assert example["image_id"] == "ADE_val_00000001"
    out = SegmentationTransform(metadata)(example)
    assert out["label_map"].flatten()[:6].tolist() == [0, 255, 256, 700, 846, 65535]  # 255 is a class here
    np.testing.assert_array_equal(out["label_map"].numpy(), stored["ADE_val_00000001"].astype(np.int64))
    # The collator turns every class (255 and 700 included) into a mask, and 65535 into none.
    processor = MaskFormerImageProcessor(do_resize=False, num_labels=847, ignore_index=metadata.ignore_index)
    batch = MaskFormerCollator(processor, metadata.ignore_index)([out])
    assert batch["class_labels"][0].tolist() == [0, 255, 256, 700, 846]
    covered = batch["mask_labels"][0].sum(0)[:H, :W]
    assert torch.equal(covered == 0, out["label_map"] == 65535)
    (root / "annotations_detectron2/training/ADE_train_00000002.tif").unlink()
    with pytest.raises(ValueError, match="1 of 2 images .* have no annotation .*ADE_train_00000002.jpg"):
        load_ade20k_full(root)
    with pytest.raises(ValueError, match="images_detectron2"):
        load_ade20k_full(root / "annotations_detectron2")


# --- ADE20K panoptic --------------------------------------------------------------------------------
ADE_THINGS = {7, 12, 14, 15, 19, 20}  # bed, person, door, table, chair, car: things in the fixture


@pytest.fixture()
def ade20k_panoptic_root(tmp_path):
    """prepare_ade20k_pan_seg.py's output inside ADEChallengeData2016, with the images it reads."""
    root = tmp_path / "ADEChallengeData2016"
    categories = [{"name": name, "id": i, "isthing": int(i in ADE_THINGS), "color": [i, 0, 0]}
                  for i, name in enumerate(ADE20K_150_CLASSES)]
    ids = np.zeros((H, W), np.int64)
    ids[:, :4] = 120  # wall, stuff, category 0
    ids[:, 4:6] = 5_000_012  # a person
    ids[:3, 6:] = 700_020  # a car; the rest is void
    for name, folder, stems in (("train", "training", ["ADE_train_00000001", "ADE_train_00000002"]),
                                ("val", "validation", ["ADE_val_00000001"])):
        annotations = []
        for k, stem in enumerate(stems):
            _jpg(root / "images" / folder / f"{stem}.jpg", k)
            _png(root / f"ade20k_panoptic_{name}" / f"{stem}.png", id_to_rgb(ids))
            annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": [
                {"id": 120, "category_id": 0, "area": 24, "bbox": [0, 0, 4, 6], "iscrowd": 0},
                {"id": 5_000_012, "category_id": 12, "area": 12, "bbox": [4, 0, 2, 6], "iscrowd": 0},
                {"id": 700_020, "category_id": 20, "area": 6, "bbox": [6, 0, 2, 3], "iscrowd": 0}]})
        content = {"images": [{"id": s, "file_name": f"{s}.jpg", "width": W, "height": H} for s in stems],
                   "annotations": annotations, "categories": categories}
        (root / f"ade20k_panoptic_{name}.json").write_text(json.dumps(content))
    return root, ids


def test_ade20k_panoptic(ade20k_panoptic_root):
    root, ids = ade20k_panoptic_root
    dataset = load_ade20k_panoptic(root)
    assert {k: v.num_rows for k, v in dataset.items()} == {"train": 2, "validation": 1}
    metadata = get_metadata(dataset)
    assert metadata.task == "panoptic" and metadata.num_labels == 150 and metadata.thing_ids == tuple(sorted(ADE_THINGS))
    assert metadata.id2label[0] == "wall" and metadata.id2label[149] == "flag"
    example = dataset["train"][1]
    assert example["image_id"] == "ADE_train_00000002"
    out = SegmentationTransform(metadata)(example)
    np.testing.assert_array_equal(out["label_map"].numpy(), ids)
    assert out["instance_id_to_semantic_id"] == {120: 0, 5_000_012: 12, 700_020: 20}
    (root / "ade20k_panoptic_val").rename(root / "elsewhere")
    with pytest.raises(ValueError, match="ade20k_panoptic_val.*no such folder"):
        load_ade20k_panoptic(root)


# --- the schema field and the training entry point --------------------------------------------------
def test_label_values_validation_and_round_trip():
    metadata = SegmentationMetadata(task="semantic", id2label={0: "a", 1: "b"}, label_values=[7, 300])
    assert metadata.label_values == (7, 300)
    assert SegmentationMetadata.from_dict(json.loads(json.dumps(metadata.to_dict()))) == metadata
    assert SegmentationMetadata.from_dict({"task": "semantic", "id2label": {"0": "a"}}).label_values is None
    for bad, match in (({"label_values": [7]}, "2 entries"), ({"label_values": [7, 7]}, "distinct"),
                       ({"label_values": [7, 8], "reduce_labels": True}, "reduce_labels=False")):
        with pytest.raises(ValueError, match=match):
            SegmentationMetadata(task="semantic", id2label={0: "a", 1: "b"}, **bad)
    # Values beyond every stored value (16-bit and more) are ignored, not an error.
    transform = SegmentationTransform(metadata)
    example = {"image": Image.new("RGB", (4, 1)), "annotation": np.array([[7, 300, 8, 70000]])}
    assert transform(example)["label_map"].tolist() == [[0, 1, 255, 255]]


@pytest.mark.parametrize("name", ["cityscapes", "cityscapes-panoptic", "coco-stuff", "mapillary-vistas",
                                  "ade20k-full", "ade20k-panoptic"])
def test_load_splits(name, request):
    fixture = {"cityscapes": "cityscapes_root", "cityscapes-panoptic": "cityscapes_root",
               "coco-stuff": "coco_stuff_164k", "mapillary-vistas": "mapillary_root", "ade20k-full": "ade20k_full_root",
               "ade20k-panoptic": "ade20k_panoptic_root"}[name]
    root = request.getfixturevalue(fixture)[0]
    train_split = "validation" if name == "cityscapes-panoptic" else "train"  # the fixture has only its val json
    train, evaluation, metadata = load_splits(TrainConfig(dataset=name, data_dir=str(root), train_split=train_split))
    assert evaluation.num_rows == 1 and metadata == get_metadata(evaluation)
    num_labels = {"cityscapes": 19, "cityscapes-panoptic": 19, "coco-stuff": 171, "mapillary-vistas": 65,
                  "ade20k-full": 847, "ade20k-panoptic": 150}[name]
    assert metadata.num_labels == num_labels


@pytest.mark.parametrize("recipe, crop, short_sides, max_size", [
    ("cityscapes-resnet101", [512, 1024], (512, 2048), 4096),
    ("mapillary-vistas-resnet50", 1280, (1024, 4096), 8192),
    ("coco-stuff-10k-resnet50", 640, (320, 960), 2560),
    ("ade20k-full-resnet50", 512, (256, 1024), 2048),
    ("ade20k-panoptic-resnet50", 640, (320, 1280), 2560),
])
def test_recipe_augmentation_follows_the_paper(recipe, crop, short_sides, max_size):
    config = TrainConfig.from_file(recipe, data_dir="/somewhere")
    assert config.crop_size == crop
    resize, random_crop = train_transforms(config).transforms[:2]
    assert (min(resize.min_size), max(resize.min_size)) == short_sides and resize.max_size == max_size
    assert list(random_crop.size) == ([crop, crop] if isinstance(crop, int) else crop)
    torch.manual_seed(0)
    image = torch.zeros(3, 40, 90, dtype=torch.uint8)
    small = train_transforms(TrainConfig(crop_size=[16, 32], min_scale=0.5, max_scale=0.5))
    assert small(image).shape == (3, 16, 32)
