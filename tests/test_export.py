"""Exported graphs (ONNX, TorchScript, torch.export) against the eager model, and the fast modes of
maskformer_hf.optimize: the outputs the processor's post-processing reads, at odd and dynamic sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import scene, tiny_config, tiny_hf_model
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor, convert_from_transformers
from maskformer_hf.cli import main as cli_main
from maskformer_hf.export import (SUFFIXES, MaskFormerGraph, export_model, exported_sizes_are_dynamic,
                                  load_exported, semantic_map)
from maskformer_hf.inference import semantic_inference
from maskformer_hf.optimize import MODES, mode_available, optimize
from maskformer_hf.precision import NATIVE_BF16_ENV

pytestmark = pytest.mark.system

SIZES = [(1, 64, 64), (3, 97, 45), (2, 33, 130), (1, 161, 119)]  # batch, height, width: none the traced one


def tiny_model(family: str) -> MaskFormerForUniversalSegmentation:
    if family == "timm-resnet":
        torch.manual_seed(0)
        return MaskFormerForUniversalSegmentation(tiny_config()).eval()
    return convert_from_transformers(tiny_hf_model(family)).eval()  # MaskFormer-Swin / ResNet (Hub layouts)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


# exported-program of transformers' ResNet layout is left out: ONNX export goes through torch.export with the
# same dynamic shapes (onnx-resnet), and the program format itself is checked on both other families.
CASES = [(fmt, family) for fmt in ("onnx", "torchscript", "exported-program") for family in ("swin", "resnet", "timm-resnet")
         if (fmt, family) != ("exported-program", "resnet")]


@pytest.mark.parametrize(("fmt", "family"), CASES, ids=[f"{fmt}-{family}" for fmt, family in CASES])
def test_exported_graph_matches_eager_at_dynamic_sizes(family, fmt, tmp_path):
    model = tiny_model(family)
    path = export_model(model, tmp_path / f"model{SUFFIXES[fmt]}", fmt, postprocess="semantic", example_size=(97, 45))
    sizes = SIZES
    if fmt == "exported-program":
        # torch.export proves the ResNets' shapes for every size (from 33 pixels on); a Swin's window
        # padding it cannot, and keeps height and width at the traced size (the batch stays dynamic).
        dynamic = exported_sizes_are_dynamic(path)
        assert dynamic == (family != "swin")
        sizes = SIZES if dynamic else [(1, 97, 45), (3, 97, 45)]
    run = load_exported(path, fmt)
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in sizes:
        pixel_values = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            eager = model(pixel_values=pixel_values)
        class_logits, mask_logits, classes = run(pixel_values, torch.ones(batch, height, width, dtype=torch.int64))
        assert class_logits.shape == eager.class_queries_logits.shape
        assert mask_logits.shape == eager.masks_queries_logits.shape
        assert relative(class_logits, eager.class_queries_logits) < 1e-4
        assert relative(mask_logits, eager.masks_queries_logits) < 1e-4
        want = torch.stack(semantic_inference(eager.class_queries_logits, eager.masks_queries_logits, None,
                                              [(height, width)] * batch))
        assert torch.equal(classes, want)


def test_the_small_data_recipes_heads_export_too(tmp_path):
    """learned_query_features and mask_pooled_classification (the small-data recipe's) in an ONNX graph."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(
        tiny_config(learned_query_features=True, mask_pooled_classification=True)).eval()
    run = load_exported(export_model(model, tmp_path / "model.onnx", "onnx", example_size=(97, 45)))
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in SIZES[:2]:
        pixel_values = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            eager = model(pixel_values=pixel_values)
        class_logits, mask_logits = run(pixel_values, torch.ones(batch, height, width, dtype=torch.int64))
        assert relative(class_logits, eager.class_queries_logits) < 1e-4
        assert relative(mask_logits, eager.masks_queries_logits) < 1e-4


def test_onnx_without_pixel_mask_and_the_padding_rule(tmp_path):
    """The graph honours pixel_mask after the backbone: all-ones equals no mask; padded pixels get -1."""
    model = tiny_model("swin")
    both = load_exported(export_model(model, tmp_path / "a.onnx", postprocess="semantic"))
    plain = load_exported(export_model(model, tmp_path / "b.onnx", with_pixel_mask=False))
    pixel_values = torch.randn(2, 3, 70, 90)
    ones = both(pixel_values, torch.ones(2, 70, 90, dtype=torch.int64))
    alone = plain(pixel_values)
    assert relative(ones[1], alone[1]) < 1e-5
    mask = torch.ones(2, 70, 90, dtype=torch.int64)
    mask[1, 50:] = 0
    mask[1, :, 60:] = 0
    classes = both(pixel_values, mask)[2]
    assert (classes[1][mask[1] == 0] == -1).all() and (classes[1][mask[1] == 1] >= 0).all()
    assert (classes[0] >= 0).all()


def test_in_graph_semantic_rule_is_the_processors_rule():
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(2, 7, 6, generator=generator)
    mask_logits = torch.randn(2, 7, 13, 17, generator=generator)
    want = torch.stack(semantic_inference(class_logits, mask_logits, None, [(50, 67)] * 2))
    assert torch.equal(semantic_map(class_logits, mask_logits, (50, 67)), want)


def test_bad_arguments_are_refused(tmp_path):
    model = tiny_model("timm-resnet")
    with pytest.raises(ValueError, match="format: expected one of"):
        export_model(model, tmp_path / "m.x", "tflite")
    with pytest.raises(ValueError, match="postprocess"):
        MaskFormerGraph(model, postprocess="panoptic")
    with pytest.raises(TypeError, match="MaskFormerForUniversalSegmentation"):
        MaskFormerGraph(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode: expected 'auto' or one of"):
        optimize(model, "int4")
    with pytest.raises(ValueError, match="candidates"):
        optimize(model, "auto", candidates=["fp32", "tensorrt"])
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.onnx")


# ---------------------------------------------------------------------------------------------
# optimize: every mode is called like the model and feeds the processor
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    model = MaskFormerForUniversalSegmentation.from_pretrained(trained_checkpoint).eval()
    processor = MaskFormerImageProcessor.from_pretrained(trained_checkpoint)
    images = [scene(64, 64, 100)[0], scene(50, 70, 101)[0], scene(70, 48, 102)[0]]  # padded together
    return model, processor, processor(images=images, return_tensors="pt"), [im.shape[:2] for im in images]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "compile"])
def test_every_mode_feeds_post_processing_and_agrees_with_fp32(trained, mode, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # the bf16 modes on every CPU (emulated where bf16 is not native)
    available, why = mode_available(mode)
    if not available:
        pytest.skip(why)
    model, processor, inputs, sizes = trained
    with torch.no_grad():
        eager = model(**inputs)
    fast = optimize(model, mode)
    outputs = fast(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    assert outputs.class_queries_logits.dtype == torch.float32
    assert outputs.masks_queries_logits.shape == eager.masks_queries_logits.shape
    want = processor.post_process_semantic_segmentation(eager, target_sizes=sizes)
    got = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    agreement = np.mean([(g == w).float().mean().item() for g, w in zip(got, want)])
    assert agreement >= (0.999 if mode in ("fp32", "onnxruntime", "openvino") else 0.97), agreement
    panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes)
    assert [tuple(p["segmentation"].shape) for p in panoptic] == [tuple(s) for s in sizes]
    if mode in ("fp32", "onnxruntime", "openvino"):  # exact modes: padded images as eager, valid regions
        for i, (h, w) in enumerate(sizes):
            n, m = -(-h // 4), -(-w // 4)
            assert relative(outputs.masks_queries_logits[i, :, :n, :m], eager.masks_queries_logits[i, :, :n, :m]) < 1e-4


def test_auto_measures_picks_and_caches(trained, tmp_path, monkeypatch):
    import maskformer_hf.optimize as optimize_module

    monkeypatch.setenv("MASKFORMER_HF_CACHE", str(tmp_path))
    model, *_ = trained
    example = optimize_module.calibration_batch(2, size=64)
    candidates = ["fp32", "onnxruntime"] if mode_available("onnxruntime")[0] else ["fp32", "int8"]
    fast = optimize(model, "auto", example=example, candidates=candidates, repeats=2)
    measured = {m["mode"]: m for m in fast.measurements}
    assert set(measured) == set(candidates)
    passing = [m for m in measured.values() if m["agreement"] >= 0.99]
    assert fast.mode == min(passing, key=lambda m: m["seconds"])["mode"]
    assert measured["fp32"]["agreement"] == 1.0 and measured["fp32"]["max_abs_diff"] == 0.0
    cache = json.loads((tmp_path / "optimize.json").read_text())
    assert [entry["mode"] for entry in cache.values()] == [fast.mode]

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached decision should have been used")

    monkeypatch.setattr(optimize_module, "measure_modes", no_measuring)
    again = optimize(model, "auto", example=example, candidates=candidates, repeats=2)
    assert again.mode == fast.mode and again.measurements == fast.measurements
    # An impossible bar: nothing but fp32 itself passes, whatever was fastest.
    monkeypatch.undo()
    monkeypatch.setenv("MASKFORMER_HF_CACHE", str(tmp_path))
    strict = optimize(model, "auto", example=example, candidates=["int8"], min_agreement=1.0, use_cache=False)
    assert strict.mode in ("fp32", "int8")
    if strict.measurements[0]["agreement"] < 1.0:
        assert strict.mode == "fp32"


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def test_cli_export_writes_a_checked_graph(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli_main(["export", str(trained_checkpoint), "--format", "onnx", "--with-postprocess", "semantic",
                     "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] and all(row["semantic_agreement_where_decided"] == 1.0 for row in report["sizes"])
    assert all(0.0 <= row["tied_pixels"] < 0.9 and row["semantic_agreement"] >= 1.0 - row["tied_pixels"]
               for row in report["sizes"])
    assert cli_main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")]) == 2
    with pytest.raises(SystemExit) as error:
        cli_main(["export", str(trained_checkpoint), "--format", "tflite", "--out", str(out)])
    assert error.value.code == 2


def test_segment_fast_writes_what_the_eager_model_writes(trained_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKFORMER_HF_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    for seed, (h, w) in enumerate([(64, 64), (48, 80)]):
        Image.fromarray(scene(h, w, 200 + seed)[0]).save(images / f"im{seed}.png")
    common = ["segment", str(images), "--model", str(trained_checkpoint), "--task", "semantic", "--quiet"]
    assert cli_main([*common, "--out", str(tmp_path / "eager")]) == 0
    mode = "onnxruntime" if mode_available("onnxruntime")[0] else "fp32"
    assert cli_main([*common, "--out", str(tmp_path / "fast"), "--fast-mode", mode]) == 0
    assert f"fast inference: {mode}" in capsys.readouterr().err
    for seed in range(2):
        eager = np.array(Image.open(tmp_path / "eager" / f"im{seed}_semantic.png"))
        fast = np.array(Image.open(tmp_path / "fast" / f"im{seed}_semantic.png"))
        assert (eager == fast).mean() >= 0.999


def test_segment_fast_calibrates_at_the_size_the_model_sees(trained_checkpoint, tmp_path, monkeypatch, capsys):
    import maskformer_hf.optimize as optimize_module

    processor = MaskFormerImageProcessor.from_pretrained(trained_checkpoint)
    edge = processor.size["shortest_edge"]
    assert optimize_module.calibration_size(processor) == edge
    assert optimize_module.calibration_size(processor, size=96) == 96
    assert optimize_module.calibration_size(MaskFormerImageProcessor(size={"height": 48, "width": 80})) == 80
    assert optimize_module.calibration_size(object()) == 512
    seen = []

    def measure(model, example, candidates, repeats):  # what --fast measures on, instead of measuring
        seen.append(tuple(example.shape))
        return [{"mode": "fp32", "seconds": 1.0, "agreement": 1.0, "max_abs_diff": 0.0}]

    monkeypatch.setattr(optimize_module, "measure_modes", measure)
    monkeypatch.setenv("MASKFORMER_HF_CACHE", str(tmp_path / "cache"))
    Image.fromarray(scene(40, 56, 3)[0]).save(tmp_path / "im.png")
    common = ["segment", str(tmp_path / "im.png"), "--model", str(trained_checkpoint), "--task", "semantic", "--quiet"]
    assert cli_main([*common, "--fast", "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*common, "--fast", "--size", "48", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(4, 3, edge, edge), (4, 3, 48, 48)]
    assert "fast inference: fp32" in capsys.readouterr().err
