"""load_coco_instances: COCO instance JSON (polygons, RLE, crowd, overlaps) in the shared schema,
checked against pycocotools' own rasterisation."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskformer_hf.data import coco_instances, get_metadata, load_coco_instances
from maskformer_hf.data.transforms import SegmentationTransform


def _rectangle(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_root(tmp_path):
    """The COCO layout: annotations/instances_val2017.json + val2017/*.jpg, with every kind of segmentation."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    sizes = {1: (40, 60), 2: (32, 32), 3: (24, 30), 4: (20, 20)}  # id -> (height, width); image 4's file is missing
    for image_id, (h, w) in sizes.items():
        if image_id != 4:
            Image.new("RGB", (w, h), (image_id * 40, 0, 0)).save(tmp_path / "val2017" / f"{image_id:012d}.jpg")
    crowd = np.zeros((40, 60), dtype=np.uint8, order="F")
    crowd[25:38, 2:30] = 1
    uncompressed = {"size": [40, 60], "counts": []}  # COCO's crowd format: uncompressed RLE, column-major runs
    flat, value, run = crowd.flatten(order="F"), 0, 0
    for pixel in flat:
        if pixel != value:
            uncompressed["counts"].append(run)
            value, run = pixel, 0
        run += 1
    uncompressed["counts"].append(run)
    blob = np.zeros((32, 32), dtype=np.uint8, order="F")
    blob[4:20, 6:28] = 1
    compressed = mask_utils.encode(blob)
    compressed["counts"] = compressed["counts"].decode()
    annotations = [
        # image 1: a big box with a small one inside (overlap), a third box elsewhere, one crowd region
        {"id": 10, "image_id": 1, "category_id": 18, "segmentation": _rectangle(5, 5, 50, 30), "area": 1125.0,
         "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": _rectangle(20, 10, 30, 20), "area": 100.0,
         "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": _rectangle(40, 32, 58, 39), "area": 126.0,
         "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 1, "segmentation": uncompressed, "area": float(crowd.sum()),
         "iscrowd": 1},
        # image 2: a compressed RLE and a two-polygon instance
        {"id": 20, "image_id": 2, "category_id": 44, "segmentation": compressed, "area": float(blob.sum()),
         "iscrowd": 0},
        {"id": 21, "image_id": 2, "category_id": 18,
         "segmentation": _rectangle(1, 22, 8, 30) + _rectangle(20, 24, 30, 30), "area": 116.0, "iscrowd": 0},
        {"id": 40, "image_id": 4, "category_id": 1, "segmentation": _rectangle(1, 1, 5, 5), "area": 16.0,
         "iscrowd": 0},
    ]  # image 3 has no annotation
    content = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i, (h, w) in sizes.items()],
        "categories": [{"id": 44, "name": "bottle", "supercategory": "kitchen"},
                       {"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": annotations,
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    return tmp_path


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_loads_the_schema_with_contiguous_thing_labels(coco_root, caplog):
    dataset = load_coco_instances(coco_root / "annotations" / "instances_val2017.json", coco_root / "val2017")
    assert "000000000004.jpg" in caplog.text  # the missing file is named, its image dropped
    assert dataset.split == "validation"
    assert dataset["image_id"] == ["1", "2", "3"]
    metadata = get_metadata(dataset)
    assert metadata.task == "panoptic"
    assert metadata.id2label == {0: "person", 1: "dog", 2: "bottle"}  # ascending COCO id: 1, 18, 44
    assert metadata.source_category_ids == (1, 18, 44)
    assert metadata.thing_ids == (0, 1, 2)
    assert metadata.extra == {"instances": "coco"}
    first = dataset[0]
    assert first["segments_info"] == [{"id": 1, "label_id": 1, "iscrowd": False},
                                      {"id": 2, "label_id": 0, "iscrowd": False},
                                      {"id": 3, "label_id": 0, "iscrowd": False},
                                      {"id": 4, "label_id": 0, "iscrowd": True}]
    assert dataset[2]["segments_info"] == [] and np.asarray(dataset[2]["annotation"]).max() == 0
    assert set(first) == {"image_id", "image", "annotation", "segments_info"}


def test_overlaps_go_to_the_smallest_non_crowd_instance_as_pycocotools_rasterises_them(coco_root):
    json_path = coco_root / "annotations" / "instances_val2017.json"
    dataset = load_coco_instances(json_path, coco_root / "val2017")
    coco = _coco(json_path)
    for row, image_id in enumerate((1, 2)):
        annotations = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)), key=lambda a: a["id"])
        masks = [coco.annToMask(a).astype(bool) for a in annotations]
        expected = np.zeros(masks[0].shape, dtype=np.int64)
        # by hand: crowd first, then larger areas, so that the smallest non-crowd instance is painted last
        for rank in sorted(range(len(annotations)), key=lambda k: (not annotations[k]["iscrowd"],
                                                                     -annotations[k]["area"])):
            expected[masks[rank]] = rank + 1
        segment_map = np.asarray(dataset[row]["annotation"]).astype(np.int64)
        np.testing.assert_array_equal(segment_map, expected)
        assert len(np.unique(segment_map)) == len(annotations) + 1  # every instance keeps some pixels
        # the original overlapping masks, for mask AP
        reference = coco_instances.read_instances(dataset.with_format(None, columns=["instances"]), row)
        np.testing.assert_array_equal(reference["masks"], np.stack(masks))
        np.testing.assert_array_equal(reference["area"], [a["area"] for a in annotations])
        np.testing.assert_array_equal(reference["iscrowd"], [bool(a["iscrowd"]) for a in annotations])
    # the small box (id 2) sits inside the big one (id 1): the big one keeps the rest of its box
    segment_map = np.asarray(dataset[0]["annotation"])
    assert segment_map[15, 25] == 2 and segment_map[8, 10] == 1


def test_masks_are_rasterised_only_when_an_example_is_read(coco_root, monkeypatch):
    calls = []
    original = coco_instances.segmentation_to_mask
    monkeypatch.setattr(coco_instances, "segmentation_to_mask", lambda *a: calls.append(1) or original(*a))
    dataset = load_coco_instances(coco_root / "annotations" / "instances_val2017.json", coco_root / "val2017")
    assert calls == []  # loading stores the polygons / RLE as they are
    assert dataset.data.column("instances").type == "string"
    dataset[1]
    assert len(calls) == 2  # image 2's two instances
    assert dataset.select([1])[0]["annotation"].mode == "I"  # select keeps the lazy transform


def test_transform_and_training_loader(coco_root):
    from maskformer_hf.training import TrainConfig, load_splits

    train, evaluation, metadata = load_splits(TrainConfig(dataset="coco-instances", data_dir=str(coco_root),
                                                          train_split="validation"))
    assert len(train) == len(evaluation) == 3
    out = SegmentationTransform(metadata, drop_crowd=True)(train[0])
    assert out["instance_id_to_semantic_id"] == {1: 1, 2: 0, 3: 0}
    assert 4 not in out["label_map"].unique().tolist()  # crowd became void


@pytest.mark.parametrize("change, message", [
    (lambda c: c["annotations"][0].update(category_id=99), "category_id 99 is not in 'categories'"),
    (lambda c: c["annotations"][4]["segmentation"].update(size=[10, 10]), "RLE size [10, 10]"),
    (lambda c: c["annotations"][1].update(segmentation=[[1, 2, 3]]), "at least 3 (x, y) pairs"),
    (lambda c: c["annotations"][1].update(image_id=777), "refer to image ids not in 'images'"),
    (lambda c: c.pop("categories"), "not a COCO instance file"),
])
def test_bad_files_say_what_is_wrong(coco_root, change, message):
    json_path = coco_root / "annotations" / "instances_val2017.json"
    content = json.loads(json_path.read_text())
    change(content)
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_coco_instances(json_path, coco_root / "val2017")
