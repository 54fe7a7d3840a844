"""pipeline("image-segmentation") on a saved tiny checkpoint: after `import maskformer_hf`, and through
the saved code (`trust_remote_code=True`) in a Python that cannot import the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageSegmentation, pipeline

from conftest import tiny_config
from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor

LABELS = {0: "sky", 1: "road", 2: "car", 3: "person"}
SUBTASKS = ("semantic", "instance", "panoptic")
THRESHOLDS = {"threshold": 0.3, "overlap_mask_area_threshold": 0.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=4, id2label=LABELS, stuff_label_ids=[3])).eval()
    with torch.no_grad():  # sharper classes and masks than at initialisation: several segments per subtask
        model.class_predictor.weight.mul_(5.0)
        model.mask_embedder.layers[-1].weight.mul_(100.0)
        model.mask_embedder.layers[-1].bias.mul_(100.0)
    path = tmp_path_factory.mktemp("tiny-maskformer")
    model.save_pretrained(path)
    MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path


def three_regions() -> Image.Image:
    pixels = np.zeros((50, 70, 3), np.uint8)
    pixels[:, :35], pixels[:25, 35:], pixels[25:, 35:] = (200, 30, 30), (30, 200, 30), (20, 20, 220)
    return Image.fromarray(pixels + np.random.default_rng(0).integers(0, 30, pixels.shape, dtype=np.uint8))


@pytest.fixture(scope="module")
def image():
    return three_regions()


def summary(annotations) -> list[tuple]:
    """(label, score, mask as bytes) per returned segment: comparable across processes."""
    return [(a["label"], a["score"], np.asarray(a["mask"]).tobytes().hex()) for a in annotations]


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return pipeline("image-segmentation", model=str(checkpoint))


def test_saved_checkpoint_carries_its_code(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    processor = json.loads((checkpoint / "preprocessor_config.json").read_text())
    task_model = "modeling_maskformer.MaskFormerHfForUniversalSegmentation"
    assert config["auto_map"] == {"AutoConfig": "configuration_maskformer.MaskFormerHfConfig",
                                  "AutoModel": "modeling_maskformer.MaskFormerHfModel",
                                  "AutoModelForUniversalSegmentation": task_model,
                                  "AutoModelForImageSegmentation": task_model,
                                  "AutoModelForInstanceSegmentation": task_model}
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_maskformer.MaskFormerHfImageProcessor"}
    assert processor["image_processor_type"] == "MaskFormerHfImageProcessor"
    for name in ("configuration_maskformer.py", "modeling_maskformer.py", "image_processing_maskformer.py", "inference.py"):
        assert (checkpoint / name).is_file()
    # With the package imported, its own classes are used, not the copies.
    model = AutoModelForImageSegmentation.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(model) is MaskFormerForUniversalSegmentation


def test_pipeline_subtasks_match_post_processing(segmenter, image):
    assert type(segmenter.model) is MaskFormerForUniversalSegmentation
    assert type(segmenter.image_processor) is MaskFormerImageProcessor
    processor = segmenter.image_processor
    with torch.no_grad():
        outputs = segmenter.model(**processor(image))
    target = [(image.height, image.width)]
    expected = {
        "semantic": processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0],
        "instance": processor.post_process_instance_segmentation(outputs, **THRESHOLDS, target_sizes=target)[0],
        "panoptic": processor.post_process_panoptic_segmentation(outputs, **THRESHOLDS, target_sizes=target)[0],
    }
    for subtask in SUBTASKS:
        annotations = segmenter(image, subtask=subtask, **THRESHOLDS)
        if subtask == "semantic":
            ids = expected["semantic"].unique().tolist()
            segments = [(LABELS[i], None, expected["semantic"] == i) for i in ids]
        else:
            seg = expected[subtask]["segmentation"]
            segments = [(LABELS[s["label_id"]], s["score"], seg == s["id"]) for s in expected[subtask]["segments_info"]]
        assert len(annotations) == len(segments) >= (1 if subtask == "panoptic" else 2), subtask
        for annotation, (label, score, mask) in zip(annotations, segments):
            assert annotation["label"] == label and annotation["score"] == score
            assert annotation["mask"].size == (image.width, image.height)
            assert np.array_equal(np.asarray(annotation["mask"]) == 255, mask.numpy())
    # The config's stuff_label_ids ([3]) reach the pipeline's processor: the "person" queries form one segment.
    assert processor.label_ids_to_fuse == [3]
    assert [(s["label_id"], s["was_fused"]) for s in expected["panoptic"]["segments_info"]] == [(3, True)]
    unfused = processor.post_process_panoptic_segmentation(outputs, **THRESHOLDS, label_ids_to_fuse=[], target_sizes=target)
    assert len(unfused[0]["segments_info"]) > 1


@pytest.mark.system
def test_trust_remote_code_in_a_python_without_the_package(checkpoint, segmenter, image, tmp_path):
    local = {subtask: summary(segmenter(image, subtask=subtask, **THRESHOLDS)) for subtask in SUBTASKS}
    script = f"""
import json, sys
sys.modules["maskformer_hf"] = None  # importing the package now fails: only the saved code can run
import numpy as np
from PIL import Image
from transformers import pipeline
pixels = np.zeros((50, 70, 3), np.uint8)
pixels[:, :35], pixels[:25, 35:], pixels[25:, 35:] = (200, 30, 30), (30, 200, 30), (20, 20, 220)
image = Image.fromarray(pixels + np.random.default_rng(0).integers(0, 30, pixels.shape, dtype=np.uint8))
segmenter = pipeline("image-segmentation", model={str(checkpoint)!r}, trust_remote_code=True)
result = {{subtask: [(a["label"], a["score"], np.asarray(a["mask"]).tobytes().hex())
                    for a in segmenter(image, subtask=subtask, **{THRESHOLDS!r})] for subtask in {SUBTASKS!r}}}
print(json.dumps({{"result": result, "model": type(segmenter.model).__module__,
                   "processor": type(segmenter.image_processor).__module__}}))
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    assert remote["model"].startswith("transformers_modules.") and remote["model"].endswith(".modeling_maskformer")
    assert remote["processor"].endswith(".image_processing_maskformer")
    assert remote["result"] == {k: [list(t) for t in v] for k, v in local.items()}


def test_stuff_label_ids_config_field(tmp_path):
    """MaskFormerConfig.stuff_label_ids: validated, saved, and the default of a processor loaded beside it."""
    config = MaskFormerConfig(backbone="resnet18", num_labels=4, stuff_label_ids=[3, 1, 3])
    assert config.stuff_label_ids == [1, 3] and MaskFormerConfig().stuff_label_ids is None
    with pytest.raises(ValueError, match="stuff_label_ids"):
        MaskFormerConfig(num_labels=4, stuff_label_ids=[4])
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).stuff_label_ids == [1, 3]
    MaskFormerImageProcessor().save_pretrained(tmp_path)
    assert AutoImageProcessor.from_pretrained(tmp_path).label_ids_to_fuse == [1, 3]
    MaskFormerImageProcessor(label_ids_to_fuse=[2]).save_pretrained(tmp_path)  # the processor's own setting wins
    assert MaskFormerImageProcessor.from_pretrained(tmp_path).label_ids_to_fuse == [2]
