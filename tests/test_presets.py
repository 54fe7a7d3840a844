"""Every paper variant builds offline and runs; parameter counts match the paper's table."""

import pytest
import torch

from maskformer_hf import PRESETS, MaskFormerConfig, MaskFormerForUniversalSegmentation

# SPEC §6, at 150 classes (ADE20K).
PAPER_PARAMS = {"resnet50": 41e6, "resnet101": 60e6, "swin-tiny": 42e6, "swin-large": 212e6}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_offline_and_runs(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MaskFormerForUniversalSegmentation(MaskFormerConfig.from_preset(name, num_labels=150)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), output_auxiliary_logits=True)
    assert out.class_queries_logits.shape == (1, 100, 151)
    assert out.masks_queries_logits.shape == (1, 100, 16, 24)
    assert len(out.auxiliary_logits) == 5
    assert torch.isfinite(out.masks_queries_logits).all()
    n_params = sum(p.numel() for p in model.parameters())
    if name in PAPER_PARAMS:
        assert abs(n_params / PAPER_PARAMS[name] - 1) <= 0.03, f"{name}: {n_params / 1e6:.2f}M parameters"
