import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageSegmentation, AutoModelForUniversalSegmentation

from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerModel
from maskformer_hf.pixel_decoder import mask_logits, matched_mask_logits

from conftest import tiny_config, tiny_hf_backbone_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskFormerForUniversalSegmentation(tiny_config()).eval()


def test_output_shapes(model):
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 160))
    assert out.class_queries_logits.shape == (2, 8, 5)
    assert out.masks_queries_logits.shape == (2, 8, 24, 40)
    assert len(out.auxiliary_logits) == 2  # decoder_layers - 1
    for aux in out.auxiliary_logits:
        assert aux["class_queries_logits"].shape == (2, 8, 5)
        assert aux["masks_queries_logits"].shape == (2, 8, 24, 40)
    assert out.loss is None and out.hidden_states is None and out.attentions is None
    assert out.pixel_decoder_last_hidden_state.shape == (2, 32, 24, 40)  # always returned, as in transformers
    assert out.transformer_decoder_last_hidden_state.shape == (2, 8, 64)


def test_default_config_has_five_auxiliary_outputs():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(decoder_layers=6)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        fast = model(torch.randn(1, 3, 64, 64), output_auxiliary_logits=False)
    assert len(out.auxiliary_logits) == 5
    assert fast.auxiliary_logits is None


def test_hidden_states_and_folded_projection_agree(model):
    """The masks are E_mask . E_pixel, with or without hidden states (and as the folded projection gives)."""
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = model(pixel_values, output_hidden_states=True, output_auxiliary_logits=False)
        folded = model(pixel_values, output_auxiliary_logits=False)
    assert len(plain.encoder_hidden_states) == 4 and len(plain.pixel_decoder_hidden_states) == 3
    assert len(plain.transformer_decoder_hidden_states) == 3
    assert plain.pixel_decoder_last_hidden_state.shape == (2, 32, 16, 24)
    torch.testing.assert_close(plain.masks_queries_logits, folded.masks_queries_logits, atol=1e-4, rtol=1e-4)
    expected = torch.einsum("bqc,bchw->bqhw", model.mask_embedder(plain.transformer_decoder_last_hidden_state),
                            plain.pixel_decoder_last_hidden_state)
    torch.testing.assert_close(folded.masks_queries_logits, expected, atol=1e-4, rtol=1e-4)
    folded_logits = mask_logits(model.mask_embedder(plain.transformer_decoder_last_hidden_state)[:, None],
                                plain.pixel_decoder_hidden_states[-1], model.model.pixel_decoder.mask_projection)
    torch.testing.assert_close(folded.masks_queries_logits, folded_logits[:, 0], atol=1e-4, rtol=1e-4)


def test_mask_logits_both_paths():
    torch.manual_seed(0)
    projection = torch.nn.Conv2d(16, 32, 3, padding=1)
    fpn_map = torch.randn(2, 16, 10, 12)
    embeddings = torch.randn(2, 1, 5, 32)  # 5 < 32 channels: folded
    many = torch.randn(2, 2, 20, 32)  # 40 >= 32: explicit
    reference = lambda e: torch.einsum("blqc,bchw->blqhw", e, projection(fpn_map))  # noqa: E731
    torch.testing.assert_close(mask_logits(embeddings, fpn_map, projection), reference(embeddings), atol=1e-4, rtol=0)
    torch.testing.assert_close(mask_logits(many, fpn_map, projection), reference(many), atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_selected", [3, 40])  # folded projection / explicit projection
def test_matched_mask_logits_equal_indexing_the_full_logits(num_selected):
    torch.manual_seed(0)
    projection = torch.nn.Conv2d(16, 32, 3, padding=1)
    fpn_map = torch.randn(3, 16, 10, 12)
    embeddings = torch.randn(3, 2, 25, 32, requires_grad=True)
    full = mask_logits(embeddings, fpn_map, projection)  # (B, L, Q, H, W)
    image = torch.tensor([2, 0] * num_selected)[:num_selected]
    layer = torch.randint(0, 2, (num_selected,))
    query = torch.randperm(25).repeat(2)[:num_selected]
    picked = matched_mask_logits(embeddings, fpn_map, projection, image, layer, query)
    torch.testing.assert_close(picked, full[image, layer, query], atol=1e-4, rtol=1e-4)
    weight = torch.randn_like(picked)
    expected = torch.autograd.grad((full[image, layer, query] * weight).sum(), [embeddings, projection.weight])
    got = torch.autograd.grad((picked * weight).sum(), [embeddings, projection.weight])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_base_model_outputs():
    torch.manual_seed(0)
    base = MaskFormerModel(tiny_config()).eval()
    with torch.no_grad():
        out = base(torch.randn(1, 3, 64, 64))
    assert out.pixel_decoder_last_hidden_state.shape == (1, 32, 16, 16)
    assert out.encoder_last_hidden_state.shape == (1, 512, 2, 2)
    assert out.transformer_decoder_last_hidden_state.shape == (1, 8, 64)
    assert isinstance(base(torch.randn(1, 3, 64, 64), return_dict=False), tuple)


def test_save_load_round_trip_and_auto_classes(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(pixel_values)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MaskFormerConfig)
    for auto_class in (AutoModelForUniversalSegmentation, AutoModelForImageSegmentation):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MaskFormerForUniversalSegmentation)
        with torch.no_grad():
            out = loaded(pixel_values)
        torch.testing.assert_close(out.masks_queries_logits, expected.masks_queries_logits, atol=0, rtol=0)
        torch.testing.assert_close(out.class_queries_logits, expected.class_queries_logits, atol=0, rtol=0)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MaskFormerModel)


def test_weights_a_checkpoint_lacks_or_resizes_are_initialised(tmp_path, model):
    """transformers re-initialises missing / resized weights module by module: every one of ours
    (heads, pixel decoder, transformer, query embeddings) and the timm backbone's must come back with
    PyTorch's default initialisation (what a new model has), never as uninitialised memory."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path / "full")
    resized = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / "full", num_labels=7,
                                                                 ignore_mismatched_sizes=True)
    bound = model.config.hidden_size ** -0.5  # nn.Linear's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert resized.class_predictor.weight.shape == (8, model.config.hidden_size)
    for tensor in (resized.class_predictor.weight, resized.class_predictor.bias):
        assert torch.isfinite(tensor).all() and 0 < tensor.abs().max() <= bound

    state = load_file(tmp_path / "full" / "model.safetensors")
    dropped = [k for k in state if "stem.norm" in k or "ffn.fc1" in k or "query_embeddings" in k
               or k.startswith("model.backbone.body.bn1.") or k == "model.backbone.body.conv1.weight"]
    assert len(dropped) >= 8
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "full" / "model.safetensors",
              metadata={"format": "pt"})
    partial = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / "full")
    loaded = partial.state_dict()
    for key in dropped:
        assert loaded[key].device.type == "cpu" and torch.isfinite(loaded[key].float()).all(), key
        assert loaded[key].float().abs().max() <= 10, key
    assert (loaded["model.pixel_decoder.stem.norm.weight"] == 1).all()
    assert (loaded["model.backbone.body.bn1.running_var"] == 1).all()
    assert 0 < loaded["model.backbone.body.conv1.weight"].std() < 0.2
    fc1 = loaded["model.transformer_module.decoder_layers.0.ffn.fc1.weight"]
    assert 0 < fc1.abs().max() <= model.config.hidden_size ** -0.5
    assert 0.8 < loaded["model.transformer_module.query_embeddings.weight"].std() < 1.2  # nn.Embedding: N(0, 1)
    kept = [k for k in state if k not in dropped]
    assert all(torch.equal(loaded[k], state[k]) for k in kept)

    MaskFormerModel(model.config).save_pretrained(tmp_path / "base")
    with_heads = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / "base")
    heads = [p for name, p in with_heads.named_parameters() if not name.startswith("model.")]
    assert heads and all(torch.isfinite(p).all() and 0 < p.abs().max() < 1 for p in heads)


def test_a_new_model_keeps_the_backbone_librarys_initialisation():
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", features_only=True)
    torch.manual_seed(0)
    ours = MaskFormerForUniversalSegmentation(tiny_config(backbone="resnet18")).model.backbone.body
    for (name, expected), actual in zip(reference.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_return_dict_false_starts_like_transformers(model):
    labels = dict(mask_labels=[torch.ones(1, 64, 64)], class_labels=[torch.tensor([1])])
    out = model(torch.randn(1, 3, 64, 64), **labels)
    loss, class_logits, mask_logits_ = model(torch.randn(1, 3, 64, 64), return_dict=False, **labels)[:3]
    assert loss.dim() == 0 and class_logits.shape == out.class_queries_logits.shape
    assert mask_logits_.shape == out.masks_queries_logits.shape


def test_bad_inputs_raise(model):
    with pytest.raises(TypeError, match="tensors"):
        model(torch.randn(1, 3, 64, 64), mask_labels=[torch.ones(1, 64, 64)], class_labels=[[1]])
    with pytest.raises(ValueError, match="not a timm model"):
        MaskFormerForUniversalSegmentation(tiny_config(backbone="not_a_model"))
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="pixel_mask"):
        model(torch.randn(1, 3, 64, 64), pixel_mask=torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="valid"):
        model(torch.randn(2, 3, 64, 64), pixel_mask=torch.stack([torch.ones(64, 64), torch.zeros(64, 64)]))


def test_timm_backbone_without_stride_4_is_rejected():
    with pytest.raises(ValueError, match="strides"):
        MaskFormerForUniversalSegmentation(tiny_config(backbone="vit_tiny_patch16_224"))


@pytest.mark.parametrize("backbone", ["convnext_atto", "resnet10t"])
def test_other_timm_backbones(backbone):
    model = MaskFormerForUniversalSegmentation(tiny_config(backbone=backbone)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 104))
    assert out.masks_queries_logits.shape == (1, 8, 18, 26)


def test_timm_swin_channels_last_features_are_permuted():
    config = tiny_config(backbone="swin_tiny_patch4_window7_224", backbone_kwargs={"depths": (1, 1, 1, 1),
                                                                                 "embed_dim": 32,
                                                                                 "num_heads": (1, 1, 2, 2)})
    model = MaskFormerForUniversalSegmentation(config).eval()
    assert model.model.backbone.channels == [32, 64, 128, 256]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128), output_hidden_states=True)
    assert [tuple(f.shape[1:]) for f in out.encoder_hidden_states] == [(32, 24, 32), (64, 12, 16), (128, 6, 8),
                                                                      (256, 3, 4)]


@pytest.mark.parametrize("feeds", [False, True])
def test_encoder_layers_run_and_honour_padding(feeds):
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(encoder_layers=2, encoder_feeds_pixel_decoder=feeds)).eval()
    assert len(model.model.transformer_module.encoder_layers) == 2
    # The original "R50 + 6 Enc" layout: the FPN stem reads the encoder's hidden_size-wide output.
    assert model.model.pixel_decoder.stem.conv.in_channels == (64 if feeds else model.model.backbone.channels[-1])
    check_batch_consistency(model)


def test_encoder_feeding_the_pixel_decoder_is_the_fpn_on_the_encoder_output():
    """With encoder_feeds_pixel_decoder, the stride-32 FPN input is the encoder's output: the same
    FPN run by hand on that output gives the model's per-pixel embeddings."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(encoder_layers=2, encoder_feeds_pixel_decoder=True)).eval()
    pixel_values = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = model.model(pixel_values)
        maps, _ = model.model.backbone(pixel_values)
        memory, _, _ = model.model.transformer_module.encode(maps[-1])
        top = memory.transpose(1, 2).reshape(1, 64, *maps[-1].shape[-2:])
        fpn = model.model.pixel_decoder(maps[:-1] + [top])
    torch.testing.assert_close(out.pixel_decoder_last_hidden_state, model.model.pixel_decoder.mask_projection(fpn[-1]))
    with pytest.raises(ValueError, match="encoder_feeds_pixel_decoder"):
        tiny_config(encoder_feeds_pixel_decoder=True)  # no encoder to feed
    assert MaskFormerConfig.from_preset("resnet50-6enc").encoder_feeds_pixel_decoder is True


def test_decoder_reading_the_pixel_decoder_attends_to_stride_4_tokens_and_honours_padding():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(transformer_in_feature="pixel_decoder")).eval()
    module = model.model.transformer_module
    assert module.input_projection.in_channels == model.config.fpn_feature_size
    pixel_values = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = model.model(pixel_values)
        maps, _ = model.model.backbone(pixel_values)
        fpn = model.model.pixel_decoder(maps)
        states = module(fpn[-1])  # the stride-4 FPN map: 24 x 32 tokens
    torch.testing.assert_close(out.transformer_decoder_last_hidden_state, states[-1])
    check_batch_consistency(model)
    with pytest.raises(ValueError, match="transformer_in_feature"):
        tiny_config(transformer_in_feature="res4")
    with pytest.raises(ValueError, match="transformer_in_feature"):
        tiny_config(transformer_in_feature="pixel_decoder", encoder_layers=1)


def test_learned_query_features_give_queries_distinct_masks_from_the_first_step(tmp_path):
    pixel_values = torch.randn(1, 3, 96, 128)
    spread = {}
    for learned in (False, True):
        torch.manual_seed(0)
        model = MaskFormerForUniversalSegmentation(tiny_config(learned_query_features=learned)).eval()
        keys = set(model.state_dict())
        assert ("model.transformer_module.query_features.weight" in keys) is learned
        with torch.no_grad():
            masks = model(pixel_values).masks_queries_logits  # (1, Q, h, w)
        spread[learned] = masks.std(1).mean().item()  # how much the queries' masks differ, per pixel
    # DETR's zero start: queries differ only through their attention weights, so at initialisation
    # every query predicts nearly the same mask; a learned start separates them at once.
    assert spread[False] < 1e-2 * spread[True]
    model.save_pretrained(tmp_path)
    loaded = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.learned_query_features is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).masks_queries_logits, masks)
    check_batch_consistency(loaded)


def test_mask_pooled_classification_adds_logits_read_from_each_masks_mean_pixel_embedding():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(mask_pooled_classification=True)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), output_hidden_states=True)
        state = out.transformer_decoder_last_hidden_state  # (B, Q, D)
        embeddings = out.pixel_decoder_last_hidden_state  # (B, C_E, h, w)
        weights = out.masks_queries_logits.sigmoid()  # (B, Q, h, w)
        pooled = torch.einsum("bqhw,bchw->bqc", weights, embeddings) / (weights.sum((-2, -1))[..., None] + 1)
        want = model.class_predictor(state) + model.pooled_class_predictor(pooled)
    torch.testing.assert_close(out.class_queries_logits, want, atol=1e-5, rtol=1e-5)
    check_batch_consistency(model)  # padding is left out of the averages
    # The class loss reaches the pooled head, not the masks through it (the weights are detached).
    model.train()
    labels = dict(mask_labels=[torch.ones(1, 64, 96)] * 2, class_labels=[torch.tensor([1])] * 2)
    out = model(torch.randn(2, 3, 64, 96), **labels)
    out.loss_dict["loss_cross_entropy"].backward()
    assert model.pooled_class_predictor.weight.grad.abs().sum() > 0
    assert model.mask_embedder.layers[0].weight.grad is None or model.mask_embedder.layers[0].weight.grad.abs().sum() == 0
    # The per-pixel baselines have no class predictor: the flag is theirs to ignore.
    for kind in ("per_pixel", "per_pixel_plus"):
        baseline = MaskFormerForUniversalSegmentation(tiny_config(
            segmentation_type=kind, num_queries=4, mask_pooled_classification=True, learned_query_features=True))
        assert not hasattr(baseline, "pooled_class_predictor")


def semantic_map(class_logits, mask_logits):
    """argmax_c sum_q p_q(c) m_q[h, w] (SPEC §4), at mask resolution. (B,Q,K+1), (B,Q,h,w) -> (B,h,w)."""
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid()).argmax(1)


def check_batch_consistency(model, small=(72, 100), large=(128, 160)):
    """An image alone and padded inside a batch with a larger image: same semantic map and logits."""
    torch.manual_seed(2)
    image = torch.randn(3, *small)
    other = torch.randn(3, *large)
    batch = torch.zeros(2, 3, *large)
    batch[0, :, : small[0], : small[1]] = image
    batch[1] = other
    pixel_mask = torch.zeros(2, *large, dtype=torch.long)
    pixel_mask[0, : small[0], : small[1]] = 1
    pixel_mask[1] = 1
    with torch.no_grad():
        alone = model(image[None])
        alone_other = model(other[None])
        batched = model(batch, pixel_mask=pixel_mask)
    h, w = alone.masks_queries_logits.shape[-2:]
    crop = batched.masks_queries_logits[:1, :, :h, :w]
    agreement = (semantic_map(alone.class_queries_logits, alone.masks_queries_logits)
                 == semantic_map(batched.class_queries_logits[:1], crop)).float().mean().item()
    assert agreement >= 0.995
    torch.testing.assert_close(crop, alone.masks_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.class_queries_logits[:1], alone.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.masks_queries_logits[1:], alone_other.masks_queries_logits, atol=1e-4, rtol=1e-4)
    return agreement


@pytest.mark.parametrize("backbone", ["timm-resnet", "hf-swin", "hf-resnet"])
def test_batch_consistency(backbone):
    torch.manual_seed(0)
    if backbone == "timm-resnet":
        config = tiny_config()
    else:
        config = tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config(backbone[3:]))
    check_batch_consistency(MaskFormerForUniversalSegmentation(config).eval())


def test_unpadded_mask_is_the_fast_path(model):
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(pixel_values)
        b = model(pixel_values, pixel_mask=torch.ones(2, 64, 64, dtype=torch.long))
    torch.testing.assert_close(a.masks_queries_logits, b.masks_queries_logits, atol=0, rtol=0)
