"""Post-processing on every kind of input of `benchmarks/bench_processing.py`'s matrix: semantic maps
equal transformers' except at float ties (checked against a float64 reference), and the two ways of
evaluating a rule (per-cell bounds, or every pixel) agree, so that choosing between them by the
input never changes a result. Also: CUDA tensors stay on the device (skipped without CUDA)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import MaskFormerImageProcessor as ReferenceProcessor

from conftest import fake_segmentation_outputs, tiny_hf_model
from maskformer_hf import resampling
from maskformer_hf.inference import instance_inference, panoptic_inference, semantic_inference
from maskformer_hf.resampling import interpolate, resample_dense

# The kinds of input of the benchmark matrix, at test size: (fake_segmentation_outputs kwargs, dtype).
KINDS = {
    "smooth": ({"noise": 0.0}, torch.float32),
    "noisy": ({"noise": 0.5}, torch.float32),
    "noisy overlapping": ({"noise": 0.5, "layout": "overlap"}, torch.float32),
    "smooth overlapping": ({"layout": "overlap"}, torch.float32),
    "5 confident": ({"confident": 5, "noise": 0.5}, torch.float32),
    "80 confident": ({"confident": 80, "queries": 100, "noise": 0.5, "size": (96, 112)}, torch.float32),
    "150 classes": ({"classes": 150, "noise": 0.5}, torch.float32),
    "bf16 logits": ({"noise": 0.5}, torch.bfloat16),
    "fp16 logits": ({"noise": 0.5, "layout": "overlap"}, torch.float16),
}
SIZES = [(160, 192), (123, 301), (40, 48)]  # upsampling 4x, an odd non-integer ratio, and the identity


def logits(kind: str, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs, dtype = KINDS[kind]
    kwargs = {"queries": 30, "classes": 20, "confident": 8, "size": (40, 48), **kwargs}
    class_logits, mask_logits = fake_segmentation_outputs(batch=batch, seed=seed, **kwargs)
    return class_logits.to(dtype), mask_logits.to(dtype)


def float64_semantic_scores(class_logits, mask_logits, size) -> torch.Tensor:
    """`(K, H, W)` float64 scores of one image, by the formula (no shortcut)."""
    probs = class_logits.double().softmax(-1)[..., :-1]
    scores = torch.einsum("qk,qhw->khw", probs, mask_logits.double().sigmoid())
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def assert_differences_are_ties(ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor, tolerance: float = 1e-5):
    """Every pixel where the maps differ is one where the float64 scores' two best tie within float32 rounding."""
    differ = ours != theirs
    if differ.any():
        top2 = exact.topk(2, dim=0).values
        gap = (top2[0] - top2[1]) / top2[0].abs().clamp(min=1e-12)
        assert (gap[differ] < tolerance).all(), f"{int(differ.sum())} pixels differ, not all at float ties"


@pytest.fixture(params=["cells", "dense"])
def path(request, monkeypatch):
    """Force one way of evaluating: per-cell bounds everywhere, or every pixel everywhere."""
    if request.param == "cells":
        monkeypatch.setattr(resampling, "DENSE_SMALL", -1)
        monkeypatch.setattr(resampling, "DENSE_PIXELS_PER_CELL", -1.0)
        monkeypatch.setattr(resampling, "EXACT_COST", 0)
    else:
        monkeypatch.setattr(resampling, "DENSE_SMALL", 1 << 62)
    return request.param


def test_interpolate_equals_the_cell_arithmetic_and_f_interpolate():
    torch.manual_seed(0)
    values = torch.rand(2, 5, 20, 27)
    for target, extent in (((151, 203), None), ((97, 131), (19.25, 26.5)), ((19, 27), None), ((500, 333), (12.1, 26.9))):
        res = resampling.resampling((20, 27), target, extent)
        fast, exact = interpolate(values, res), resample_dense(values, res)
        assert fast.shape == exact.shape == (2, 5, *target)
        assert (fast - exact).abs().max() < 2e-6
        if extent is None:
            assert torch.equal(fast, F.interpolate(values, size=target, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("kind", KINDS)
def test_semantic_equals_transformers_except_float64_ties(kind, path):
    class_logits, mask_logits = logits(kind)
    ours = semantic_inference(class_logits, mask_logits, target_sizes=SIZES)
    outputs = SimpleNamespace(class_queries_logits=class_logits.float(), masks_queries_logits=mask_logits.float())
    theirs = ReferenceProcessor().post_process_semantic_segmentation(outputs, target_sizes=SIZES)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape == SIZES[i] and len(a.unique()) >= 3
        assert_differences_are_ties(a, b, float64_semantic_scores(class_logits[i], mask_logits[i], SIZES[i]))
        assert (a != b).float().mean() < 1e-3


def test_semantic_on_real_model_outputs_equals_transformers_except_ties(hf_kind, trained_checkpoint):
    from maskformer_hf import MaskFormerForUniversalSegmentation

    torch.manual_seed(1)
    sources = [tiny_hf_model(hf_kind)]  # transformers' own model: its outputs
    sources.append(MaskFormerForUniversalSegmentation.from_pretrained(trained_checkpoint).eval())  # a trained one
    for model in sources:
        with torch.no_grad():
            out = model(pixel_values=torch.randn(2, 3, 64, 96))
        sizes = [(64, 96), (131, 77)]
        ours = semantic_inference(out.class_queries_logits, out.masks_queries_logits, target_sizes=sizes)
        theirs = ReferenceProcessor().post_process_semantic_segmentation(out, target_sizes=sizes)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            exact = float64_semantic_scores(out.class_queries_logits[i], out.masks_queries_logits[i], sizes[i])
            assert_differences_are_ties(a, b, exact)


def _comparable(result, background: int):
    seg = result["segmentation"]
    return [(s["label_id"], s["score"], (seg == s["id"])) for s in result["segments_info"] if s["id"] != background]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", ["panoptic", "instance"])
def test_cell_and_dense_paths_give_the_same_segments(kind, rule, monkeypatch):
    class_logits, mask_logits = logits(kind, seed=2)
    pixel_mask = torch.zeros(3, 160, 192, dtype=torch.int64)  # a padded batch too: crops honoured by both paths
    for i, (h, w) in enumerate([(160, 192), (120, 150), (97, 61)]):
        pixel_mask[i, :h, :w] = 1
    fn = panoptic_inference if rule == "panoptic" else instance_inference
    background = 0 if rule == "panoptic" else -1
    results = {}
    for forced in ("cells", "dense"):
        with monkeypatch.context() as m:
            if forced == "cells":
                m.setattr(resampling, "DENSE_SMALL", -1)
                m.setattr(resampling, "DENSE_PIXELS_PER_CELL", -1.0)
                m.setattr(resampling, "EXACT_COST", 0)
            else:
                m.setattr(resampling, "DENSE_SMALL", 1 << 62)
            results[forced] = [fn(class_logits, mask_logits, pixel_mask=pm, target_sizes=SIZES)
                               for pm in (None, pixel_mask)]
    segments = 0
    for cells, dense in zip(results["cells"], results["dense"]):
        for a, b in zip(cells, dense):
            sa, sb = _comparable(a, background), _comparable(b, background)
            assert [s[:2] for s in sa] == [s[:2] for s in sb]  # same segments, labels, scores, order
            for (_, _, ma), (_, _, mb) in zip(sa, sb):
                assert (ma != mb).float().mean() < 1e-3  # masks equal up to float ties at boundaries
            segments += len(sa)
    assert segments >= 3  # not vacuous


def _host_transfer_counter(monkeypatch):
    """Counts the elements that leave tensors for Python or host memory."""
    moved = {"elements": 0, "largest": 0}

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if name != "cpu" or self.device.type != "cpu":
                moved["elements"] += self.numel()
                moved["largest"] = max(moved["largest"], self.numel())
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in ("tolist", "item", "cpu", "numpy"):
        wrap(name)
    return moved


def _run_rules(class_logits, mask_logits, pixel_mask):
    kw = {"pixel_mask": pixel_mask, "target_sizes": [(200, 240), (150, 190)]}
    return (semantic_inference(class_logits, mask_logits, **kw), panoptic_inference(class_logits, mask_logits, **kw),
            instance_inference(class_logits, mask_logits, **kw), instance_inference(class_logits, mask_logits,
                                                                                   return_binary_maps=True, **kw))


def test_only_per_query_values_leave_the_tensors(monkeypatch, path):
    """Maps are never copied to Python or the host: only per-query values (labels, scores) are."""
    class_logits, mask_logits = logits("noisy overlapping", batch=2)
    pixel_mask = torch.ones(2, 160, 192, dtype=torch.int64)
    pixel_mask[1, 120:] = 0
    moved = _host_transfer_counter(monkeypatch)
    _run_rules(class_logits, mask_logits, pixel_mask)
    queries = class_logits.shape[1]
    assert moved["largest"] <= 2 * queries, moved  # never a map: 200 x 240 pixels would be 48000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (post-processing of GPU outputs on the GPU)")
def test_cuda_outputs_are_post_processed_on_the_device(monkeypatch):
    class_logits, mask_logits = logits("noisy overlapping", batch=2)
    pixel_mask = torch.ones(2, 160, 192, dtype=torch.int64)
    pixel_mask[1, 120:] = 0
    expected = _run_rules(class_logits, mask_logits, pixel_mask)
    moved = _host_transfer_counter(monkeypatch)
    got = _run_rules(class_logits.cuda(), mask_logits.cuda(), pixel_mask.cuda())
    assert moved["largest"] <= 2 * class_logits.shape[1], moved
    for a, b in zip(got[0], expected[0]):
        assert a.device.type == "cuda" and (a.cpu() != b).float().mean() < 1e-3
    for rule_got, rule_expected in zip(got[1:], expected[1:]):
        for a, b in zip(rule_got, rule_expected):
            assert a["segmentation"].device.type == "cuda"
            assert [s["label_id"] for s in a["segments_info"]] == [s["label_id"] for s in b["segments_info"]]
            assert (a["segmentation"].cpu() != b["segmentation"]).float().mean() < 1e-3
