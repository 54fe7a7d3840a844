"""Our checkpoints load as ours through every Auto class a transformers user reaches for, with the
package imported and, without it, through ``trust_remote_code=True``; importing the package never
changes what transformers' own checkpoints load as; checkpoints saved by earlier versions still load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageSegmentation,
                          AutoModelForInstanceSegmentation, AutoModelForUniversalSegmentation, pipeline)

from conftest import tiny_config, tiny_hf_model
from maskformer_hf import (MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor,
                           MaskFormerModel)

TASK_AUTOS = (AutoModelForUniversalSegmentation, AutoModelForImageSegmentation, AutoModelForInstanceSegmentation)
# What a checkpoint saved before the classes were renamed holds (config.json, preprocessor_config.json).
LEGACY_CONFIG = {"auto_map": {"AutoConfig": "configuration_maskformer.MaskFormerConfig",
                              "AutoModelForImageSegmentation": "modeling_maskformer.MaskFormerForUniversalSegmentation"},
                 "architectures": ["MaskFormerForUniversalSegmentation"]}
LEGACY_PROCESSOR = {"auto_map": {"AutoImageProcessor": "image_processing_maskformer.MaskFormerImageProcessor"},
                    "image_processor_type": "MaskFormerImageProcessor"}
PIXELS = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)


def logits_sum(model) -> float:
    with torch.no_grad():
        return float(model.eval()(pixel_values=PIXELS).masks_queries_logits.double().sum())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Ours, ours as an earlier version saved it, and transformers' own: each a model and its processor."""
    root = tmp_path_factory.mktemp("auto")
    torch.manual_seed(0)
    ours = MaskFormerForUniversalSegmentation(tiny_config(num_labels=5))
    ours.save_pretrained(root / "ours")
    MaskFormerImageProcessor(size={"shortest_edge": 64}).save_pretrained(root / "ours")
    shutil.copytree(root / "ours", root / "legacy")
    for name, fields in (("config.json", LEGACY_CONFIG), ("preprocessor_config.json", LEGACY_PROCESSOR)):
        path = root / "legacy" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    tiny_hf_model("swin").save_pretrained(root / "transformers")
    transformers.MaskFormerImageProcessor().save_pretrained(root / "transformers")
    return root, logits_sum(ours)


def test_saved_files_name_our_classes_for_every_auto_class(folders):
    root, _ = folders
    auto_map = json.loads((root / "ours" / "config.json").read_text())["auto_map"]
    task = "modeling_maskformer.MaskFormerHfForUniversalSegmentation"
    assert auto_map == {"AutoConfig": "configuration_maskformer.MaskFormerHfConfig",
                        "AutoModel": "modeling_maskformer.MaskFormerHfModel",
                        **{auto.__name__: task for auto in TASK_AUTOS}}
    processor = json.loads((root / "ours" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "MaskFormerHfImageProcessor"
    # The public names are the saved classes.
    assert MaskFormerConfig.__name__ == "MaskFormerHfConfig" and MaskFormerModel.__name__ == "MaskFormerHfModel"


@pytest.mark.parametrize("folder", ["ours", "legacy"])
def test_every_auto_class_builds_ours_with_the_package(folders, folder):
    root, expected = folders
    path = root / folder
    assert type(AutoConfig.from_pretrained(path)) is MaskFormerConfig
    assert type(AutoModel.from_pretrained(path)) is MaskFormerModel
    for auto in TASK_AUTOS:
        model = auto.from_pretrained(path)
        assert type(model) is MaskFormerForUniversalSegmentation, auto.__name__
        assert logits_sum(model) == pytest.approx(expected, rel=1e-6)
    for backend in (None, "pil"):
        kwargs = {} if backend is None else {"backend": backend}
        assert type(AutoImageProcessor.from_pretrained(path, **kwargs)) is MaskFormerImageProcessor
    segmenter = pipeline("image-segmentation", model=str(path))
    assert type(segmenter.model) is MaskFormerForUniversalSegmentation
    assert type(segmenter.image_processor) is MaskFormerImageProcessor
    # trust_remote_code=True with the package imported: still the package's classes, not the saved copies
    assert type(AutoModelForUniversalSegmentation.from_pretrained(path, trust_remote_code=True)) is \
        MaskFormerForUniversalSegmentation


def test_transformers_checkpoints_load_as_transformers_classes_with_the_package_imported(folders):
    root, _ = folders
    path = root / "transformers"
    assert type(AutoConfig.from_pretrained(path)) is transformers.MaskFormerConfig
    assert type(AutoModel.from_pretrained(path)) is transformers.MaskFormerModel
    for auto in (AutoModelForUniversalSegmentation, AutoModelForInstanceSegmentation):
        assert type(auto.from_pretrained(path)) is transformers.MaskFormerForInstanceSegmentation
    assert type(AutoImageProcessor.from_pretrained(path)) is transformers.MaskFormerImageProcessor
    assert type(AutoImageProcessor.from_pretrained(path, backend="pil")) is transformers.MaskFormerImageProcessorPil
    # Our own classes still read it (converted) when asked to.
    assert type(MaskFormerForUniversalSegmentation.from_pretrained(path)) is MaskFormerForUniversalSegmentation


WITHOUT_PACKAGE = """
import json, sys
sys.modules["maskformer_hf"] = None  # not installed
import torch, transformers
from transformers import AutoConfig, AutoModel, AutoImageProcessor
path = sys.argv[1]
found = {}
for auto in ("AutoConfig", "AutoModel", "AutoModelForUniversalSegmentation", "AutoModelForImageSegmentation",
             "AutoModelForInstanceSegmentation", "AutoImageProcessor"):
    obj = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True)
    found[auto] = type(obj).__module__.split(".")[0] + "." + type(obj).__name__
    if auto == "AutoModelForUniversalSegmentation":
        with torch.no_grad():
            pixels = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
            found["logits_sum"] = float(obj.eval()(pixel_values=pixels).masks_queries_logits.double().sum())
print(json.dumps(found))
"""


@pytest.mark.system
def test_every_auto_class_builds_ours_from_the_saved_code_without_the_package(folders, tmp_path):
    root, expected = folders
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE, str(root / "ours")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("logits_sum") == pytest.approx(expected, rel=1e-6)
    model = "transformers_modules.MaskFormerHfForUniversalSegmentation"
    assert found == {"AutoConfig": "transformers_modules.MaskFormerHfConfig",
                     "AutoModel": "transformers_modules.MaskFormerHfModel",
                     "AutoModelForUniversalSegmentation": model, "AutoModelForImageSegmentation": model,
                     "AutoModelForInstanceSegmentation": model,
                     "AutoImageProcessor": "transformers_modules.MaskFormerHfImageProcessor"}
