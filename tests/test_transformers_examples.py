"""transformers' own instance-segmentation example, pointed at one of our checkpoints
(tests/workers/instance_segmentation_example.py reproduces its calls): with the package imported, and
where it is not installed, through ``trust_remote_code=True`` only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config

pytestmark = pytest.mark.system

WORKER = Path(__file__).parent / "workers" / "instance_segmentation_example.py"
CLASSES = {"background": 0, "square": 1, "disc": 2}


def scene(seed: int) -> tuple[Image.Image, Image.Image]:
    """A 64x64 image and its annotation in the example's format: R = class, G = instance id."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (64, 64, 3)).astype(np.uint8)
    annotation = np.zeros((64, 64, 3), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for instance in range(1, 4):
        cls = int(rng.integers(1, 3))
        cy, cx = (int(v) for v in rng.integers(12, 52, 2))
        r = int(rng.integers(5, 10))
        inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r) if cls == 1 else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        annotation[inside] = (cls, instance, 0)
        image[inside] = (200, 60, 60) if cls == 1 else (60, 60, 200)
    return Image.fromarray(image), Image.fromarray(annotation)


@pytest.fixture(scope="module")
def example_inputs(tmp_path_factory):
    """Our tiny checkpoint (model and processor) and a data set in the example's layout, saved to disk."""
    from datasets import Dataset, DatasetDict

    from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor

    root = tmp_path_factory.mktemp("example")
    torch.manual_seed(0)
    MaskFormerForUniversalSegmentation(tiny_config(num_labels=7)).save_pretrained(root / "model")
    MaskFormerImageProcessor(size={"shortest_edge": 64}).save_pretrained(root / "model")

    def split(seeds):
        pairs = [scene(seed) for seed in seeds]
        return Dataset.from_dict({"image": [p[0] for p in pairs], "annotation": [p[1] for p in pairs],
                                  "semantic_class_to_id": [CLASSES] * len(pairs)})

    DatasetDict(train=split(range(4)), validation=split(range(10, 14))).save_to_disk(root / "data")
    return root


@pytest.mark.parametrize("route", ["with-package", "without-package"])
def test_instance_segmentation_example_trains_and_scores_our_checkpoint(example_inputs, tmp_path, route):
    command = [sys.executable, str(WORKER), str(example_inputs / "model"), str(example_inputs / "data"),
               str(tmp_path / "out")] + (["--without-package"] if route == "without-package" else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               MASKFORMER_HF_COMPILE="0", TQDM_DISABLE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    package = "maskformer_hf." if route == "with-package" else "transformers_modules."
    assert result["model_class"].startswith(package) and result["model_class"].endswith(
        ".MaskFormerHfForUniversalSegmentation")
    assert result["processor_class"].startswith(package) and result["processor_class"].endswith(
        ".MaskFormerHfImageProcessor")
    # datasets fingerprints the example's transform (the partial holding the processor) by pickling it;
    # a processor class from a checkpoint's own code used to be copied by value (a minute, then a failure).
    assert result["transform_fingerprinted"]
    metrics = result["metrics"]
    # threshold=0.0: every query's best class with a non-empty mask is a prediction (transformers' convention;
    # the overlap rule used to leave none, and the script died on KeyError 'map_per_class').
    assert metrics["test_predictions_seen"] > 0
    assert 0.0 <= metrics["test_map"] <= 1.0
    assert {"test_map_square", "test_map_disc"} <= set(metrics)
    assert {int(k): v for k, v in result["saved_id2label"].items()} == {v: k for k, v in CLASSES.items()}
    task = "modeling_maskformer.MaskFormerHfForUniversalSegmentation"
    assert result["saved_auto_map"]["AutoModelForUniversalSegmentation"] == task
    assert result["saved_auto_map"]["AutoModelForInstanceSegmentation"] == task
    # What the script saved loads as ours here, through the class the script used.
    from transformers import AutoModelForUniversalSegmentation

    from maskformer_hf import MaskFormerForUniversalSegmentation

    assert type(AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "out")) is \
        MaskFormerForUniversalSegmentation
