"""Bad input, tried systematically: every case ends in a ``ValueError``/``TypeError`` whose message
names the argument (or file) and what was expected, or, for data loaders, in a documented skip with
a warning. Never an opaque torch error, a crash or a silently wrong result.

The table (``CASES``) covers the image processor, post-processing, the model's forward, the
collator, the loaders and the command line; ``test_bad_input_fuzz.py`` throws random inputs at the
same entry points. ``docs/reliability.md`` reports how many cases run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config, write_coco_panoptic_fixture
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.cli import main as cli_main
from maskformer_hf.data import load_ade20k, load_coco_panoptic, load_semantic_folder, read_example
from maskformer_hf.data import SegmentationMetadata
from maskformer_hf.data.collate import MaskFormerCollator
from maskformer_hf.data.transforms import SegmentationTransform
from maskformer_hf.inference import instance_inference, panoptic_inference, semantic_inference


@dataclass(frozen=True)
class Case:
    """``call(env)`` must raise ``error`` with a message matching ``match`` (a regex)."""

    name: str
    call: Callable[[dict], object]
    error: type[Exception] | tuple[type[Exception], ...]
    match: str


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """What the cases act on: a tiny model (4 classes, 8 queries), its processor, its outputs on one
    image, a saved checkpoint, and data folders with broken files."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config()).eval()
    processor = MaskFormerImageProcessor(num_labels=4, size={"shortest_edge": 64, "longest_edge": 128})
    with torch.no_grad():
        outputs = model(**processor(images=[np.zeros((64, 64, 3), np.uint8)]))
    root = tmp_path_factory.mktemp("bad-input")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    jpeg = root / "ok.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    (root / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (root / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    (root / "empty.png").write_bytes(b"")
    return {"model": model, "processor": processor, "outputs": outputs, "root": root}


def _image(h: int = 64, w: int = 64, dtype=np.uint8, value=0) -> np.ndarray:
    return np.full((h, w, 3), value, dtype)


def _process(images, **kwargs):
    return lambda e: e["processor"](images=images, **kwargs)


def _maps(maps, images=None, **kwargs):
    return lambda e: e["processor"](images=images or [_image()], segmentation_maps=maps, **kwargs)


def _logits(queries: int = 8, classes: int = 5, size: tuple[int, int] = (16, 16), batch: int = 1, **kwargs):
    out = {"class_queries_logits": torch.zeros(batch, queries, classes),
           "masks_queries_logits": torch.zeros(batch, queries, *size)}
    out.update(kwargs)
    return out


def _post(kind: str, outputs, **kwargs):
    return lambda e: getattr(e["processor"], f"post_process_{kind}_segmentation")(
        outputs(e) if callable(outputs) else outputs, **kwargs)


def _forward(pixel_values, **kwargs):
    return lambda e: e["model"](pixel_values=pixel_values, **kwargs)


def _train(masks, classes, pixel_values=None):
    pixel_values = torch.zeros(len(masks), 3, 64, 64) if pixel_values is None else pixel_values
    return lambda e: e["model"](pixel_values=pixel_values, mask_labels=masks, class_labels=classes)


def _collate(examples, ignore_index: int = 255):
    return lambda e: MaskFormerCollator(e["processor"], ignore_index)(examples)


def _example(h=64, w=64, label=None, mapping=None):
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8),
            "label_map": torch.zeros(h, w, dtype=torch.int64) if label is None else label,
            "instance_id_to_semantic_id": mapping}


def _cli(*argv):
    def run(e):
        code = cli_main([a.format(root=e["root"]) for a in argv])
        if code != 0:  # the CLI's contract: a message on stderr and a non-zero status (see test below)
            raise SystemExit(code)
    return run


def _read(name: str):
    def run(e):
        features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
        dataset = datasets.Dataset.from_dict({"image_id": [name], "image": [str(e["root"] / name)]}, features=features)
        return read_example(dataset, 0)
    return run


IMAGES = [
    Case("zero-height image", _process([_image(0, 5)]), ValueError, r"images\[0\].*at least 1x1.*height 0"),
    Case("zero-sized tensor", _process([torch.zeros(3, 0, 0)]), ValueError, r"images\[0\].*at least 1x1"),
    Case("second image empty", _process([_image(), _image(5, 0)]), ValueError, r"images\[1\]"),
    Case("NaN float image", _process([_image(dtype=np.float32, value=np.nan)]), ValueError, r"images\[0\].*finite"),
    Case("inf float image", _process([_image(dtype=np.float32, value=np.inf)]), ValueError, r"images\[0\].*finite"),
    Case("-inf float16 image", _process([_image(dtype=np.float16, value=-np.inf)]), ValueError, "finite"),
    Case("bool image", _process([_image(dtype=bool)]), TypeError, r"images\[0\].*integer .* or floating.*bool"),
    Case("complex image", _process([_image(dtype=np.complex64)]), TypeError, r"images\[0\].*complex"),
    Case("object array", _process([np.empty((8, 8, 3), dtype=object)]), TypeError, r"images\[0\].*object"),
    Case("int32 above 255", _process([_image(dtype=np.int32, value=300)]), ValueError, r"\[0, 255\].*300"),
    Case("negative int16", _process([_image(dtype=np.int16, value=-1)]), ValueError, r"\[0, 255\]"),
    Case("2 channels", _process([np.zeros((8, 8, 2), np.uint8)]), ValueError, "1, 3 or 4 channels.*(8, 8, 2)"),
    Case("5 channels CHW", _process([torch.zeros(5, 8, 8)]), ValueError, "1, 3 or 4 channels"),
    Case("rank 1", _process([np.zeros(8, np.uint8)]), ValueError, r"\(H, W\), \(H, W, C\) or \(C, H, W\)"),
    Case("rank 5 in a list", _process([np.zeros((1, 1, 8, 8, 3), np.uint8)]), ValueError, "got shape"),
    Case("a file name", _process(["photo.jpg"]), TypeError, "PIL images, numpy arrays or torch tensors.*str"),
    Case("None", _process([None]), TypeError, "NoneType"),
    Case("no image", _process([]), ValueError, "at least one image"),
    Case("unknown argument", _process([_image()], do_flip=True), TypeError, "unknown arguments.*do_flip"),
    Case("return_tensors tf", _process([_image()], return_tensors="tf"), ValueError, "return_tensors.*'pt', 'np'"),
    Case("bad size", _process([_image()], size={"width": 3}), ValueError, "size"),
    Case("pad_size below the images", _process([_image(64, 64), _image(64, 96)], do_resize=False,
                                                pad_size={"height": 64, "width": 64}), ValueError, "pad_size.*smaller"),
    Case("PIL 32-bit above 65535", _process([Image.fromarray(np.full((8, 8), 70000, np.int32))]), ValueError,
         r"\[0, 65535\]"),
]

LABEL_MAPS = [
    Case("map smaller than image", _maps([np.zeros((10, 10), np.uint8)]), ValueError,
         r"segmentation_maps\[0\].*\(10, 10\) differs.*\(64, 64\)"),
    Case("map transposed", _maps([np.zeros((64, 32), np.uint8)], images=[_image(32, 64)]), ValueError, "differs"),
    Case("class id >= num_labels", _maps([np.full((64, 64), 7, np.uint8)]), ValueError, r"\[7\].*num_labels=4"),
    Case("negative class id", _maps([np.full((64, 64), -3, np.int64)]), ValueError, r">= 0.*\[-3\].*ignore_index"),
    Case("float map", _maps([np.zeros((64, 64), np.float32)]), TypeError, "integer ids.*float32"),
    Case("4-channel map", _maps([np.zeros((64, 64, 4), np.uint8)]), ValueError, r"\(H, W\) ids or \(H, W, 3\)"),
    Case("map count", _maps([np.zeros((64, 64), np.uint8)], images=[_image(), _image()]), ValueError,
         r"one per image \(2\), got 1"),
    Case("map not an array", _maps(["mask.png"]), TypeError, "segmentation_maps.*str"),
    Case("mapping to an unknown class", _maps([np.ones((64, 64), np.uint8)], instance_id_to_semantic_id={1: 9}),
         ValueError, r"\[9\].*num_labels=4"),
    Case("mappings count", _maps([np.ones((64, 64), np.uint8)], instance_id_to_semantic_id=[{1: 0}, {1: 1}]),
         ValueError, r"instance_id_to_semantic_id.*one dict per image \(1\)"),
    Case("reduce labels without ignore_index", _maps([np.ones((64, 64), np.uint8)], do_reduce_labels=True,
                                                      ignore_index=None), ValueError, "ignore_index"),
]

POST_PROCESSING = [
    *(Case(f"{kind}: too many target sizes", _post(kind, lambda e: e["outputs"], target_sizes=[(9, 9), (9, 9)]),
           ValueError, r"target_sizes: expected one .* per image \(1\), got 2") for kind in ("semantic", "panoptic",
                                                                                            "instance")),
    Case("fractional target size", _post("semantic", _logits(), target_sizes=[(10.5, 10)]), TypeError,
         r"target_sizes\[0\].*integer"),
    Case("NaN target size", _post("semantic", _logits(), target_sizes=[(float("nan"), 10)]), TypeError,
         r"target_sizes\[0\]"),
    Case("string target size", _post("semantic", _logits(), target_sizes=["10x10"]), TypeError, r"target_sizes\[0\]"),
    Case("zero target size", _post("panoptic", _logits(), target_sizes=[(0, 10)]), ValueError, r">= 1.*\(0, 10\)"),
    Case("3-d target size", _post("instance", _logits(), target_sizes=[(10, 10, 3)]), ValueError, r"target_sizes\[0\]"),
    Case("not a model output", _post("panoptic", {"logits": torch.zeros(1)}), ValueError,
         "class_queries_logits and masks_queries_logits"),
    Case("class logits 2-d", _post("semantic", _logits(class_queries_logits=torch.zeros(8, 5))), ValueError,
         r"\(batch, queries, classes \+ 1\).*\(8, 5\)"),
    Case("mask logits 3-d", _post("semantic", _logits(masks_queries_logits=torch.zeros(8, 16, 16))), ValueError,
         r"\(batch, queries, height, width\)"),
    Case("queries differ", _post("panoptic", _logits(masks_queries_logits=torch.zeros(1, 7, 4, 4))), ValueError,
         r"query dimensions differ.*\(1, 8\) vs \(1, 7\)"),
    Case("batch differs", _post("instance", _logits(batch=2, masks_queries_logits=torch.zeros(1, 8, 4, 4))),
         ValueError, r"\(2, 8\) vs \(1, 8\)"),
    Case("coco annotation and binary maps", _post("instance", lambda e: e["outputs"], return_coco_annotation=True,
                                                  return_binary_maps=True), ValueError, "can not be both"),
    Case("integer logits", _post("semantic", _logits(class_queries_logits=torch.zeros(1, 8, 5, dtype=torch.long))),
         TypeError, "class_queries_logits: expected floating point.*int64"),
    Case("bool mask logits", _post("panoptic", _logits(masks_queries_logits=torch.zeros(1, 8, 4, 4, dtype=bool))),
         TypeError, "masks_queries_logits: expected floating point"),
    Case("numpy logits", _post("semantic", _logits(masks_queries_logits=np.zeros((1, 8, 4, 4), np.float32))),
         TypeError, "masks_queries_logits: expected a torch.Tensor.*ndarray"),
    Case("NaN class logits", _post("panoptic", _logits(class_queries_logits=torch.full((1, 8, 5), float("nan")))),
         ValueError, "class_queries_logits: found NaN"),
    Case("NaN mask logit", _post("instance", _logits(masks_queries_logits=torch.zeros(1, 8, 16, 16).index_fill_(
        2, torch.tensor([3]), float("nan")))), ValueError, "masks_queries_logits: found NaN"),
    Case("devices differ", _post("semantic", _logits(masks_queries_logits=torch.zeros(1, 8, 4, 4, device="meta"))),
         ValueError, "one device.*cpu, meta"),
    Case("pixel mask on another device", _post("semantic", _logits(pixel_mask=torch.ones(1, 64, 64, device="meta"))),
         ValueError, "one device"),
    Case("pixel mask batch", _post("semantic", _logits(pixel_mask=torch.ones(2, 64, 64))), ValueError,
         r"pixel_mask: expected \(batch=1"),
    Case("threshold above 1", _post("panoptic", lambda e: e["outputs"], threshold=2.0), ValueError,
         r"threshold: expected a number in \[0, 1\], got 2.0"),
    Case("negative mask threshold", _post("instance", lambda e: e["outputs"], mask_threshold=-0.1), ValueError,
         "mask_threshold"),
    Case("overlap threshold NaN", _post("panoptic", lambda e: e["outputs"], overlap_mask_area_threshold=float("nan")),
         ValueError, "overlap_mask_area_threshold"),
    Case("label_ids_to_fuse out of range", lambda e: panoptic_inference(
        e["outputs"].class_queries_logits, e["outputs"].masks_queries_logits, label_ids_to_fuse=[99]),
         ValueError, r"label_ids_to_fuse: expected class ids in \[0, 4\), got \[99\]"),
    Case("one class only (no K)", lambda e: semantic_inference(torch.zeros(1, 8, 1), torch.zeros(1, 8, 4, 4)),
         ValueError, r"K \+ 1 >= 2"),
    Case("functional: NaN", lambda e: panoptic_inference(torch.zeros(1, 8, 5), torch.full((1, 8, 4, 4), float("nan"))),
         ValueError, "NaN"),
    Case("functional: int target", lambda e: instance_inference(torch.zeros(1, 8, 5), torch.zeros(1, 8, 4, 4),
                                                               target_sizes=[("a", 2)]), TypeError, "target_sizes"),
]

FORWARD = [
    Case("4 channels (RGBA tensor)", _forward(torch.zeros(1, 4, 64, 64)), ValueError, "3 \\(RGB\\) channels.*4, 64"),
    Case("1 channel", _forward(torch.zeros(1, 1, 64, 64)), ValueError, "3 \\(RGB\\) channels"),
    Case("rank 3", _forward(torch.zeros(3, 64, 64)), ValueError, r"pixel_values: expected a \(batch_size, channels"),
    Case("numpy input", _forward(np.zeros((1, 3, 64, 64), np.float32)), ValueError, "tensor, got ndarray"),
    Case("uint8 pixels", _forward(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), TypeError,
         "floating point.*uint8.*MaskFormerImageProcessor"),
    Case("float64 pixels", _forward(torch.zeros(1, 3, 64, 64, dtype=torch.float64)), TypeError,
         "float64.*weights are torch.float32"),
    Case("1x1 image", _forward(torch.zeros(1, 3, 1, 1)), ValueError, "at least 32x32"),
    Case("zero height", _forward(torch.zeros(1, 3, 0, 64)), ValueError, "at least 32x32"),
    Case("empty batch", _forward(torch.zeros(0, 3, 64, 64)), ValueError, "at least one image"),
    Case("32x32 on a 1-channel-per-group FPN", _forward(torch.zeros(1, 3, 32, 32)), ValueError,
         "too small for this model.*GroupNorm"),
    Case("NaN pixels", _forward(torch.full((1, 3, 64, 64), float("nan"))), ValueError, "NaN or infinite"),
    Case("inf pixel", _forward(torch.zeros(1, 3, 64, 64).index_fill_(3, torch.tensor([5]), float("inf"))),
         ValueError, "NaN or infinite"),
    Case("pixel mask shape", _forward(torch.zeros(1, 3, 64, 64), pixel_mask=torch.ones(1, 16, 16)), ValueError,
         r"pixel_mask: expected shape \(1, 64, 64\)"),
    Case("pixel mask device", _forward(torch.zeros(1, 3, 64, 64), pixel_mask=torch.ones(1, 64, 64, device="meta")),
         ValueError, "pixel_mask: on meta"),
    Case("pixel mask all padding", _forward(torch.zeros(1, 3, 64, 64), pixel_mask=torch.zeros(1, 64, 64)),
         ValueError, "pixel_mask: every image needs at least one valid"),
    Case("pixels on another device", _forward(torch.zeros(1, 3, 64, 64, device="meta")), ValueError,
         "pixel_values: on meta, but the model is on cpu"),
    Case("mask_labels tensor of rank 3",
         lambda e: e["model"](torch.zeros(1, 3, 64, 64), mask_labels=torch.zeros(1, 64, 64),
                              class_labels=torch.zeros(1, 1, dtype=torch.long)),
         ValueError, r"mask_labels: expected a list of \(N_i, H, W\) tensors or a \(batch_size, N, H, W\) tensor"),
    Case("masks without classes", lambda e: e["model"](torch.zeros(1, 3, 64, 64), mask_labels=[torch.zeros(1, 64, 64)]),
         ValueError, "pass both"),
    Case("training class id >= num_labels", _train([torch.zeros(1, 64, 64)], [torch.tensor([9])]), ValueError,
         r"class_labels\[0\]: expected classes in \[0, 4\)"),
    Case("training negative class id", _train([torch.zeros(1, 64, 64)], [torch.tensor([-1])]), ValueError,
         r"class_labels\[0\]"),
    Case("float class ids", _train([torch.zeros(1, 64, 64)], [torch.tensor([1.0])]), TypeError,
         r"class_labels\[0\]: expected integer"),
    Case("masks and classes count", _train([torch.zeros(2, 64, 64)], [torch.tensor([1])]), ValueError,
         r"\(2, 64, 64\) and \(1,\)"),
    Case("labels for fewer images", _train([torch.zeros(1, 64, 64)], [torch.tensor([1])],
                                           torch.zeros(2, 3, 64, 64)), ValueError, "expected 2 entries"),
    Case("labels neither lists nor tensors", _train(np.zeros((1, 1, 64, 64)), np.array([[1]])), TypeError, "lists"),
    Case("masks of another aspect", _train([torch.zeros(1, 32, 64)], [torch.tensor([1])]), ValueError,
         r"mask_labels: masks of size \(32, 64\) do not cover.*\(64, 64\)"),
    Case("masks differ in size", _train([torch.zeros(1, 64, 64), torch.zeros(1, 32, 32)],
                                        [torch.tensor([1]), torch.tensor([2])]), ValueError, "differ in size"),
    Case("masks on another device", _train([torch.zeros(1, 64, 64, device="meta")], [torch.tensor([1])]),
         ValueError, r"mask_labels\[0\]: on meta"),
]

COLLATOR = [
    Case("collating no example", _collate([]), ValueError, "empty batch"),
    Case("semantic and panoptic mixed", _collate([_example(), _example(mapping={1: 0})]), ValueError, "mixes"),
    Case("label map of another size", _collate([_example(label=torch.zeros(32, 32, dtype=torch.int64))]),
         ValueError, r"segmentation_maps\[0\].*differs"),
    Case("class beyond num_labels", _collate([_example(label=torch.full((64, 64), 6))]), ValueError, "num_labels=4"),
    Case("float label map", _collate([_example(label=torch.zeros(64, 64))]), TypeError, "integer ids"),
    Case("raw dataset rows", _collate([{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "annotation": None}]),
         ValueError, r"example 0 has no \['label_map'\].*SegmentationTransform"),
]

FILES = [
    Case("truncated JPEG", _read("truncated.jpg"), ValueError, r"image_id truncated.jpg.*truncated.jpg.*decoded"),
    Case("text named .jpg", _read("not_an_image.jpg"), ValueError, "not_an_image.jpg.*could not be decoded"),
    Case("empty file", _read("empty.png"), ValueError, "empty.png"),
    Case("missing file", _read("missing.jpg"), ValueError, "missing.jpg"),
    Case("ADE20K folder missing", lambda e: load_ade20k(e["root"] / "nowhere"), ValueError, "nowhere"),
    Case("semantic folder without classes", lambda e: load_semantic_folder(_semantic_folder(e["root"], classes=False)),
         ValueError, "classes.json"),
    Case("image without annotation", lambda e: load_semantic_folder(_semantic_folder(e["root"], orphan=True)),
         ValueError, r"1 of 2 images .* no annotation.*orphan"),
    Case("RGB semantic annotations", lambda e: load_semantic_folder(_semantic_folder(e["root"], rgb=True)),
         ValueError, "single-channel PNGs"),
    Case("COCO: unknown category", lambda e: load_coco_panoptic(_coco(e["root"], "unknown-category")), ValueError,
         "category_id 999 is not in 'categories'"),
    Case("COCO: unknown image id", lambda e: load_coco_panoptic(_coco(e["root"], "unknown-image")), ValueError,
         "image_id 12345, which is not in 'images'"),
    Case("COCO: all PNGs missing", lambda e: load_coco_panoptic(_coco(e["root"], "all-missing")), ValueError,
         "none of its 3 images has both files"),
    Case("COCO: no annotations folder", lambda e: load_coco_panoptic(e["root"]), ValueError, "no annotations/panoptic"),
]

def _transform(label: np.ndarray, task: str = "semantic", segments=(), image=None):
    def run(e):
        metadata = SegmentationMetadata(task=task, id2label={0: "a", 1: "b", 2: "c"}, thing_ids=(2,) if task == "panoptic"
                                        else ())
        example = {"image_id": "img-7", "image": Image.fromarray(np.zeros((8, 8, 3), np.uint8) if image is None
                                                               else image),
                   "annotation": Image.fromarray(label), "segments_info": list(segments)}
        return SegmentationTransform(metadata)(example)
    return run


TRANSFORMS = [
    Case("dataset label beyond the classes", _transform(np.full((8, 8), 7, np.uint8)), ValueError,
         r"image img-7: label value 7 is neither a class in \[0, 3\) nor ignore_index=255"),
    Case("annotation of another size", _transform(np.zeros((4, 8), np.uint8)), ValueError,
         r"image img-7: annotation size \(4, 8\) != image size \(8, 8\)"),
    Case("panoptic segment id 0", _transform(np.zeros((8, 8, 3), np.uint8), "panoptic",
                                             [{"id": 0, "label_id": 1, "iscrowd": False}]), ValueError,
         "img-7: segment id 0 is reserved for void"),
    Case("colour semantic annotation", _transform(np.dstack([np.zeros((8, 8, 2), np.uint8), np.ones((8, 8), np.uint8)])), ValueError, "single-channel"),
    Case("metadata not given", lambda e: SegmentationTransform({"task": "semantic"}), TypeError,
         "metadata must be a SegmentationMetadata"),
]

CLI = [
    Case("segment: nothing found", _cli("segment", "{root}/nothing_here/*.jpg", "--model", "{root}/model", "--out",
                                        "{root}/out", "--quiet"), SystemExit, "1"),
    Case("segment: no checkpoint", _cli("segment", "{root}/ok.jpg", "--model", "{root}/no_model", "--out",
                                        "{root}/out"), SystemExit, "2"),
    Case("segment: only broken files", _cli("segment", "{root}/truncated.jpg", "{root}/not_an_image.jpg", "--model",
                                            "{root}/model", "--out", "{root}/out", "--quiet"), SystemExit, "1"),
    Case("segment: bad task", _cli("segment", "{root}/ok.jpg", "--model", "{root}/model", "--task", "depth"),
         SystemExit, "2"),
    Case("segment: threshold 2", _cli("segment", "{root}/ok.jpg", "--model", "{root}/model", "--threshold", "2"),
         SystemExit, "2"),
    Case("train: negative steps", _cli("train", "--config", "demo", "--max_steps", "-1", "--output_dir", "{root}/t"),
         SystemExit, "2"),
    Case("train: unknown recipe", _cli("train", "--config", "no-such-recipe"), SystemExit, "2"),
    Case("train: unknown dataset", _cli("train", "--config", "demo", "--dataset", "imagenet", "--data_dir",
                                        "{root}", "--output_dir", "{root}/t"), SystemExit, "2"),
    Case("train: classes overridden against the data", _cli(
        "train", "--config", "demo", "--data_dir", "{root}/synthetic", "--synthetic_num_train", "4",
        "--synthetic_num_val", "2", "--synthetic_size", "64", "--model_overrides", '{{"num_labels": 9}}',
        "--output_dir", "{root}/t2"), SystemExit, "2"),
    Case("train: mixed precision fp8", _cli("train", "--config", "demo", "--mixed_precision", "fp8"), SystemExit, "2"),
    Case("train: bool flag", _cli("train", "--config", "demo", "--push_to_hub", "maybe"), SystemExit, "2"),
    Case("evaluate: no data", _cli("evaluate", "--model", "{root}/model", "--dataset", "ade20k", "--data_dir",
                                   "{root}/nowhere"), SystemExit, "2"),
    Case("export: unknown format", _cli("export", "{root}/model", "--format", "tflite", "--out", "{root}/m"),
         SystemExit, "2"),
]

CASES = IMAGES + LABEL_MAPS + POST_PROCESSING + FORWARD + COLLATOR + FILES + TRANSFORMS + CLI


def _semantic_folder(root: Path, classes: bool = True, orphan: bool = False, rgb: bool = False) -> Path:
    folder = root / f"semantic-{classes}-{orphan}-{rgb}"
    (folder / "images" / "train").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "train").mkdir(parents=True, exist_ok=True)
    for stem in ("a", "orphan") if orphan else ("a",):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "images" / "train" / f"{stem}.jpg")
    Image.fromarray(np.zeros((8, 8, 3) if rgb else (8, 8), np.uint8)).save(folder / "annotations" / "train" / "a.png")
    if classes:
        (folder / "classes.json").write_text(json.dumps({"classes": ["x", "y"]}))
    return folder


def _coco(root: Path, defect: str) -> Path:
    folder = root / f"coco-{defect}"
    if not folder.exists():
        write_coco_panoptic_fixture(folder, num_train=2, num_val=3)
    path = folder / "annotations" / "panoptic_val2017.json"
    content = json.loads(path.read_text())
    if defect == "unknown-category":
        content["annotations"][0]["segments_info"][0]["category_id"] = 999
    elif defect == "unknown-image":
        content["annotations"][0]["image_id"] = 12345
    elif defect == "all-missing":
        for png in (folder / "panoptic_val2017").iterdir():
            png.unlink()
    path.write_text(json.dumps(content))
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_a_clear_error(case: Case, env: dict, capsys):
    with pytest.raises(case.error) as raised:
        case.call(env)
    message = str(raised.value)
    if case.error is SystemExit:  # the command line: its exit status, and one line saying why on stderr
        assert message == case.match
        err = capsys.readouterr().err
        assert err.strip() and "Traceback" not in err, err
    else:
        assert raised.type in (ValueError, TypeError) and not isinstance(raised.value, (KeyError, IndexError))
        assert re.search(case.match, message), message


def test_the_table_covers_every_entry_point():
    groups = {"images": IMAGES, "label maps": LABEL_MAPS, "post-processing": POST_PROCESSING, "forward": FORWARD,
              "collator": COLLATOR, "files and loaders": FILES, "transforms": TRANSFORMS, "command line": CLI}
    assert all(len(cases) >= 5 for cases in groups.values())
    assert len({c.name for c in CASES}) == len(CASES) >= 100  # docs/reliability.md reports the count


def test_edge_images_that_are_valid_still_work(env):
    """Tiny, extreme-aspect, grey, RGBA, 16-bit and [0, 1] float images are not errors: they are
    converted and resized like any other, and the result is finite."""
    processor = env["processor"]
    sixteen_bit = np.full((8, 8), 65535, np.uint16)
    cases = {
        "1x1": _image(1, 1), "10000x8": _image(10000, 8), "8x10000": _image(8, 10000),
        "grey": np.zeros((20, 30), np.uint8), "RGBA": np.zeros((20, 30, 4), np.uint8),
        "uint16": np.stack([sixteen_bit] * 3, -1), "PIL I;16": Image.fromarray(sixteen_bit),
        "float": _image(dtype=np.float32, value=200.0), "5x5 CHW tensor": torch.ones(3, 5, 5, dtype=torch.uint8),
    }
    for name, image in cases.items():
        out = processor(images=[image])
        assert torch.isfinite(out["pixel_values"]).all(), name
        assert out["pixel_values"].shape[1] == 3 and min(out["pixel_values"].shape[-2:]) >= 1, name
    # 16-bit values are scaled to 8 bits (65535 -> 255) as for PIL's I;16, not clipped or rejected.
    white = processor(images=[_image(value=255)])["pixel_values"]
    torch.testing.assert_close(processor(images=[np.stack([np.full((64, 64), 65535, np.uint16)] * 3, -1)])
                               ["pixel_values"], white)


def test_float_images_already_in_unit_range_are_warned_about(env, caplog):
    with caplog.at_level(logging.WARNING):
        env["processor"](images=[_image(dtype=np.float32, value=0.5)])
    assert "do_rescale=False" in caplog.text


def test_empty_annotations_are_not_errors(env):
    """An image with no labelled pixel has zero masks, and the loss still trains on it (class term:
    every query is no-object)."""
    processor, model = env["processor"], env["model"]
    batch = processor(images=[_image()], segmentation_maps=[np.full((64, 64), 255, np.uint8)], ignore_index=255)
    assert batch["mask_labels"][0].shape[0] == 0 and batch["class_labels"][0].numel() == 0
    loss = model.train()(**batch).loss
    model.eval()
    assert torch.isfinite(loss) and loss > 0


def test_coco_files_that_are_missing_are_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "coco"
    write_coco_panoptic_fixture(root, num_train=4, num_val=3)
    (root / "panoptic_train2017" / "0001.png").unlink()
    (root / "train2017" / "0003.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        splits = load_coco_panoptic(root)
    assert len(splits["train"]) == 2 and len(splits["validation"]) == 3
    assert sorted(splits["train"]["image_id"]) == ["0", "2"]
    assert "skipping 2 of 4 images" in caplog.text and "0001.png" in caplog.text


def test_a_broken_file_in_segment_is_skipped_and_named(env, tmp_path, capsys):
    root = env["root"]
    code = cli_main(["segment", str(root / "ok.jpg"), str(root / "truncated.jpg"), "--model", str(root / "model"),
                     "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "1 of 2 images segmented" in captured.out
    assert "truncated.jpg" in captured.err


def test_cli_errors_name_what_was_wrong(env, capsys):
    assert cli_main(["evaluate", "--model", str(env["root"] / "model"), "--dataset", "ade20k", "--data_dir",
                     str(env["root"] / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli_main(["train", "--config", "demo", "--max_steps", "-1"]) == 2
    err = capsys.readouterr().err
    assert "max_steps must be >= 1, got -1" in err and "Traceback" not in err
