"""Our MaskFormer-Swin backbone, the oneDNN linear and the compiled kernels: the same numbers as the plain paths."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoBackbone, MaskFormerSwinConfig

from maskformer_hf.modeling_maskformer_swin import MaskFormerSwinBackbone, shifted_window_mask
from maskformer_hf.ops import linear


def random_pair(**kwargs):
    config = MaskFormerSwinConfig(out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0, **kwargs)
    reference = AutoBackbone.from_config(config).eval()
    with torch.no_grad():  # non-trivial values everywhere, the relative-position tables included
        for name, parameter in reference.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.1 if "norm" in name else 0.05) + ("norm" in name and name.endswith("weight")))
    ours = MaskFormerSwinBackbone(config).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("model.layernorm.")}
    ours.load_state_dict(state, strict=True)  # the same names and shapes, nothing missing or left over
    return reference, ours


@pytest.mark.parametrize("size, kwargs", [
    ((96, 160), dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])),
    ((77, 131), dict(embed_dim=24, depths=[1, 2, 1, 1], num_heads=[1, 2, 3, 3], window_size=3)),  # odd sizes, padding
    ((64, 64), dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=5)),  # maps smaller than a window
    ((130, 70), dict(embed_dim=32, depths=[2, 2, 4, 2], num_heads=[2, 2, 4, 4], window_size=7, mlp_ratio=2.0)),
])
def test_swin_equals_transformers(size, kwargs):
    torch.manual_seed(0)
    reference, ours = random_pair(**kwargs)
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, got = reference(pixels).feature_maps, ours(pixels)
    assert ours.channels == [m.shape[1] for m in expected]
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-5)


def test_swin_gradients_equal_transformers():
    torch.manual_seed(1)
    reference, ours = random_pair(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
    pixels = torch.randn(2, 3, 72, 88)
    weights = [torch.randn(m.shape) for m in reference(pixels).feature_maps]
    sum((m * w).sum() for m, w in zip(reference(pixels).feature_maps, weights)).backward()
    sum((m * w).sum() for m, w in zip(ours(pixels), weights)).backward()
    expected = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_stochastic_depth_drops_both_branches_in_training_only():
    torch.manual_seed(0)
    config = MaskFormerSwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], drop_path_rate=0.5,
                                  out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = MaskFormerSwinBackbone(config)
    block = backbone.model.encoder.layers[3].blocks[1]
    assert block.drop_path.drop_prob == pytest.approx(0.5)
    x = torch.randn(64, 2, 2, 128)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    torch.manual_seed(3)
    outputs = block(x)
    # Samples whose both branches were dropped come out unchanged (probability 1/4 each; with
    # transformers' module, which never drops the MLP branch, none would).
    unchanged = [(outputs[i] == x[i]).all().item() for i in range(64)]
    assert any(unchanged) and not all(unchanged)


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(6, 6, 3, 1)  # 4 windows of 9 tokens
    assert mask.shape == (4, 9, 9) and set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window lies in one region
    assert (mask[3] == -100).sum() > 0 and (mask.transpose(1, 2) == mask).all()


@pytest.mark.parametrize("shape, bias", [((300, 24), True), ((3, 200, 24), False), ((5, 24), True), ((0, 24), True)])
def test_onednn_linear_equals_f_linear(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 40)
    out = linear(x, weight, b)
    out.backward(grad)
    got = [x.grad, weight.grad] + ([b.grad] if bias else [])
    for t in [x, weight] + ([b] if bias else []):
        t.grad = None
    expected = F.linear(x, weight, b)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for g, t in zip(got, [x, weight] + ([b] if bias else [])):
        torch.testing.assert_close(g, t.grad, atol=1e-4, rtol=1e-5)
    assert out.is_contiguous()


def test_onednn_linear_under_bf16_autocast():
    x, weight = torch.randn(512, 64), torch.randn(32, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = linear(x, weight), F.linear(x, weight)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=0.1, rtol=0.02)


def test_maybe_compiled_falls_back_and_can_be_switched_off(monkeypatch, caplog):
    from maskformer_hf.ops import maybe_compiled

    calls = []

    def plain(x):
        calls.append(1)
        return x * 2 + 1

    wrapped = maybe_compiled(plain)
    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "0")
    torch.testing.assert_close(wrapped(torch.ones(3)), torch.full((3,), 3.0))
    assert len(calls) == 1  # ran eagerly

    def broken_compile(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(wrapped(torch.ones(2)), torch.full((2,), 3.0))
        torch.testing.assert_close(wrapped(torch.zeros(2)), torch.full((2,), 1.0))
    assert "no C++ compiler" in caplog.text and caplog.text.count("torch.compile failed") == 1


def test_fused_mask_loss_compiled_equals_eager(monkeypatch):
    from maskformer_hf.loss_maskformer import fused_binary_mask_terms

    torch.manual_seed(0)
    logits = 3 * torch.randn(7, 10, 12)
    targets = (torch.rand(3, 40, 48) > 0.6).float()
    index = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    weights = torch.full((7,), 20.0), torch.ones(7)
    compiled = fused_binary_mask_terms(logits, targets, index, 0.25, 2.0, *weights, chunk=2)
    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "0")
    eager = fused_binary_mask_terms(logits, targets, index, 0.25, 2.0, *weights, chunk=2)
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, atol=1e-6, rtol=1e-5)


def test_checkpoints_without_the_relative_position_index_load(tmp_path):
    """Some Swin checkpoints do not store the deterministic index buffer: it is rebuilt, never garbage."""
    from safetensors.torch import load_file, save_file
    from transformers import MaskFormerConfig as HFMaskFormerConfig
    from transformers import MaskFormerForInstanceSegmentation

    from maskformer_hf import MaskFormerForUniversalSegmentation, convert_from_transformers
    from maskformer_hf.modeling_maskformer_swin import relative_position_index

    torch.manual_seed(0)
    swin = MaskFormerSwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = MaskFormerForInstanceSegmentation(HFMaskFormerConfig(backbone_config=swin, num_labels=3, num_queries=4,
                                                              decoder_config={"decoder_layers": 1}))
    hf.save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("relative_position_index")},
              tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    converted = convert_from_transformers(tmp_path / "hf")
    converted.save_pretrained(tmp_path / "ours")
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    save_file({k: v for k, v in ours.items() if not k.endswith("relative_position_index")},
              tmp_path / "ours" / "model.safetensors", metadata={"format": "pt"})
    reloaded = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / "ours").eval()
    for model in (converted, reloaded):
        for name, buffer in model.named_buffers():
            if name.endswith("relative_position_index"):
                assert torch.equal(buffer, relative_position_index(swin.window_size)), name
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).masks_queries_logits, converted(pixels).masks_queries_logits)


def test_linear_edge_cases_match_f_linear():
    x = torch.randn(300, 8)
    assert linear(x, torch.randn(0, 8)).shape == (300, 0)
    strided = torch.randn(24, 3, 200).permute(1, 2, 0)  # (3, 200, 24), not contiguous
    weight = torch.randn(40, 24)
    out = linear(strided, weight)
    assert out.is_contiguous()
    torch.testing.assert_close(out, F.linear(strided, weight), atol=1e-5, rtol=1e-5)


def test_maybe_compiled_keeps_compiling_after_a_callers_error(monkeypatch, caplog):
    from maskformer_hf.ops import maybe_compiled

    compiled_calls = []

    def fake_compile(fn, **kwargs):
        def run(*args):
            compiled_calls.append(1)
            return fn(*args)
        return run

    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", fake_compile)
    wrapped = maybe_compiled(lambda x, y: x * y)
    wrapped(torch.ones(2), torch.ones(2))
    with pytest.raises(RuntimeError):
        wrapped(torch.ones(2), torch.ones(3))  # the caller's own shape error is raised
    wrapped(torch.ones(2), torch.ones(2))
    assert len(compiled_calls) == 3 and "torch.compile failed" not in caplog.text


def test_swin_unknown_out_features_is_a_clear_error():
    config = MaskFormerSwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
    config.out_features = ["stem", "stage4"]
    with pytest.raises(ValueError, match="out_features"):
        MaskFormerSwinBackbone(config)
