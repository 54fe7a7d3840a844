"""Parity with transformers' MaskFormer (the oracle) on converted weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForUniversalSegmentation

from maskformer_hf import MaskFormerForUniversalSegmentation, convert_from_transformers
from maskformer_hf.conversion import config_from_transformers, convert_key, convert_state_dict

from conftest import tiny_hf_model

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(96, 160), (200, 328), (64, 64), (77, 131)]


def max_diffs(hf_model, model, pixel_values):
    with torch.no_grad():
        theirs = hf_model(pixel_values=pixel_values)
        ours = model(pixel_values=pixel_values)
    return (
        (theirs.class_queries_logits - ours.class_queries_logits).abs().max().item(),
        (theirs.masks_queries_logits - ours.masks_queries_logits).abs().max().item(),
    )


@pytest.mark.parametrize("size", SIZES)
def test_parity_converted_model(hf_kind, size):
    hf_model = tiny_hf_model(hf_kind)
    model = convert_from_transformers(hf_model)
    torch.manual_seed(1)
    pixel_values = torch.randn(1, 3, *size)
    class_diff, mask_diff = max_diffs(hf_model, model, pixel_values)
    assert class_diff <= 1e-4 and mask_diff <= 1e-4
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
    assert out.masks_queries_logits.shape == (1, 10, -(-size[0] // 4), -(-size[1] // 4))


def test_config_values_carry_over():
    hf_model = tiny_hf_model("swin", num_labels=7)
    hf_model.config.id2label = {i: f"class{i}" for i in range(7)}
    hf_model.config.mask_weight = 13.0
    config = config_from_transformers(hf_model.config)
    assert (config.num_queries, config.hidden_size, config.decoder_layers) == (10, 64, 3)
    assert (config.decoder_attention_heads, config.decoder_ffn_dim) == (4, 96)
    assert (config.fpn_feature_size, config.mask_feature_size, config.mask_weight) == (32, 32, 13.0)
    assert config.num_labels == 7 and config.id2label[3] == "class3"
    assert config.use_auxiliary_loss is False  # transformers' default, carried over


def test_from_pretrained_reads_a_transformers_folder(tmp_path, hf_kind):
    hf_model = tiny_hf_model(hf_kind)
    hf_model.save_pretrained(tmp_path)  # on disk: transformers 4.x key names (out_proj, fc1)
    model = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path)
    assert isinstance(model, MaskFormerForUniversalSegmentation)
    class_diff, mask_diff = max_diffs(hf_model, model, torch.randn(1, 3, 96, 128))
    assert class_diff <= 1e-4 and mask_diff <= 1e-4


def test_from_pretrained_on_a_transformers_folder_honours_loading_arguments(tmp_path):
    hf_model = tiny_hf_model("resnet")
    hf_model.save_pretrained(tmp_path)
    resized = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True,
                                                                 use_auxiliary_loss=True)
    assert resized.config.num_labels == 3 and resized.config.use_auxiliary_loss is True
    assert resized.class_predictor.weight.shape[0] == 4 and torch.isfinite(resized.class_predictor.weight).all()
    model, info = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    class_diff, mask_diff = max_diffs(hf_model, model, torch.randn(1, 3, 64, 64))
    assert class_diff <= 1e-4 and mask_diff <= 1e-4
    half = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_both_key_generations_map_to_the_same_names():
    hf_model = tiny_hf_model("swin")
    new_names = hf_model.state_dict()  # transformers 5 names (o_proj, mlp.fc1)
    assert any(".o_proj." in k for k in new_names) and any(".mlp.fc1." in k for k in new_names)
    old_names = {k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc"): v for k, v in new_names.items()}
    assert convert_state_dict(new_names).keys() == convert_state_dict(old_names).keys()
    ours = MaskFormerForUniversalSegmentation(convert_from_transformers(hf_model).config)
    ours.load_state_dict(convert_state_dict(old_names), strict=True)


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="no rule"):
        convert_key("model.something_new.weight")
    assert convert_key("criterion.empty_weight") is None


@pytest.mark.system
def test_convert_script(tmp_path):
    hf_model = tiny_hf_model("resnet")
    src, dst = tmp_path / "src", tmp_path / "dst"
    hf_model.save_pretrained(src)
    subprocess.run([sys.executable, str(ROOT / "scripts/convert_transformers_checkpoint.py"), str(src), str(dst)],
                   check=True, capture_output=True)
    assert (dst / "model.safetensors").is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(dst / "README.md")
    assert f"converted from {src}" in card.text and "| classes | 5 " in card.text
    assert card.data.pipeline_tag == "image-segmentation" and card.data.license == "other"
    assert json.loads((dst / "conversion_info.json").read_text())["format"] == "transformers"
    # The CLI: a folder that is no MaskFormer checkpoint is a clear error, exit status 2.
    from maskformer_hf.cli import main as cli_main

    (tmp_path / "empty").mkdir()
    assert cli_main(["convert", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    model = AutoModelForUniversalSegmentation.from_pretrained(dst)
    assert isinstance(model, MaskFormerForUniversalSegmentation)
    class_diff, mask_diff = max_diffs(hf_model, model.eval(), torch.randn(1, 3, 64, 96))
    assert class_diff <= 1e-4 and mask_diff <= 1e-4
