"""transformers' MaskFormer contracts, met by our classes: what its own tests (ModelTesterMixin,
ConfigTester, the MaskFormer tester) and scripts ask of a config and a model. transformers 5.24 is
the oracle wherever it has the same concept.

Kept apart on purpose (SPEC §7): ``pixel_mask`` is honoured, ``use_auxiliary_loss`` supervises
``decoder_layers - 1`` earlier layers (transformers: ``decoder_layers``), padded mask labels are 0.
"""

import copy
import inspect

import pytest
import torch
from transformers import AutoConfig, DetrConfig, SwinConfig
from transformers import MaskFormerConfig as HFMaskFormerConfig
from transformers import MaskFormerForInstanceSegmentation, MaskFormerModel as HFMaskFormerModel

from maskformer_hf import (MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerModel,
                           convert_from_transformers)

from conftest import tiny_config, tiny_hf_backbone_config, tiny_hf_model


def maskformer_tester_configs():
    """The configs of transformers' MaskFormer tester (``MaskFormerModelTester.get_config``): theirs, ours."""
    def kwargs():
        return dict(
            backbone_config=SwinConfig(depths=[1, 1, 1, 1], embed_dim=16, hidden_size=32, num_heads=[1, 1, 2, 2]),
            decoder_config=DetrConfig(decoder_ffn_dim=64, decoder_layers=2, decoder_attention_heads=2,
                                      encoder_ffn_dim=64, encoder_layers=2, encoder_attention_heads=2,
                                      num_queries=10, d_model=32),
            mask_feature_size=32, fpn_feature_size=32, num_channels=3, num_labels=4)
    return HFMaskFormerConfig(**kwargs()), MaskFormerConfig.from_backbone_and_decoder_configs(backbone=None, **kwargs())


def swin_model(seed: int = 0, **overrides) -> MaskFormerForUniversalSegmentation:
    torch.manual_seed(seed)
    config = tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config("swin"), **overrides)
    return MaskFormerForUniversalSegmentation(config).eval()


# --- configuration ---------------------------------------------------------------------------------


def test_decoder_config_sets_the_transformer_as_in_transformers():
    hf_config, config = maskformer_tester_configs()
    detr = hf_config.decoder_config
    assert config.hidden_size == detr.d_model == 32
    assert (config.num_queries, config.decoder_layers, config.decoder_attention_heads, config.decoder_ffn_dim) == \
        (detr.num_queries, detr.decoder_layers, detr.decoder_attention_heads, detr.decoder_ffn_dim) == (10, 2, 2, 64)
    assert config.encoder_layers == 0  # transformers' MaskFormer builds no DETR encoder either
    # The models agree on every output shape.
    torch.manual_seed(0)
    theirs = MaskFormerForInstanceSegmentation(hf_config).eval()
    ours = MaskFormerForUniversalSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = theirs(pixel_values), ours(pixel_values)
    for key in expected.keys():
        assert got[key].shape == expected[key].shape, key
    assert sum(p.numel() for p in ours.model.transformer_module.parameters()) == \
        sum(p.numel() for p in theirs.model.transformer_module.parameters())


def test_decoder_config_dict_contradictions_and_view():
    config = MaskFormerConfig(decoder_config={"d_model": 64, "decoder_attention_heads": 4}, num_queries=10)
    assert (config.hidden_size, config.decoder_attention_heads, config.num_queries) == (64, 4, 10)  # flat kept
    assert config.decoder_config.d_model == 64 and config.decoder_config.num_queries == 10
    with pytest.raises(ValueError, match=r"MaskFormerConfig\.hidden_size: 128 contradicts decoder_config\.d_model=64"):
        MaskFormerConfig(decoder_config=DetrConfig(d_model=64), hidden_size=128)
    with pytest.raises(ValueError, match=r"num_queries: 10 contradicts decoder_config\.num_queries=100"):
        MaskFormerConfig(decoder_config={"num_queries": 100}, num_queries=10)  # a dict's named field counts
    assert MaskFormerConfig(decoder_config=DetrConfig(d_model=64), hidden_size=64).hidden_size == 64  # agreeing
    with pytest.raises(ValueError, match="decoder_config: expected a DETR config"):
        MaskFormerConfig(decoder_config={"model_type": "bert"})
    config.decoder_config = DetrConfig(d_model=32, decoder_attention_heads=2, decoder_layers=3)  # sets them all
    assert (config.hidden_size, config.decoder_layers, config.num_queries) == (32, 3, 100)
    # DETR's defaults are ours, so a DETR config's unset fields mean the same in both.
    from maskformer_hf.configuration_maskformer import DETR_FIELDS

    detr, ours = DetrConfig(), MaskFormerConfig()
    assert {theirs: getattr(detr, theirs) for theirs in DETR_FIELDS} == \
        {theirs: getattr(ours, name) for theirs, name in DETR_FIELDS.items()}


def test_transformers_config_fields_keep_their_meaning():
    hf_config = HFMaskFormerConfig(backbone_config=tiny_hf_backbone_config("resnet"), num_labels=3,
                                   decoder_config=DetrConfig(d_model=64, decoder_layers=2, decoder_attention_heads=4,
                                                             num_queries=6, dropout=0.2, activation_function="gelu"),
                                   mask_feature_size=64, fpn_feature_size=32, no_object_weight=0.2,
                                   use_auxiliary_loss=True, dice_weight=2.0, cross_entropy_weight=3.0, mask_weight=4.0,
                                   output_auxiliary_logits=True, init_std=0.03, init_xavier_std=0.5)
    fields = ["backbone_config", "decoder_config", "mask_feature_size", "fpn_feature_size", "no_object_weight",
              "use_auxiliary_loss", "dice_weight", "cross_entropy_weight", "mask_weight", "output_auxiliary_logits",
              "init_std", "init_xavier_std", "id2label"]
    saved = hf_config.to_dict()  # as config.json holds them
    config = MaskFormerConfig(backbone=None, **{name: saved[name] for name in fields})
    assert (config.hidden_size, config.decoder_layers, config.num_queries, config.dropout) == (64, 2, 6, 0.2)
    assert config.activation_function == "gelu" and config.num_labels == 3
    model = MaskFormerForUniversalSegmentation(config).eval()
    loss = model.criterion
    assert loss.no_object_weight == 0.2
    assert loss.weights == {"loss_cross_entropy": 3.0, "loss_mask": 4.0, "loss_dice": 2.0}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.pixel_decoder_last_hidden_state.shape[1] == 64  # mask_feature_size: the per-pixel embeddings
    assert model.model.pixel_decoder.stem.conv.out_channels == 32  # fpn_feature_size
    assert len(out.auxiliary_logits) == 1  # output_auxiliary_logits (ours: decoder_layers - 1 of them)
    assert (config.init_std, config.init_xavier_std) == (0.03, 0.5)  # kept (our layers use PyTorch's init)


def test_use_timm_backbone_false_reads_backbone_as_a_transformers_checkpoint(tmp_path):
    tiny_hf_backbone_config("resnet").save_pretrained(tmp_path)
    config = tiny_config(backbone=str(tmp_path), use_timm_backbone=False)
    assert config.backbone_config.model_type == "resnet"
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert MaskFormerConfig.from_dict(config.to_dict()).backbone_config.to_dict() == config.backbone_config.to_dict()
    model = MaskFormerModel(config)
    assert type(model.backbone.body).__name__ == "ResNetBackbone" and model.backbone.channels == [32, 64, 96, 128]
    assert MaskFormerConfig().use_timm_backbone is True  # ours: `backbone` names a timm model by default


def test_config_round_trips_and_declares_its_sub_config(tmp_path):
    """ConfigTester's checks: JSON string, JSON file and save_pretrained round trips; num_labels; sub_configs."""
    _, config = maskformer_tester_configs()
    assert type(config).sub_configs == {"backbone_config": AutoConfig}
    config.to_json_file(tmp_path / "config.json")
    assert MaskFormerConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "sub")
    loaded = MaskFormerConfig.from_pretrained(tmp_path / "sub")
    assert loaded.to_dict() == config.to_dict() and loaded.hidden_size == 32
    assert "decoder_config" not in config.to_dict()  # the flat fields are the one source
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3
    assert MaskFormerConfig(num_labels=5).num_labels == 5


# --- forward contract ------------------------------------------------------------------------------


def test_forward_signatures_follow_transformers():
    for ours, theirs in [(MaskFormerModel, HFMaskFormerModel),
                         (MaskFormerForUniversalSegmentation, MaskFormerForInstanceSegmentation)]:
        their_names = [n for n in inspect.signature(theirs.forward).parameters if n not in ("self", "kwargs")]
        our_names = [n for n in inspect.signature(ours.forward).parameters if n not in ("self", "kwargs")]
        assert our_names[:len(their_names)] == their_names
        assert ours.main_input_name == our_names[0] == "pixel_values"


def test_batch_tensor_labels_train_as_lists():
    """transformers' tester trains with (B, N, H, W) / (B, N) tensors; the loss equals the per-image lists'."""
    _, config = maskformer_tester_configs()
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(config).eval()  # eval: no dropout, the two losses compare
    pixel_values = torch.randn(2, 3, 64, 96)
    mask_labels = (torch.rand(2, 4, 64, 96) > 0.5).float()
    class_labels = (torch.rand(2, 4) > 0.5).long()
    with torch.no_grad():
        as_lists = model(pixel_values, mask_labels=list(mask_labels), class_labels=list(class_labels)).loss
        as_tensors = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
    torch.testing.assert_close(as_tensors, as_lists)
    out = model.train()(pixel_values, mask_labels=mask_labels, class_labels=class_labels)  # test_training
    assert out.loss.shape == torch.Size([])
    out.loss.backward()
    assert all(p.grad is not None for p in model.class_predictor.parameters())


def test_pixel_decoder_last_hidden_state_is_always_returned():
    hf_model = tiny_hf_model("swin")
    model = convert_from_transformers(hf_model)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = hf_model(pixel_values).pixel_decoder_last_hidden_state
        got = model(pixel_values).pixel_decoder_last_hidden_state
        base = model.model(pixel_values).pixel_decoder_last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, base)


def test_attentions_match_transformers_eager_attentions():
    hf_model = tiny_hf_model("swin")
    hf_model.set_attn_implementation("eager")  # transformers 5 returns attention weights only in eager mode
    model = convert_from_transformers(hf_model)
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = hf_model(pixel_values, output_attentions=True)
        got = model(pixel_values, output_attentions=True)  # ours: computed for the call, even under "sdpa"
    assert model.config._attn_implementation == "sdpa"
    assert len(got.attentions) == len(expected.attentions) == model.config.decoder_layers
    for ours, theirs in zip(got.attentions, expected.attentions):
        assert ours.shape == theirs.shape == (2, 4, 10, 10)  # (batch, heads, queries, queries)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    for weights in got.cross_attentions:  # over the 2 x 3 tokens of the stride-32 map
        assert weights.shape == (2, 4, 10, 6)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    assert got.encoder_attentions == ()  # no encoder layers
    torch.testing.assert_close(got.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=1e-4)


def test_attentions_from_the_config_and_tuple_order():
    """transformers' test_attention_outputs: config.output_attentions works, `attentions` comes after the
    hidden states, and output_hidden_states adds exactly four entries."""
    hf_config, config = maskformer_tester_configs()
    config.output_attentions = True
    assert config._attn_implementation == "eager"  # transformers' config setter asks for eager
    pixel_values = torch.randn(2, 3, 64, 64)
    for cls in (MaskFormerModel, MaskFormerForUniversalSegmentation):
        torch.manual_seed(0)
        model = cls(copy.deepcopy(config)).eval()
        with torch.no_grad():
            out = model(pixel_values)
            with_hidden = model(pixel_values, output_hidden_states=True)
            as_tuple = model(pixel_values, output_hidden_states=True, return_dict=False)
        assert len(out.attentions) == config.num_hidden_layers == 2
        assert len(with_hidden) == len(out) + 4
        assert len(as_tuple) == len(with_hidden)
        for value, key in zip(as_tuple, with_hidden.keys()):
            expected = with_hidden[key]
            assert type(value) is type(expected)
            assert not isinstance(value, torch.Tensor) or torch.equal(value, expected)
        keys = list(with_hidden.keys())
        assert keys.index("attentions") == keys.index("hidden_states") + 1


def test_attentions_keep_their_gradient():
    """transformers' test_retain_grad_hidden_states_attentions."""
    _, config = maskformer_tester_configs()
    config.output_hidden_states = config.output_attentions = True
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(config).train()
    out = model(torch.randn(2, 3, 64, 64), mask_labels=(torch.rand(2, 4, 64, 64) > 0.5).float(),
                class_labels=(torch.rand(2, 4) > 0.5).long())
    kept = [out.encoder_hidden_states[0], out.pixel_decoder_hidden_states[0], out.transformer_decoder_hidden_states[0],
            out.attentions[0]]
    for tensor in kept:
        tensor.retain_grad()
    out.loss.backward()
    assert all(tensor.grad is not None for tensor in kept)


def test_eager_and_sdpa_agree_with_padding():
    model = swin_model(encoder_layers=1)
    pixel_values = torch.randn(2, 3, 96, 128)
    pixel_mask = torch.ones(2, 96, 128, dtype=torch.long)
    pixel_mask[1, 64:] = 0  # image 1 is 64 x 128: one padded row of stride-32 tokens
    with torch.no_grad():
        sdpa = model(pixel_values, pixel_mask=pixel_mask)
        weights = model(pixel_values, pixel_mask=pixel_mask, output_attentions=True)
        model.set_attn_implementation("eager")
        eager = model(pixel_values, pixel_mask=pixel_mask)
    assert model.config._attn_implementation == "eager"
    for out in (eager, weights):
        torch.testing.assert_close(out.masks_queries_logits, sdpa.masks_queries_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.class_queries_logits, sdpa.class_queries_logits, atol=1e-4, rtol=1e-4)
    padded = torch.zeros(3, 4, dtype=torch.bool)
    padded[2:] = True  # the stride-32 grid of image 1: its last row is padding
    for cross in weights.cross_attentions:  # (B, heads, Q, 3 * 4)
        assert cross.shape == (2, 4, 8, 12)
        assert (cross[1][..., padded.flatten()] == 0).all() and (cross[0] > 0).all()
    assert len(weights.encoder_attentions) == 1 and weights.encoder_attentions[0].shape == (2, 8, 12, 12)


def test_attn_implementation_reaches_the_backbone_config(tmp_path, hf_kind):
    torch.manual_seed(0)
    config = tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config(hf_kind))
    model = MaskFormerForUniversalSegmentation(config)
    model.save_pretrained(tmp_path)
    for implementation in ("eager", "sdpa"):
        loaded = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, attn_implementation=implementation)
        assert loaded.config._attn_implementation == implementation
        backbone = loaded.config.backbone_config._attn_implementation
        # A ResNet has no attention and no "sdpa": it keeps its own default rather than failing to load.
        assert backbone == (implementation if hf_kind == "swin" else "eager")
    loaded.set_attn_implementation("eager")
    assert loaded.config._attn_implementation == loaded.config.backbone_config._attn_implementation == "eager"
    for unsupported in ("flash_attention_2", "flex_attention"):
        with pytest.raises(ValueError):
            MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, attn_implementation=unsupported)


# --- meta device and initialisation ------------------------------------------------------------------

BACKBONES = {"timm": lambda: tiny_config(),
             "swin": lambda: tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config("swin")),
             "resnet": lambda: tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config("resnet"))}


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_meta_device_then_init_weights_gives_a_working_model(kind):
    """transformers' test_init_weights_can_init_buffers and test_all_tensors_are_parameter_or_buffer:
    built on the meta device, moved with to_empty and initialised by init_weights(), every tensor is
    defined, every buffer equals the one a normal construction makes, and the forward runs."""
    config = BACKBONES[kind]()
    for cls in (MaskFormerModel, MaskFormerForUniversalSegmentation):
        reference = cls(copy.deepcopy(config))
        with torch.device("meta"):
            model = cls(copy.deepcopy(config))
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
        model.to_empty(device="cpu")
        with torch.no_grad():  # whatever memory to_empty left: poison it
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.fill_(float("nan") if tensor.is_floating_point() else -7)
        model.init_weights()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            defined = torch.isfinite(tensor) if tensor.is_floating_point() else tensor != -7
            assert bool(defined.all()), name
        expected = dict(reference.named_buffers())
        for name, buffer in model.named_buffers():
            assert torch.equal(buffer, expected[name]), name
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, 64, 64))
        assert torch.isfinite(out[0]).all()


@pytest.mark.parametrize("kind", ["timm", "swin"])
def test_weights_missing_from_a_checkpoint_get_the_new_model_initialisation(kind):
    """transformers' test_can_init_all_missing_weights: from_pretrained(None, config=, state_dict={})
    initialises every tensor as a new model's constructors do (the backbone by its library's scheme:
    timm's, MaskFormer-Swin's normal(0, 0.02)), not with PyTorch's layer defaults."""
    config = BACKBONES[kind]()
    torch.manual_seed(0)
    fresh = MaskFormerForUniversalSegmentation(copy.deepcopy(config))
    loaded = MaskFormerForUniversalSegmentation.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
    expected = fresh.state_dict()
    for name, tensor in loaded.state_dict().items():
        reference = expected[name]
        if not tensor.is_floating_point() or reference.std() == 0:
            assert torch.equal(tensor, reference), name  # buffers and constants (norms, zero-initialised gammas)
        elif reference.numel() >= 256:  # random: the same distribution (the std to within 25 %)
            ratio = (tensor.std() / reference.std()).item()
            assert 0.8 < ratio < 1.25, (name, ratio)
