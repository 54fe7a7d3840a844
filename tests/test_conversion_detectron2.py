"""Conversion of the original detectron2 MaskFormer checkpoints (``model_final_*.pkl``).

The tests write checkpoints in detectron2's layout themselves: random values, stored under
detectron2's key names and, by this file's own module-by-module table, copied into a reference
model. The converted model must match the reference exactly.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from maskformer_hf import (
    MaskFormerConfig,
    MaskFormerForUniversalSegmentation,
    convert_checkpoint,
    convert_from_detectron2,
)
from maskformer_hf.conversion_detectron2 import (
    config_from_detectron2,
    convert_detectron2_state_dict,
    is_detectron2_checkpoint,
)
from maskformer_hf.data import ADE20K_150_CLASSES

from conftest import tiny_hf_model

ROOT = Path(__file__).resolve().parents[1]
TINY_SWIN = {"model_type": "maskformer-swin", "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
             "window_size": 4, "out_features": ["stage1", "stage2", "stage3", "stage4"]}


class Detectron2Writer:
    """Random values stored twice: under a detectron2 key (the checkpoint) and into a reference module."""

    def __init__(self, seed: int = 0, meta: bool = False) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.meta = meta  # shapes only (a model built on the meta device)
        self.state: dict = {}

    def _store(self, key: str, value: torch.Tensor) -> None:
        assert key not in self.state, key
        self.state[key] = value if self.meta else value.numpy().copy()

    def put(self, key: str, target: torch.Tensor, scale: float | None = None, offset: float = 0.0) -> None:
        if self.meta:
            return self._store(key, torch.empty_like(target))
        if scale is None:  # weights ~ 1 / sqrt(fan in), biases small
            scale = (target[0].numel() ** -0.5) if target.dim() > 1 else 0.1
        value = offset + scale * torch.randn(target.shape, generator=self.generator)
        with torch.no_grad():
            target.copy_(value)
        self._store(key, value)

    def linear(self, key: str, module: nn.Module) -> None:  # also convolutions
        self.put(f"{key}.weight", module.weight)
        if module.bias is not None:
            self.put(f"{key}.bias", module.bias)

    def norm(self, key: str, module: nn.Module) -> None:  # LayerNorm, GroupNorm, (Frozen)BatchNorm
        self.put(f"{key}.weight", module.weight, 0.1, 1.0)
        self.put(f"{key}.bias", module.bias, 0.1)
        if isinstance(module, nn.BatchNorm2d):
            self.put(f"{key}.running_mean", module.running_mean, 0.1)
            self.put(f"{key}.running_var", module.running_var, 0.1, 1.0)

    def packed(self, weight_key: str, bias_key: str, projections: list[nn.Linear]) -> None:
        """q, k, v concatenated along dim 0 under one key (detectron2's ``in_proj_weight`` / ``qkv``)."""
        if self.meta:
            self._store(weight_key, torch.cat([p.weight for p in projections]))
            return self._store(bias_key, torch.cat([p.bias for p in projections]))
        weight = torch.randn(3 * projections[0].out_features, projections[0].in_features, generator=self.generator)
        weight *= projections[0].in_features ** -0.5
        bias = 0.1 * torch.randn(3 * projections[0].out_features, generator=self.generator)
        with torch.no_grad():
            for projection, w, b in zip(projections, weight.chunk(3), bias.chunk(3)):
                projection.weight.copy_(w)
                projection.bias.copy_(b)
        self._store(weight_key, weight)
        self._store(bias_key, bias)

    def save(self, path: Path) -> Path:
        with open(path, "wb") as f:
            pickle.dump({"model": self.state, "__author__": "test", "matching_heuristics": True}, f)
        return path


def write_resnet(w: Detectron2Writer, body: nn.Module, deep_stem: bool = False) -> None:
    if deep_stem:  # timm's conv1 = (conv, bn, relu, conv, bn, relu, conv), then bn1
        stem = [(body.conv1[0], body.conv1[1]), (body.conv1[3], body.conv1[4]), (body.conv1[6], body.bn1)]
    else:
        stem = [(body.conv1, body.bn1)]
    for index, (conv, bn) in enumerate(stem, start=1):
        w.linear(f"backbone.stem.conv{index}", conv)
        w.norm(f"backbone.stem.conv{index}.norm", bn)
    for stage, layer in zip(range(2, 6), (body.layer1, body.layer2, body.layer3, body.layer4)):
        for i, block in enumerate(layer):
            prefix = f"backbone.res{stage}.{i}"
            for k in (1, 2, 3):
                if hasattr(block, f"conv{k}"):
                    w.linear(f"{prefix}.conv{k}", getattr(block, f"conv{k}"))
                    w.norm(f"{prefix}.conv{k}.norm", getattr(block, f"bn{k}"))
            if block.downsample is not None:
                w.linear(f"{prefix}.shortcut", block.downsample[0])
                w.norm(f"{prefix}.shortcut.norm", block.downsample[1])


def write_swin(w: Detectron2Writer, body: nn.Module) -> None:
    swin = body.model
    w.linear("backbone.patch_embed.proj", swin.embeddings.patch_embeddings.projection)
    w.norm("backbone.patch_embed.norm", swin.embeddings.norm)
    for i, stage in enumerate(swin.encoder.layers):
        for j, block in enumerate(stage.blocks):
            prefix = f"backbone.layers.{i}.blocks.{j}"
            attention = block.attention.self
            w.norm(f"{prefix}.norm1", block.layernorm_before)
            w.put(f"{prefix}.attn.relative_position_bias_table", attention.relative_position_bias_table, 0.5)
            w._store(f"{prefix}.attn.relative_position_index", attention.relative_position_index.clone())
            w.packed(f"{prefix}.attn.qkv.weight", f"{prefix}.attn.qkv.bias",
                     [attention.query, attention.key, attention.value])
            w.linear(f"{prefix}.attn.proj", block.attention.output.dense)
            w.norm(f"{prefix}.norm2", block.layernorm_after)
            w.linear(f"{prefix}.mlp.fc1", block.intermediate.dense)
            w.linear(f"{prefix}.mlp.fc2", block.output.dense)
        if stage.downsample is not None:
            w.linear(f"backbone.layers.{i}.downsample.reduction", stage.downsample.reduction)
            w.norm(f"backbone.layers.{i}.downsample.norm", stage.downsample.norm)
    for i, norm in enumerate(body.hidden_states_norms):
        w.norm(f"backbone.norm{i}", norm)


def write_attention(w: Detectron2Writer, key: str, attention: nn.Module) -> None:
    w.packed(f"{key}.in_proj_weight", f"{key}.in_proj_bias", [attention.q_proj, attention.k_proj, attention.v_proj])
    w.linear(f"{key}.out_proj", attention.out_proj)


def write_head(w: Detectron2Writer, model: MaskFormerForUniversalSegmentation) -> None:
    decoder = model.model.pixel_decoder
    w.linear("sem_seg_head.pixel_decoder.layer_4", decoder.stem.conv)
    w.norm("sem_seg_head.pixel_decoder.layer_4.norm", decoder.stem.norm)
    # Ours run coarse to fine (res4, res3, res2); detectron2 numbers res2..res4 as 1..3.
    for level, lateral, output in zip((3, 2, 1), decoder.lateral_convs, decoder.output_convs):
        w.linear(f"sem_seg_head.pixel_decoder.adapter_{level}", lateral.conv)
        w.norm(f"sem_seg_head.pixel_decoder.adapter_{level}.norm", lateral.norm)
        w.linear(f"sem_seg_head.pixel_decoder.layer_{level}", output.conv)
        w.norm(f"sem_seg_head.pixel_decoder.layer_{level}.norm", output.norm)
    w.linear("sem_seg_head.pixel_decoder.mask_features", decoder.mask_projection)
    module, p = model.model.transformer_module, "sem_seg_head.predictor."
    # "R50 + 6 Enc" (TransformerEncoderPixelDecoder): projection and encoder live in the pixel decoder.
    encoder_home = "sem_seg_head.pixel_decoder." if model.config.encoder_feeds_pixel_decoder else p
    w.put(p + "query_embed.weight", module.query_embeddings.weight, 1.0)
    if isinstance(module.input_projection, nn.Conv2d):
        w.linear(encoder_home + "input_proj", module.input_projection)
    for i, layer in enumerate(module.encoder_layers):
        key = f"{encoder_home}transformer.encoder.layers.{i}."
        write_attention(w, key + "self_attn", layer.self_attn)
        w.linear(key + "linear1", layer.ffn.fc1)
        w.linear(key + "linear2", layer.ffn.fc2)
        w.norm(key + "norm1", layer.self_attn_layer_norm)
        w.norm(key + "norm2", layer.final_layer_norm)
    for i, layer in enumerate(module.decoder_layers):
        key = f"{p}transformer.decoder.layers.{i}."
        write_attention(w, key + "self_attn", layer.self_attn)
        write_attention(w, key + "multihead_attn", layer.cross_attn)
        w.linear(key + "linear1", layer.ffn.fc1)
        w.linear(key + "linear2", layer.ffn.fc2)
        w.norm(key + "norm1", layer.self_attn_layer_norm)
        w.norm(key + "norm2", layer.cross_attn_layer_norm)
        w.norm(key + "norm3", layer.final_layer_norm)
    w.norm(p + "transformer.decoder.norm", module.decoder_norm)
    w.linear(p + "class_embed", model.class_predictor)
    for i, layer in enumerate(model.mask_embedder.layers):
        w.linear(f"{p}mask_embed.layers.{i}", layer)
    w._store("criterion.empty_weight", torch.ones(model.config.num_labels + 1))


def reference_and_checkpoint(config: MaskFormerConfig, deep_stem: bool = False, seed: int = 0, meta: bool = False):
    """A reference model of ``config`` and the detectron2 state dict holding its (random) weights."""
    with torch.device("meta" if meta else "cpu"):
        model = MaskFormerForUniversalSegmentation(config).eval()
    writer = Detectron2Writer(seed, meta)
    if config.backbone_config is not None:
        write_swin(writer, model.model.backbone.body)
    else:
        write_resnet(writer, model.model.backbone.body, deep_stem)
    write_head(writer, model)
    return model, writer


def assert_same_outputs(reference, converted, sizes) -> None:
    torch.manual_seed(0)
    for size in sizes:
        pixel_values = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, actual = reference(pixel_values=pixel_values), converted(pixel_values=pixel_values)
        torch.testing.assert_close(actual.class_queries_logits, expected.class_queries_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(actual.masks_queries_logits, expected.masks_queries_logits, atol=1e-5, rtol=1e-5)


def tiny_swin_config(**overrides) -> MaskFormerConfig:
    # hidden_size 256 = the stage-4 width: no input projection, as detectron2 with ENFORCE_INPUT_PROJ False.
    values = dict(backbone=None, backbone_config=TINY_SWIN, num_labels=150, num_queries=5, hidden_size=256,
                  decoder_layers=2, decoder_ffn_dim=64, fpn_feature_size=32, mask_feature_size=32)
    values.update(overrides)
    return MaskFormerConfig(**values)


@pytest.fixture(scope="module")
def swin_case(tmp_path_factory):
    """(reference model, detectron2 state dict of numpy arrays, the .pkl written from it)."""
    reference, writer = reference_and_checkpoint(tiny_swin_config())
    path = writer.save(tmp_path_factory.mktemp("d2") / "model_final_test.pkl")
    return reference, writer.state, path


# ---------------------------------------------------------------------------------------------
def test_resnet50_checkpoint_converts_to_the_same_model(tmp_path):
    config = MaskFormerConfig.from_preset("resnet50", num_labels=5, num_queries=6, hidden_size=64, decoder_layers=2,
                                          decoder_ffn_dim=48, decoder_attention_heads=4, encoder_layers=1,
                                          encoder_ffn_dim=40, encoder_attention_heads=4, fpn_feature_size=32,
                                          mask_feature_size=24)
    reference, writer = reference_and_checkpoint(config)
    path = writer.save(tmp_path / "model_final_test.pkl")
    converted = convert_from_detectron2(path, decoder_attention_heads=4)
    assert not converted.training
    got = converted.config
    assert (got.backbone, got.backbone_kwargs, got.use_pretrained_backbone) == ("resnet50", {}, False)
    assert (got.num_queries, got.hidden_size, got.decoder_layers, got.decoder_ffn_dim) == (6, 64, 2, 48)
    assert (got.encoder_layers, got.encoder_ffn_dim, got.encoder_attention_heads) == (1, 40, 4)
    assert (got.fpn_feature_size, got.mask_feature_size, got.num_labels) == (32, 24, 5)
    assert got.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert_same_outputs(reference, converted, [(64, 64), (96, 64)])


def test_swin_checkpoint_converts_to_the_same_model(swin_case):
    reference, _, path = swin_case
    converted = convert_from_detectron2(path)
    swin = converted.config.backbone_config
    assert (swin.embed_dim, swin.depths, swin.num_heads, swin.window_size) == (32, [1, 1, 2, 1], [1, 2, 2, 4], 4)
    assert isinstance(converted.model.transformer_module.input_projection, nn.Identity)
    assert converted.config.decoder_attention_heads == 8
    assert converted.config.id2label[0] == ADE20K_150_CLASSES[0] and len(converted.config.id2label) == 150
    assert_same_outputs(reference, converted, [(64, 64), (72, 100)])


def test_deep_stem_checkpoints_are_refused_but_their_keys_map():
    """The release's R101c (DeepLab stem) has multi-grid dilations in res5 that the weights do not show
    and our resnet101c lacks: converting it would build a different network, so it is refused."""
    config = MaskFormerConfig(backbone="resnet18", backbone_kwargs={"stem_type": "deep", "stem_width": 64},
                              num_labels=3, num_queries=4, hidden_size=64, decoder_layers=1, decoder_ffn_dim=32,
                              decoder_attention_heads=4, fpn_feature_size=32, mask_feature_size=32)
    reference, writer = reference_and_checkpoint(config, deep_stem=True)
    with pytest.raises(ValueError, match="multi-grid"):
        convert_from_detectron2(writer.state, decoder_attention_heads=4)
    tensors = {k: torch.from_numpy(v) for k, v in writer.state.items()}
    converted, origin = convert_detectron2_state_dict(tensors)  # the three stem convolutions map
    assert origin["model.backbone.body.conv1.3.weight"] == "backbone.stem.conv2.weight"
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in converted.items()} == expected


@pytest.mark.parametrize("preset, deep_stem", [("resnet101c", True), ("resnet101", False)])
def test_resnet101_layouts_infer_their_preset(preset, deep_stem):
    """Shapes only (a model on the meta device): the inferred config and the full key map."""
    config = MaskFormerConfig.from_preset(preset, num_labels=3, num_queries=4, hidden_size=64, decoder_layers=1,
                                          decoder_ffn_dim=32, fpn_feature_size=32, mask_feature_size=32)
    reference, writer = reference_and_checkpoint(config, deep_stem=deep_stem, meta=True)
    if deep_stem:
        with pytest.raises(ValueError, match="multi-grid"):
            config_from_detectron2(writer.state)
    else:
        inferred = config_from_detectron2(writer.state)
        assert inferred.to_dict() == {**config.to_dict(), "id2label": inferred.id2label, "label2id": inferred.label2id}
    converted, _ = convert_detectron2_state_dict(writer.state)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in converted.items()} == expected


def test_every_key_must_be_consumed(swin_case):
    _, state, _ = swin_case
    with pytest.raises(ValueError, match=r"sem_seg_head\.predictor\.extra\.weight"):
        convert_from_detectron2({**state, "sem_seg_head.predictor.extra.weight": np.zeros(3, np.float32)})
    # A key that a rule renames but the model has no place for is named by its detectron2 name.
    with pytest.raises(ValueError, match=r"no place in the model: \['backbone\.norm7\.weight'\]"):
        convert_from_detectron2({**state, "backbone.norm7.weight": np.zeros(3, np.float32)})


def test_every_model_key_must_be_filled(swin_case):
    _, state, _ = swin_case
    state = {k: v for k, v in state.items() if k != "sem_seg_head.pixel_decoder.layer_1.norm.bias"}
    with pytest.raises(ValueError, match=r"does not fill: \['model\.pixel_decoder\.output_convs\.2\.norm\.bias'\]"):
        convert_from_detectron2(state)


def test_relative_position_index_is_verified(swin_case):
    _, state, _ = swin_case
    key = "backbone.layers.0.blocks.0.attn.relative_position_index"
    wrong = state[key].copy()
    wrong[0, 0] += 1
    with pytest.raises(ValueError, match="relative_position_index differs"):
        convert_from_detectron2({**state, key: wrong})


def test_six_enc_checkpoint_with_the_encoder_in_the_pixel_decoder(tmp_path):
    """The original "R50 + 6 Enc" layout: the encoder's output feeds the FPN top and the predictor."""
    config = MaskFormerConfig.from_preset("resnet50-6enc", num_labels=4, num_queries=5, hidden_size=64,
                                          decoder_layers=2, decoder_ffn_dim=48, decoder_attention_heads=4,
                                          encoder_layers=2, encoder_ffn_dim=40, encoder_attention_heads=4,
                                          fpn_feature_size=32, mask_feature_size=24)
    reference, writer = reference_and_checkpoint(config, seed=3)
    assert "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.linear2.weight" in writer.state
    assert "sem_seg_head.pixel_decoder.input_proj.weight" in writer.state
    assert not any(k.startswith("sem_seg_head.predictor.input_proj") for k in writer.state)
    assert writer.state["sem_seg_head.pixel_decoder.layer_4.weight"].shape[1] == 64  # the stem reads the encoder
    converted = convert_from_detectron2(writer.save(tmp_path / "model_final_6enc.pkl"), decoder_attention_heads=4)
    got = converted.config
    assert (got.encoder_layers, got.encoder_feeds_pixel_decoder, got.encoder_ffn_dim) == (2, True, 40)
    assert_same_outputs(reference, converted, [(64, 64), (96, 64)])
    # A second projection in the predictor has no place in this layout.
    extra = {**writer.state, "sem_seg_head.predictor.input_proj.weight": np.zeros((64, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="not supported"):
        convert_from_detectron2(extra)


def test_wrong_number_of_class_names_is_refused(swin_case):
    _, state, _ = swin_case
    with pytest.raises(ValueError, match="150 classes"):
        convert_from_detectron2(state, id2label=["a", "b"])


def test_reading_a_pickle_warns_and_loads_arrays_only(swin_case, tmp_path, caplog):
    _, state, path = swin_case
    with caplog.at_level(logging.WARNING, logger="maskformer_hf.checkpoints"):
        convert_from_detectron2(path)
    assert any("can run code" in r.getMessage() and "trusted source" in r.getMessage() for r in caplog.records)

    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    evil = tmp_path / "model_final_evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": Payload()}}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        convert_from_detectron2(evil)


def test_pth_checkpoints_of_tensors_are_accepted(swin_case, tmp_path):
    reference, state, _ = swin_case
    path = tmp_path / "model_final_test.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "iteration": 3}, path)
    assert is_detectron2_checkpoint(path)
    assert_same_outputs(reference, convert_from_detectron2(path), [(64, 64)])


def test_is_detectron2_checkpoint(swin_case, tmp_path):
    _, _, path = swin_case
    assert is_detectron2_checkpoint(path)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"model": {"layer.weight": np.zeros(2)}}))
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert not any(is_detectron2_checkpoint(p) for p in (other, text, folder, tmp_path / "missing.pkl"))


def test_convert_checkpoint_round_trip(swin_case, tmp_path):
    reference, state, _ = swin_case
    mean, std = np.array([100.0, 110.0, 120.0]).reshape(3, 1, 1), np.array([50.0, 60.0, 70.0]).reshape(3, 1, 1)
    src = tmp_path / "model_final_stats.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": {**state, "pixel_mean": mean, "pixel_std": std}}, f)
    model = convert_checkpoint(src, tmp_path / "dst", id2label={i: f"c{i}" for i in range(150)})
    assert model.config.id2label[7] == "c7"
    assert not (tmp_path / "dst" / "README.md").exists()
    loaded = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / "dst").eval()
    assert loaded.config.id2label[7] == "c7"
    assert_same_outputs(reference, loaded, [(64, 64)])
    processor = json.loads((tmp_path / "dst" / "preprocessor_config.json").read_text())
    np.testing.assert_allclose(processor["image_mean"], [100 / 255, 110 / 255, 120 / 255])
    np.testing.assert_allclose(processor["image_std"], [50 / 255, 60 / 255, 70 / 255])
    with pytest.raises(ValueError, match="neither a detectron2"):
        convert_checkpoint(tmp_path / "missing.pkl", tmp_path / "nowhere")


def test_convert_checkpoint_from_a_transformers_folder(tmp_path):
    hf_model = tiny_hf_model("resnet")
    src, dst = tmp_path / "src", tmp_path / "dst"
    hf_model.save_pretrained(src)
    source_processor = {"image_processor_type": "MaskFormerImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.2] * 3}
    (src / "preprocessor_config.json").write_text(json.dumps(source_processor))
    convert_checkpoint(src, dst, id2label=[f"k{i}" for i in range(5)])
    assert json.loads((dst / "preprocessor_config.json").read_text()) == source_processor
    loaded = MaskFormerForUniversalSegmentation.from_pretrained(dst).eval()
    assert loaded.config.id2label[4] == "k4" and loaded.config.label2id["k4"] == 4
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = hf_model(pixel_values=pixel_values), loaded(pixel_values=pixel_values)
    torch.testing.assert_close(actual.class_queries_logits, expected.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.system
def test_convert_script_on_a_pkl(swin_case, tmp_path):
    reference, _, path = swin_case
    dst = tmp_path / "dst"
    script = ROOT / "scripts/convert_transformers_checkpoint.py"
    done = subprocess.run([sys.executable, str(script), str(path), str(dst)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trusted source" in done.stderr
    card = (dst / "README.md").read_text()
    assert str(path) in card and "| classes | 150 (wall, building" in card and "maskformer-hf convert" in card
    assert json.loads((dst / "conversion_info.json").read_text())["format"] == "detectron2"
    processor = json.loads((dst / "preprocessor_config.json").read_text())
    np.testing.assert_allclose(processor["image_mean"], [0.485, 0.456, 0.406])
    assert_same_outputs(reference, MaskFormerForUniversalSegmentation.from_pretrained(dst).eval(), [(64, 64)])


@pytest.mark.system
def test_checkpoint_reading_needs_nothing_from_the_package():
    """checkpoints.py runs as a standalone module (no package around it): it imports no part of ours."""
    path = ROOT / "src/maskformer_hf/checkpoints.py"
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("standalone_checkpoints", {str(path)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.load_checkpoint_state_dict) and not hasattr(module, "pickle")
print(sorted(name for name in sys.modules if name.startswith("maskformer_hf")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
