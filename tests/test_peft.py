"""Adapters and quantisers that replace or wrap layers (PEFT's LoRA, torch.ao dynamic int8, hooks) take
effect everywhere: the fast paths (the oneDNN product, fused q/k/v, the folded mask projection) run only
on plain layers and give way to the layers themselves otherwise."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from conftest import distributed_case
from maskformer_hf import MaskFormerForUniversalSegmentation
from maskformer_hf.ops import is_plain, linear_layer
from maskformer_hf.pixel_decoder import mask_logits, mask_logits_by_taps, matched_mask_logits

peft = pytest.importorskip("peft")

# Target modules per part of the model (module names as in the checkpoints).
TARGETS = {
    "swin backbone": ["query", "value"],  # PEFT's choice for Swin-like attention
    "pixel decoder": ["conv", "mask_projection"],  # the FPN's convs (stem, lateral, output) and the 3x3 projection
    "transformer decoder": ["q_proj", "v_proj", "fc1"],
}
PREFIXES = {"swin backbone": "model.backbone.", "pixel decoder": "model.pixel_decoder.",
            "transformer decoder": "model.transformer_module."}


def swin_case():
    """A tiny Swin MaskFormer without dropout nor drop-path, a labelled batch of two 64x64 images."""
    return distributed_case(batch_size=2, segments=3)


def lora_model(model: nn.Module, part: str, **kwargs) -> nn.Module:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[part], **kwargs)
    return peft.get_peft_model(model, config)


def eval_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).masks_queries_logits
    model.train(was_training)
    return logits


@pytest.mark.parametrize("part", list(TARGETS))
def test_lora_adapters_get_gradients_train_and_merge(part):
    model, pixel_values, mask_labels, class_labels = swin_case()
    base = copy.deepcopy(model).eval()
    before = eval_logits(base, pixel_values)
    tuned = lora_model(model, part)
    lora = {name: p for name, p in tuned.named_parameters() if "lora_" in name}
    assert lora and all(p.requires_grad for p in lora.values())
    assert {name for name, p in tuned.named_parameters() if p.requires_grad} == set(lora)
    assert all(PREFIXES[part] in name for name in lora), [n for n in lora if PREFIXES[part] not in n][:3]
    if part == "pixel decoder":
        assert any("mask_projection.lora_B" in name for name in lora)
    # lora_B starts at zero: the adapted model is the base model until it trains (the adapted layers
    # are called, not fused or folded: the same numbers up to float rounding).
    torch.testing.assert_close(eval_logits(tuned, pixel_values), before, atol=1e-5, rtol=1e-4)

    tuned.train()
    tuned(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    # DETR's decoder starts from zero query features: the first self-attention's values are zero vectors,
    # and so is its v_proj adapter's gradient; every other adapter has one.
    zero_input = "transformer_module.decoder_layers.0.self_attn.v_proj."
    no_gradient = [name for name, p in lora.items()
                   if "lora_B" in name and (p.grad is None or p.grad.abs().max() == 0) and zero_input not in name]
    assert not no_gradient, f"{len(no_gradient)} of the LoRA B matrices got no gradient, e.g. {no_gradient[:3]}"
    # lora_B = 0 makes every lora_A gradient exactly zero on the first step.
    assert all(p.grad is None or p.grad.abs().max() == 0 for name, p in lora.items() if "lora_A" in name)

    optimizer = torch.optim.AdamW(lora.values(), lr=1e-2)
    optimizer.step()
    for _ in range(2):
        optimizer.zero_grad()
        tuned(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
        optimizer.step()
    adapted = eval_logits(tuned, pixel_values)
    assert (adapted - before).abs().max() > 1e-3  # the adapters changed the output
    with tuned.disable_adapter():  # the base weights did not move
        torch.testing.assert_close(eval_logits(tuned, pixel_values), before, atol=1e-6, rtol=0)

    adapted_layers = {name.split(".base_layer.")[0].removeprefix("base_model.model.")
                      for name in tuned.state_dict() if ".base_layer.weight" in name}
    merged = tuned.merge_and_unload()
    assert type(merged) is MaskFormerForUniversalSegmentation
    assert merged.state_dict().keys() == base.state_dict().keys()  # the checkpoint layout is unchanged
    assert all(is_plain(m, type(m)) for m in merged.modules() if type(m) in (nn.Linear, nn.Conv2d))
    # Merged (plain layers: fused q/k/v, folded projection, oneDNN) = unmerged adapters, up to float rounding.
    torch.testing.assert_close(eval_logits(merged, pixel_values), adapted, atol=1e-5, rtol=1e-4)
    changed = {name for name, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[name])}
    assert changed and {name.rsplit(".", 1)[0] for name in changed} <= adapted_layers


@pytest.mark.parametrize("target, adapted", [("query", 5), ("mask_projection", 1), ("query_embeddings", 1)])
def test_swin_query_and_mask_projection_adapters_are_not_bypassed(target, adapted):
    """The regression: Swin's attention read ``query.weight`` around the module, and the mask projection
    was folded from ``projection.weight``: adapters on them never saw an input. With the class head
    trained beside them (``modules_to_save``), training ran as usual and the query adapters silently got
    no gradient (the folded projection failed on the adapter's missing ``padding``)."""
    model, pixel_values, mask_labels, class_labels = swin_case()
    config = peft.LoraConfig(r=2, target_modules=[target], init_lora_weights=False, modules_to_save=["class_predictor"])
    tuned = peft.get_peft_model(model, config).train()
    calls = []
    layer = dict(tuned.named_modules())[next(n for n, m in tuned.named_modules() if n.endswith(target))]
    layer.register_forward_hook(lambda *args: calls.append(target))
    tuned(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    assert calls  # the adapted layer itself computed
    grads = {name: p.grad for name, p in tuned.named_parameters() if "lora_" in name}
    assert len(grads) == 2 * adapted  # A and B of each adapted layer (5 Swin blocks' queries, or one layer)
    assert all(g is not None and g.abs().max() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    # init_lora_weights=False: non-zero adapters change the output from the first call.
    with torch.no_grad(), tuned.disable_adapter():
        base = tuned(pixel_values=pixel_values).masks_queries_logits
    with torch.no_grad():
        assert (tuned(pixel_values=pixel_values).masks_queries_logits - base).abs().max() > 1e-4


def test_modules_to_save_trains_a_copy_of_the_class_head():
    model, pixel_values, mask_labels, class_labels = swin_case()
    original = model.class_predictor.weight.detach().clone()
    tuned = lora_model(model, "transformer decoder", modules_to_save=["class_predictor"]).train()
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    tuned(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    optimizer.step()
    merged = tuned.merge_and_unload()
    assert merged.class_predictor.weight.shape == original.shape
    assert (merged.class_predictor.weight - original).abs().max() > 1e-3  # the trained copy is the one kept


def test_torch_ao_dynamic_int8_quantises_the_swin_backbone():
    model, pixel_values, *_ = swin_case()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    backbone = dict(quantized.model.backbone.named_modules())
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    swapped = {name for name, m in backbone.items() if isinstance(m, dynamic)}
    assert not any(type(m) is nn.Linear for m in backbone.values())
    # 5 blocks x (query, key, value, attention output, MLP in, MLP out) + 3 patch mergings
    assert len(swapped) == 5 * 6 + 3
    called = set()
    for name in swapped:
        backbone[name].register_forward_hook(lambda module, args, out, name=name: called.add(name))
    got, want = eval_logits(quantized, pixel_values), eval_logits(model, pixel_values)
    assert called == swapped  # every quantised layer computes (none is read around)
    difference = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < difference < 0.1, difference


def test_optimize_int8_mode_quantises_every_linear_layer():
    from maskformer_hf.optimize import _int8_model

    model, pixel_values, *_ = swin_case()
    quantized = _int8_model(model.eval())
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert isinstance(quantized.class_predictor, torch.ao.nn.quantized.dynamic.Linear)
    assert any(type(p) is nn.Linear for p in model.modules())  # the original is left alone
    got, want = eval_logits(quantized, pixel_values), eval_logits(model, pixel_values)
    assert 0 < ((got - want).abs().max() / want.abs().max()).item() < 0.1


# ---------------------------------------------------------------------------------------------
# is_plain: which layers the fast paths may compute from their weights
# ---------------------------------------------------------------------------------------------
def test_is_plain_tells_plain_layers_from_replaced_wrapped_or_hooked_ones():
    class Subclass(nn.Linear):
        pass

    def fresh():
        return nn.Linear(4, 3)

    assert is_plain(fresh(), nn.Linear) and not is_plain(fresh(), nn.Conv2d)
    assert not is_plain(Subclass(4, 3), nn.Linear)
    hooked = [fresh() for _ in range(5)]
    hooked[0].register_forward_hook(lambda *args: None)
    hooked[1].register_forward_pre_hook(lambda *args: None)
    hooked[2].register_full_backward_hook(lambda *args: None)
    hooked[3].register_full_backward_pre_hook(lambda *args: None)
    hooked[4].forward = lambda x: x  # what accelerate's offloading hooks do
    assert not any(is_plain(layer, nn.Linear) for layer in hooked)
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not is_plain(fresh(), nn.Linear)
    finally:
        handle.remove()
    assert is_plain(fresh(), nn.Linear)
    assert not is_plain(nn.utils.parametrizations.weight_norm(fresh()), nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(fresh()), {nn.Linear}, dtype=torch.qint8)[0]
    assert not is_plain(quantized, nn.Linear)


def test_swin_attention_calls_hooked_layers_and_computes_the_same_numbers():
    model, *_ = swin_case()
    attention = model.model.backbone.body.model.encoder.layers[0].blocks[0].attention.self
    torch.manual_seed(0)
    windows = torch.randn(32, 16, 32)  # (B * nW, T, C): 512 rows, the oneDNN route
    mask = torch.zeros(16, 16, 16)
    fused = attention(windows, mask)
    calls = []
    handle = attention.key.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    separate = attention(windows, mask)
    assert calls == [(32, 16, 32)]
    torch.testing.assert_close(separate, fused, atol=1e-5, rtol=1e-5)
    handle.remove()
    attention.value.register_forward_hook(lambda module, args, out: out * 2)  # a hook that changes the output
    doubled = attention(windows, mask)
    assert not torch.allclose(doubled, fused, atol=1e-3)
    torch.testing.assert_close(doubled, 2 * fused, atol=1e-5, rtol=1e-5)  # attention is linear in the values


def test_linear_layer_calls_what_is_not_plain():
    torch.manual_seed(0)
    layer, x = nn.Linear(24, 40), torch.randn(300, 24)
    plain = linear_layer(layer, x)
    torch.testing.assert_close(plain, layer(x), atol=1e-5, rtol=1e-5)
    layer.register_forward_hook(lambda module, args, out: out + 1)
    torch.testing.assert_close(linear_layer(layer, x), plain + 1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hooked", [False, True])
def test_mask_projection_folds_only_when_plain(hooked):
    """The folded (plain layer) and called (hooked layer) paths give the same logits, and a hook on the
    projection runs on every path: full logits, export's taps and the loss's matched logits."""
    torch.manual_seed(0)
    projection = nn.Conv2d(16, 32, 3, padding=1)
    fpn_map, embeddings = torch.randn(2, 16, 10, 12), torch.randn(2, 1, 5, 32)  # 5 < 32 channels: foldable
    expected = torch.einsum("blqc,bchw->blqhw", embeddings, projection(fpn_map))
    calls = []
    if hooked:
        projection.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    index = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), torch.tensor([2, 0, 4])
    torch.testing.assert_close(mask_logits(embeddings, fpn_map, projection), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mask_logits_by_taps(embeddings, fpn_map, projection), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(matched_mask_logits(embeddings, fpn_map, projection, *index),
                               expected[index[0], index[1], index[2]], atol=1e-4, rtol=1e-4)
    assert calls == ([(2, 32, 10, 12)] * 2 + [(1, 32, 10, 12)] * 2 if hooked else [])
