"""load_coco_instances: COCO instance JSON (polygons, RLE, crowd, overlaps) in the shared schema,
checked against pycocotools' own rasterisation."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskformer_hf.data import coco_instances, get_metadata, load_coco_instances
from maskformer_hf.data.transforms import SegmentationTransform


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_loads_the_schema_with_contiguous_thing_labels(coco_instances_root, caplog):
    dataset = load_coco_instances(coco_instances_root / "annotations" / "instances_val2017.json", coco_instances_root / "val2017")
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


def test_overlaps_go_to_the_smallest_non_crowd_instance_as_pycocotools_rasterises_them(coco_instances_root):
    json_path = coco_instances_root / "annotations" / "instances_val2017.json"
    dataset = load_coco_instances(json_path, coco_instances_root / "val2017")
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


def test_masks_are_rasterised_only_when_an_example_is_read(coco_instances_root, monkeypatch):
    calls = []
    original = coco_instances.segmentation_to_mask
    monkeypatch.setattr(coco_instances, "segmentation_to_mask", lambda *a: calls.append(1) or original(*a))
    dataset = load_coco_instances(coco_instances_root / "annotations" / "instances_val2017.json", coco_instances_root / "val2017")
    assert calls == []  # loading stores the polygons / RLE as they are
    assert dataset.data.column("instances").type == "string"
    dataset[1]
    assert len(calls) == 2  # image 2's two instances
    assert dataset.select([1])[0]["annotation"].mode == "I"  # select keeps the lazy transform


def test_transform_and_training_loader(coco_instances_root):
    from maskformer_hf.training import TrainConfig, load_splits

    train, evaluation, metadata = load_splits(TrainConfig(dataset="coco-instances", data_dir=str(coco_instances_root),
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
def test_bad_files_say_what_is_wrong(coco_instances_root, change, message):
    json_path = coco_instances_root / "annotations" / "instances_val2017.json"
    content = json.loads(json_path.read_text())
    change(content)
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_coco_instances(json_path, coco_instances_root / "val2017")
