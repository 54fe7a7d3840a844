"""Loaders on fixtures in the exact on-disk layouts, the synthetic generator, and the transforms."""

from __future__ import annotations

import json
import re
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from maskformer_hf.data import (
    ADE20K_150_CLASSES,
    SegmentationMetadata,
    get_metadata,
    id_to_rgb,
    load_ade20k,
    load_ade20k_parquet,
    load_coco_panoptic,
    load_panoptic_folder,
    load_semantic_folder,
    read_label_map,
    rgb_to_id,
    segmentation_features,
    set_metadata,
)
from maskformer_hf.data.synthetic import CLASS_NAMES, THING_IDS, main as synthetic_main, write_synthetic_dataset
from maskformer_hf.data.transforms import (
    RandomSizeCrop,
    SegmentationTransform,
    ade20k_train_transforms,
    coco_panoptic_train_transforms,
)

SCHEMA = ["image_id", "image", "annotation", "segments_info"]


def _image(rng, h, w, mode="RGB"):
    array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


@pytest.fixture()
def ade_root(tmp_path):
    """ADEChallengeData2016 in the official layout: jpg images (one grayscale), mode-L PNG annotations."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ADEChallengeData2016"
    for split, stems in (("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                         ("validation", ["ADE_val_00000001"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for n, stem in enumerate(stems):
            _image(rng, 20, 30, "L" if n == 1 else "RGB").save(root / "images" / split / f"{stem}.jpg")
            label = rng.integers(0, 151, (20, 30)).astype(np.uint8)
            label[0, :3] = [0, 1, 150]
            Image.fromarray(label, mode="L").save(root / "annotations" / split / f"{stem}.png")
    return root


def test_ade20k_folder(ade_root):
    dataset = load_ade20k(ade_root)
    assert set(dataset) == {"train", "validation"}
    assert dataset["train"].num_rows == 2 and dataset["validation"].num_rows == 1
    assert dataset["train"].column_names == SCHEMA
    assert dataset["train"].features == segmentation_features(ADE20K_150_CLASSES)
    metadata = get_metadata(dataset["validation"])
    assert metadata.task == "semantic" and metadata.reduce_labels and metadata.num_labels == 150
    assert metadata.id2label[0] == "wall" and metadata.id2label[149] == "flag"
    example = dataset["train"][1]
    assert example["image_id"] == "ADE_train_00000002" and example["image"].mode == "RGB"  # grayscale jpg -> RGB
    stored = np.asarray(Image.open(ade_root / "annotations/training/ADE_train_00000002.png"))
    np.testing.assert_array_equal(read_label_map(example["annotation"], "semantic"), stored)
    out = SegmentationTransform(metadata)(example)
    assert out["label_map"][0, :3].tolist() == [255, 0, 149]  # 0 -> ignore, k -> k - 1
    np.testing.assert_array_equal(out["label_map"].numpy(), np.where(stored == 0, 255, stored.astype(int) - 1))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 20, 30)
    assert out["segments_info"] == [] and out["instance_id_to_semantic_id"] is None
    assert load_ade20k(ade_root, split="validation").num_rows == 1


def test_ade20k_parquet_with_custom_column_names(ade_root, tmp_path):
    rows = {"img": [], "seg": [], "filename": [], "scene": []}
    for path in sorted((ade_root / "images/training").glob("*.jpg")):
        rows["img"].append(str(path))
        rows["seg"].append(str(ade_root / "annotations/training" / f"{path.stem}.png"))
        rows["filename"].append(path.stem)
        rows["scene"].append("kitchen")
    features = datasets.Features({"img": datasets.Image(), "seg": datasets.Image(),
                                  "filename": datasets.Value("string"), "scene": datasets.Value("string")})
    table = datasets.Dataset.from_dict(rows, features=features)
    folder = tmp_path / "parquet_copy"
    folder.mkdir()
    table.to_parquet(str(folder / "train.parquet"))  # embeds the image bytes
    table.select([0]).to_parquet(str(folder / "validation.parquet"))
    loaded = load_ade20k_parquet(data_files={"train": str(folder / "train.parquet"), "val": str(folder / "validation.parquet")},
                                 image_column="img", annotation_column="seg", image_id_column="filename",
                                 cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"} and loaded["train"].column_names == SCHEMA
    example = loaded["train"][0]
    assert example["image_id"] == "ADE_train_00000001" and example["image"].mode == "RGB"
    stored = np.asarray(Image.open(ade_root / "annotations/training/ADE_train_00000001.png"))
    np.testing.assert_array_equal(read_label_map(example["annotation"], "semantic"), stored)
    assert get_metadata(loaded).reduce_labels
    # The "by name" route: a folder (or Hub name) whose files name the splits; ids default to split_index.
    by_name = load_ade20k_parquet(str(folder), split="validation", image_column="img", annotation_column="seg",
                                  cache_dir=str(tmp_path / "cache"))
    assert by_name.num_rows == 1 and by_name[0]["image_id"] == "validation_00000000"
    with pytest.raises(ValueError, match="columns are"):
        load_ade20k_parquet(str(folder), cache_dir=str(tmp_path / "cache"))


@pytest.fixture()
def coco_root(tmp_path):
    """COCO panoptic layout: categories with ids 1, 7 and 184 (stuff), a crowd segment, ids > 255, void."""
    root = tmp_path / "coco"
    for folder in ("annotations", "val2017", "panoptic_val2017"):
        (root / folder).mkdir(parents=True)
    ids = np.zeros((16, 24), dtype=np.int64)
    ids[:, :12] = 5_000_000  # wall-like stuff, category 184
    ids[2:8, 2:8] = 300  # person
    ids[9:14, 14:20] = 70_000  # person crowd
    ids[0:6, 15:22] = 2  # car
    ids[15, :] = 0  # void row
    Image.fromarray(id_to_rgb(ids)).save(root / "panoptic_val2017/000000000139.png")
    _image(np.random.default_rng(1), 16, 24).save(root / "val2017/000000000139.jpg")
    content = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 16, "width": 24}],
        "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": [
            {"id": 300, "category_id": 1, "iscrowd": 0, "area": 36, "bbox": [2, 2, 6, 6]},
            {"id": 70_000, "category_id": 1, "iscrowd": 1, "area": 30, "bbox": [14, 9, 6, 5]},
            {"id": 2, "category_id": 7, "iscrowd": 0, "area": 42, "bbox": [15, 0, 7, 6]},
            {"id": 5_000_000, "category_id": 184, "iscrowd": 0, "area": 156, "bbox": [0, 0, 12, 15]}]}],
        "categories": [{"id": 184, "name": "wall-other-merged", "isthing": 0, "supercategory": "wall"},
                       {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
                       {"id": 7, "name": "train", "isthing": 1, "supercategory": "vehicle"}],
    }
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(content))
    return root, ids


def test_coco_panoptic(coco_root):
    root, ids = coco_root
    dataset = load_coco_panoptic(root)  # no train json: only validation
    assert list(dataset) == ["validation"] and dataset["validation"].column_names == SCHEMA
    metadata = get_metadata(dataset)
    assert metadata.task == "panoptic"
    assert metadata.id2label == {0: "person", 1: "train", 2: "wall-other-merged"}  # ascending category id
    assert metadata.thing_ids == (0, 1) and metadata.stuff_ids == (2,)
    assert metadata.source_category_ids == (1, 7, 184)
    example = dataset["validation"][0]
    assert example["image_id"] == "139"
    assert example["segments_info"] == [
        {"id": 300, "label_id": 0, "iscrowd": False}, {"id": 70_000, "label_id": 0, "iscrowd": True},
        {"id": 2, "label_id": 1, "iscrowd": False}, {"id": 5_000_000, "label_id": 2, "iscrowd": False}]
    np.testing.assert_array_equal(read_label_map(example["annotation"], "panoptic"), ids)
    out = SegmentationTransform(metadata)(example)
    np.testing.assert_array_equal(out["label_map"].numpy(), ids)
    assert out["instance_id_to_semantic_id"] == {300: 0, 2: 1, 5_000_000: 2}  # crowd is not a mask target
    assert [s["id"] for s in out["segments_info"] if s["iscrowd"]] == [70_000]
    dropped = SegmentationTransform(metadata, drop_crowd=True)(example)
    assert (dropped["label_map"][9:14, 14:20] == 0).all() and len(dropped["segments_info"]) == 3
    semantic = SegmentationTransform(metadata, to_semantic=True)(example)["label_map"]
    assert semantic[3, 3] == 0 and semantic[1, 16] == 1 and semantic[1, 1] == 2
    assert semantic[10, 15] == 255 and (semantic[15] == 255).all()  # crowd and void -> ignore
    assert load_coco_panoptic(root, split="validation").num_rows == 1
    with pytest.raises(ValueError, match="split 'train'"):
        load_coco_panoptic(root, split="train", splits=("val",))


def test_coco_panoptic_png_under_annotations_and_bad_category(coco_root):
    root, _ = coco_root
    (root / "panoptic_val2017").rename(root / "annotations/panoptic_val2017")
    assert load_coco_panoptic(root, split="validation")[0]["annotation"].size == (24, 16)
    content = json.loads((root / "annotations/panoptic_val2017.json").read_text())
    content["annotations"][0]["segments_info"][0]["category_id"] = 55
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="category_id 55"):
        load_coco_panoptic(root)


def test_semantic_folder_single_split(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    for stem in ("a", "b", "c"):
        _image(rng, 8, 10).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 3, (8, 10)).astype(np.uint8), mode="L").save(tmp_path / "annotations" / f"{stem}.png")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["road", {"name": "car", "isthing": True}]}))
    dataset = load_semantic_folder(tmp_path)
    assert list(dataset) == ["train"] and dataset["train"]["image_id"] == ["a", "b", "c"]
    metadata = get_metadata(dataset)
    assert metadata.id2label == {0: "road", 1: "car"} and metadata.thing_ids == (1,) and metadata.reduce_labels
    plain = load_semantic_folder(tmp_path, class_names=["road", "car", "sky"], reduce_labels=False, split="train")
    assert not get_metadata(plain).reduce_labels
    Image.fromarray(rng.integers(0, 3, (8, 10, 3)).astype(np.uint8)).save(tmp_path / "annotations/a.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_semantic_folder(tmp_path)
    (tmp_path / "annotations/b.png").unlink()
    with pytest.raises(ValueError, match="no annotation"):
        load_semantic_folder(tmp_path)


def test_panoptic_folder(tmp_path):
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    classes = np.ones((8, 10), dtype=np.uint8)  # grass (value 1)
    instances = np.zeros((8, 10), dtype=np.uint8)
    classes[1:4, 1:4], instances[1:4, 1:4] = 2, 1  # cat #1
    classes[5:7, 5:9], instances[5:7, 5:9] = 2, 2  # cat #2
    classes[0, :] = 0  # unlabelled
    for split in ("train", "val"):
        _image(rng, 8, 10).save(tmp_path / "images" / split / "x.jpg")
        Image.fromarray(np.dstack([classes, instances, np.zeros_like(classes)])).save(tmp_path / "annotations" / split / "x.png")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [{"name": "grass"}, {"name": "cat", "isthing": True}]}))
    dataset = load_panoptic_folder(tmp_path)
    assert set(dataset) == {"train", "validation"}
    metadata = get_metadata(dataset)
    assert metadata.task == "panoptic" and metadata.thing_ids == (1,)
    example = dataset["validation"][0]
    assert example["segments_info"] == [{"id": 1, "label_id": 0, "iscrowd": False},
                                        {"id": 2 + 256, "label_id": 1, "iscrowd": False},
                                        {"id": 2 + 512, "label_id": 1, "iscrowd": False}]
    out = SegmentationTransform(metadata)(example)
    assert (out["label_map"][0] == 0).all() and out["label_map"][2, 2] == 258 and out["label_map"][6, 6] == 514
    Image.fromarray(np.dstack([classes * 3, instances, instances])).save(tmp_path / "annotations/train/x.png")
    with pytest.raises(ValueError, match=r"class values \[3, 6\]"):
        load_panoptic_folder(tmp_path, split="train")


def test_metadata_validation_and_round_trip():
    with pytest.raises(ValueError, match="task"):
        SegmentationMetadata(task="depth", id2label={0: "a"})
    with pytest.raises(ValueError, match="thing_ids"):
        SegmentationMetadata(task="panoptic", id2label={0: "a"}, thing_ids=(3,))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetadata(task="semantic", id2label={i: str(i) for i in range(300)})
    metadata = SegmentationMetadata(task="panoptic", id2label={0: "a", 1: "b"}, thing_ids=(1,), source_category_ids=(3, 9))
    assert SegmentationMetadata.from_dict(json.loads(json.dumps(metadata.to_dict()))) == metadata
    table = set_metadata(datasets.Dataset.from_dict({"x": [1, 2]}), metadata)
    assert get_metadata(table.filter(lambda row: row["x"] > 1)) == metadata
    with pytest.raises(ValueError, match="no maskformer_hf metadata"):
        get_metadata(datasets.Dataset.from_dict({"x": [1]}))
    ids = np.array([[0, 255, 256, (1 << 24) - 1]])
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    with pytest.raises(ValueError, match="2\\^24"):
        id_to_rgb(np.array([1 << 24]))


def test_synthetic_is_deterministic_and_loads_through_both_layouts(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", num_train=6, num_val=3, size=64, seed=7)
    write_synthetic_dataset(tmp_path / "b", num_train=6, num_val=3, size=64, seed=7)
    write_synthetic_dataset(tmp_path / "c", num_train=2, num_val=3, size=64, seed=8)
    write_synthetic_dataset(tmp_path / "d", num_train=2, num_val=3, size=64, seed=7, layouts=["coco"])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 2 * 9 + 3  # 2 layouts x (image + annotation) x 9 images + classes.json + 2 jsons
    for path in files:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    val_png = Path("coco/panoptic_val2017/synthetic_000002.png")
    assert (tmp_path / "a" / val_png).read_bytes() == (tmp_path / "d" / val_png).read_bytes()  # independent of num_train
    assert (tmp_path / "a" / val_png).read_bytes() != (tmp_path / "c" / val_png).read_bytes()  # the seed matters

    ade = load_ade20k(first["ade20k"])
    coco = load_coco_panoptic(first["coco"])
    assert ade["train"].num_rows == coco["train"].num_rows == 6 and ade["validation"].num_rows == 3
    ade_meta, coco_meta = get_metadata(ade), get_metadata(coco)
    assert ade_meta.id2label == coco_meta.id2label == dict(enumerate(CLASS_NAMES))
    assert ade_meta.thing_ids == coco_meta.thing_ids == THING_IDS
    things_seen = set()
    for index in range(6):  # both layouts describe the same scenes
        semantic = SegmentationTransform(ade_meta)(ade["train"][index])
        panoptic = SegmentationTransform(coco_meta)(coco["train"][index])
        from_panoptic = SegmentationTransform(coco_meta, to_semantic=True)(coco["train"][index])
        assert torch.equal(semantic["label_map"], from_panoptic["label_map"])
        assert torch.equal(semantic["image"].float().mean(), panoptic["image"].float().mean())
        assert panoptic["label_map"].min() > 255  # ids 1000 * (label + 1) + k, no void
        things_seen |= {label for label in panoptic["instance_id_to_semantic_id"].values() if label in THING_IDS}
        assert len(set(semantic["label_map"].unique().tolist()) - set(THING_IDS)) >= 1  # some stuff
    assert things_seen == set(THING_IDS)


def test_synthetic_command_line(tmp_path):
    synthetic_main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--size", "48", "--layouts", "coco"])
    content = json.loads((tmp_path / "coco/annotations/panoptic_val2017.json").read_text())
    assert len(content["images"]) == 1 and [c["id"] for c in content["categories"]] == [1, 2, 3, 101, 102, 103]
    assert len(list((tmp_path / "coco/train2017").glob("*.jpg"))) == 2
    assert not (tmp_path / "ADEChallengeData2016").exists()


def test_transforms_keep_large_ids_and_pad_with_ignore():
    torch.manual_seed(0)
    ids = np.full((40, 50), 1 << 30, dtype=np.int64)  # > 2^24: not exact in float32 kernels
    ids[5:20, 5:25] = (1 << 30) + 1
    ids[25:35, 30:45] = 300
    ids[0, 0] = 17  # unlisted: void
    segments = [{"id": (1 << 30), "label_id": 1, "iscrowd": False}, {"id": (1 << 30) + 1, "label_id": 0, "iscrowd": False},
                {"id": 300, "label_id": 0, "iscrowd": True}]
    metadata = SegmentationMetadata(task="panoptic", id2label={0: "thing", 1: "stuff"}, thing_ids=(0,))
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    recipe = coco_panoptic_train_transforms(scales=[60, 72, 90], max_size=120, crop_scales=[40, 50], crop_size=(24, 36))
    for _ in range(5):
        out = SegmentationTransform(metadata, recipe).transform_example(image, ids, segments)
        values = set(out["label_map"].unique().tolist())
        assert values <= {0, 300, 1 << 30, (1 << 30) + 1}
        assert {s["id"] for s in out["segments_info"]} == values - {0}  # only segments still present
        assert 300 not in out["instance_id_to_semantic_id"]
        assert out["label_map"].dtype == torch.int64 and out["image"].dtype == torch.uint8
        assert out["label_map"].shape == out["image"].shape[1:]
    # Semantic: a crop larger than the image pads the label map with ignore_index and the image with 0.
    semantic = SegmentationMetadata(task="semantic", id2label={0: "a", 1: "b"}, reduce_labels=True)
    labels = np.ones((30, 40), dtype=np.int64)
    labels[:, 20:] = 2
    white = np.full((30, 40, 3), 255, dtype=np.uint8)
    out = SegmentationTransform(semantic, ade20k_train_transforms(crop_size=64, scale_range=(0.5, 0.5),
                                                                   color_jitter=False)).transform_example(white, labels, [])
    assert out["image"].shape == (3, 64, 64) and out["label_map"].shape == (64, 64)
    padded = out["label_map"] == 255
    assert padded.any() and set(out["label_map"][~padded].unique().tolist()) == {0, 1}  # NEAREST: no new values
    assert (out["image"][:, padded] == 0).all() and (out["image"][:, ~padded] == 255).all()
    crop = RandomSizeCrop(10, 20)(tv_tensors.Image(torch.zeros(3, 30, 15, dtype=torch.uint8)))
    assert 10 <= crop.shape[1] <= 20 and 10 <= crop.shape[2] <= 15
    with pytest.raises(ValueError, match="annotation size"):
        SegmentationTransform(semantic).transform_example(white, labels[:10], [])
    with pytest.raises(ValueError, match="neither a class"):
        SegmentationTransform(semantic).transform_example(white, labels + 5, [])


def _first(batch):
    return batch[0]


def test_dataloader_with_two_workers(tmp_path):
    roots = write_synthetic_dataset(tmp_path, num_train=6, num_val=0, size=48, seed=1, layouts=["coco"])
    dataset = load_coco_panoptic(roots["coco"], split="train")
    transform = SegmentationTransform(get_metadata(dataset), coco_panoptic_train_transforms(
        scales=[32, 48], max_size=64, crop_scales=[32], crop_size=(24, 32)), drop_crowd=True)
    assert pickle.loads(pickle.dumps(transform)).metadata == transform.metadata
    loader = torch.utils.data.DataLoader(dataset.with_transform(transform), batch_size=1, num_workers=2,
                                         collate_fn=_first)
    rows = list(loader)
    assert len(rows) == 6
    for row in rows:
        assert row["image"].dtype == torch.uint8 and row["label_map"].dtype == torch.int64
        assert set(row["instance_id_to_semantic_id"]) == set(row["label_map"].unique().tolist()) - {0}


def test_docs_data_example_gives_what_it_says(tmp_path, monkeypatch):
    page = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "write_synthetic_dataset" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "docs/data.md", "exec"), namespace)
    example = namespace["example"]
    assert example["image"].dtype == torch.uint8 and example["label_map"].dtype == torch.int64
    assert set(example["instance_id_to_semantic_id"]) == set(example["label_map"].unique().tolist()) - {0}
