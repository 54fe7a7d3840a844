"""The recipe pieces: parameter groups, schedule, recipe files, distributed num_masks."""

import pytest
import torch

from maskformer_hf import MaskFormerForUniversalSegmentation
from maskformer_hf.training import (RECIPES_DIR, TrainConfig, create_optimizer_and_scheduler, global_num_masks,
                                    parameter_groups)

from conftest import tiny_config, tiny_hf_backbone_config


def test_parameter_groups_split_backbone_and_no_decay():
    model = MaskFormerForUniversalSegmentation(tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config("swin")))
    groups = parameter_groups(model, learning_rate=1e-3, weight_decay=0.05, backbone_lr_multiplier=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    # Backbone at 0.1x; a Swin position table and LayerNorms without decay; convs and linears with it.
    table = next(n for n in by_name if "relative_position_bias_table" in n)
    assert by_name[table] == {**by_name[table], "lr": pytest.approx(1e-4), "weight_decay": 0.0}
    assert by_name["model.backbone.body.model.embeddings.patch_embeddings.projection.weight"]["weight_decay"] == 0.05
    assert by_name["model.pixel_decoder.stem.norm.weight"]["weight_decay"] == 0.0
    assert by_name["model.pixel_decoder.stem.conv.weight"] == {**by_name["model.pixel_decoder.stem.conv.weight"],
                                                               "lr": 1e-3, "weight_decay": 0.05}
    assert by_name["model.transformer_module.query_embeddings.weight"]["weight_decay"] == 0.0
    assert by_name["model.transformer_module.decoder_norm.bias"]["weight_decay"] == 0.0
    assert by_name["class_predictor.weight"]["weight_decay"] == 0.05
    assert len(groups) == 4  # (backbone or not) x (decay or not)


def test_transformer_lr_multiplier_scales_the_decoder_and_heads_only():
    model = MaskFormerForUniversalSegmentation(tiny_config())
    groups = parameter_groups(model, learning_rate=1e-3, weight_decay=0.05, backbone_lr_multiplier=0.1,
                              transformer_lr_multiplier=3.0)
    names = {id(p): n for n, p in model.named_parameters()}
    lr = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert len(lr) == len(list(model.parameters()))
    for name, value in lr.items():
        if name.startswith(("model.transformer_module.", "class_predictor.", "mask_embedder.")):
            assert value == pytest.approx(3e-3), name
        elif name.startswith("model.backbone."):
            assert value == pytest.approx(1e-4), name
        else:
            assert name.startswith("model.pixel_decoder.") and value == pytest.approx(1e-3), name
    assert any(n.startswith("model.transformer_module.query_embeddings") for n in lr)
    config = TrainConfig(learning_rate=1e-3, backbone_lr_multiplier=0.1, transformer_lr_multiplier=3.0)
    optimizer, _ = create_optimizer_and_scheduler(model, config)
    assert sorted({round(g["initial_lr"], 6) for g in optimizer.param_groups}) == [1e-4, 1e-3, 3e-3]


def test_warmup_then_poly_schedule():
    model = torch.nn.Linear(2, 2)
    config = TrainConfig(learning_rate=1.0, warmup_steps=10, max_steps=110, poly_power=0.9)
    optimizer, scheduler = create_optimizer_and_scheduler(model, config)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx((1 - 50 / 100) ** 0.9)
    assert lrs[109] == pytest.approx((1 - 99 / 100) ** 0.9)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_shipped_recipes_load(recipe):
    config = TrainConfig.from_file(recipe, data_dir="/somewhere", max_steps=5)
    assert config.data_dir == "/somewhere" and config.max_steps == 5
    if recipe not in ("demo", "small-data"):  # the paper recipes clip the full model's gradient at 0.01
        assert config.max_grad_norm == 0.01


def test_recipe_errors(tmp_path):
    with pytest.raises(ValueError, match="not a shipped recipe"):
        TrainConfig.from_file("no-such-recipe")
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rat": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        TrainConfig.from_file(bad)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


def test_global_num_masks():
    labels = [torch.zeros(3), torch.zeros(5)]
    assert global_num_masks(labels).item() == 8
    # Two processes: the other holds 4 segments; the sum (12) is shared out over the 2 processes.
    assert global_num_masks(labels, reduce_sum=lambda t: t + 4, world_size=2).item() == 6
