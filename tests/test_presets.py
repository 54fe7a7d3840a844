"""Every paper variant builds offline with the paper's parameter count (on the meta device: nothing
allocated); one variant per code path runs; the test-tiny preset is tiny and runs."""

import pytest
import torch

from maskformer_hf import PRESETS, MaskFormerConfig, MaskFormerForUniversalSegmentation
from maskformer_hf.configuration_maskformer import PAPER_PRESETS

# The paper's parameter counts at 150 classes (ADE20K); resnet101c has none of its own (its deep stem adds
# about 0.1M to ResNet-101's).
PAPER_PARAMS = {"resnet50": 41e6, "resnet101": 60e6, "resnet101c": 60e6, "resnet50-6enc": 45e6, "resnet101-6enc": 64e6,
                "swin-tiny": 42e6, "swin-small": 63e6, "swin-base": 102e6, "swin-large": 212e6}
# One preset per code path (timm ResNet, its deep stem, the encoder feeding the FPN, MaskFormer-Swin); the
# others differ from one of these in sizes only, which the parameter counts check.
RUN = ["resnet50", "resnet101c", "resnet50-6enc", "swin-tiny"]


def parameter_count(name: str) -> int:
    with torch.device("meta"):
        model = MaskFormerForUniversalSegmentation(MaskFormerConfig.from_preset(name, num_labels=150))
    assert all(p.is_meta for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_builds_offline_with_its_parameter_count(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_params = parameter_count(name)
    assert abs(n_params / PAPER_PARAMS[name] - 1) <= 0.03, f"{name}: {n_params / 1e6:.2f}M parameters"


def test_meta_counts_are_the_allocated_counts():
    allocated = MaskFormerForUniversalSegmentation(MaskFormerConfig.from_preset("resnet50", num_labels=150))
    assert parameter_count("resnet50") == sum(p.numel() for p in allocated.parameters())


@pytest.mark.parametrize("name", RUN)
def test_preset_runs(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MaskFormerForUniversalSegmentation(MaskFormerConfig.from_preset(name, num_labels=150)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), output_auxiliary_logits=True)
    assert out.class_queries_logits.shape == (1, 100, 151)
    assert out.masks_queries_logits.shape == (1, 100, 16, 24)
    assert len(out.auxiliary_logits) == 5
    assert torch.isfinite(out.masks_queries_logits).all()


def test_test_tiny_preset_is_tiny_and_runs():
    assert set(PRESETS) == {*PAPER_PRESETS, "test-tiny"} and set(PAPER_PRESETS) == set(PAPER_PARAMS)
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(MaskFormerConfig.from_preset("test-tiny", num_labels=5)).eval()
    assert sum(p.numel() for p in model.parameters()) < 1e6
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.class_queries_logits.shape == (2, 12, 6) and out.masks_queries_logits.shape == (2, 12, 16, 16)
