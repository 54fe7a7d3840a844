"""The paper's baselines (PerPixelBaseline, PerPixelBaseline+, MaskFormer-fixed), the semantic
inference loss, PQ_St of semantic data, the scene sets and the ablation command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.data.synthetic_scenes import SceneGenerator
from maskformer_hf.evaluation import semantic_as_segments
from maskformer_hf.loss_maskformer import semantic_inference_loss, semantic_targets
from maskformer_hf.metrics import PanopticQuality
from maskformer_hf.modeling_maskformer import class_maps_as_queries, probability_logits
from maskformer_hf.training import TrainConfig, variant_overrides

TINY = dict(backbone="resnet18")  # the test-tiny preset on timm's ResNet-18


def tiny_model(kind: str, num_labels: int = 5, **extra) -> MaskFormerForUniversalSegmentation:
    torch.manual_seed(0)
    config = MaskFormerConfig.from_preset("test-tiny", num_labels=num_labels, num_queries=num_labels,
                                          segmentation_type=kind, **{**TINY, **extra})
    return MaskFormerForUniversalSegmentation(config).eval()


def labels(height: int = 64, width: int = 96):
    masks = [torch.zeros(2, height, width), torch.zeros(1, height, width)]
    masks[0][0, : height // 2] = 1
    masks[0][1, height // 2 + 4:] = 1  # rows in between: no mask, ignored
    masks[1][0, :, : width // 2] = 1
    return masks, [torch.tensor([0, 3]), torch.tensor([2])]


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
@pytest.mark.parametrize("num_classes", [1, 2, 7])
def test_probability_logits_give_the_softmax_through_a_sigmoid(scale, num_classes):
    torch.manual_seed(1)
    x = torch.randn(3, num_classes, 4, 5) * scale
    p = probability_logits(x, dim=1)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(torch.sigmoid(p), x.softmax(1), atol=1e-6, rtol=1e-5)
    # No saturation ties: the top class stays the top one where sigmoid(raw logits) would tie at 1.0.
    assert torch.equal(torch.sigmoid(p).argmax(1), x.argmax(1))


def test_class_maps_as_queries_make_semantic_inference_the_per_pixel_argmax():
    x = torch.tensor([[[[40.0]], [[39.0]], [[-5.0]]]])  # (1, 3, 1, 1): sigmoid(40) == sigmoid(39) in float32
    class_logits, masks = class_maps_as_queries(x)
    assert class_logits.shape == (1, 3, 4) and masks.shape == (1, 3, 1, 1)
    probs = class_logits.softmax(-1)[..., :-1]
    scores = torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())
    assert int(scores.argmax(1)) == 0
    torch.testing.assert_close(scores[:, :, 0, 0], x.softmax(1)[:, :, 0, 0])


def test_per_pixel_baseline_loss_and_semantic_output():
    model = tiny_model("per_pixel")
    assert model.model.transformer_module is None and not hasattr(model, "class_predictor")
    pixel_values = torch.randn(2, 3, 64, 96)
    mask_labels, class_labels = labels()
    with torch.no_grad():
        out = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        fpn = model.model.compute_features(pixel_values).fpn_maps[-1]
        logits = model.pixel_classifier(model.model.pixel_decoder.mask_projection(fpn))  # (2, 5, 16, 24)
    up = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
    target = torch.full((2, 64, 96), -100)
    target[0, :32], target[0, 36:], target[1, :, :48] = 0, 3, 2
    expected = F.cross_entropy(up, target, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert list(out.loss_dict) == ["loss_cross_entropy"]
    semantic = MaskFormerImageProcessor().post_process_semantic_segmentation(out, target_sizes=[(64, 96)] * 2)
    probs = F.interpolate(logits.softmax(1), size=(64, 96), mode="bilinear", align_corners=False)
    for b in range(2):  # the semantic map is the argmax of the upsampled per-pixel probabilities
        assert (semantic[b] == probs[b].argmax(0)).float().mean() > 0.999


def test_per_pixel_plus_reads_each_query_mask_as_one_class_with_deep_supervision():
    with pytest.raises(ValueError, match="num_queries"):
        MaskFormerConfig.from_preset("test-tiny", num_labels=5, num_queries=7, segmentation_type="per_pixel_plus", **TINY)
    model = tiny_model("per_pixel_plus").train()
    mask_labels, class_labels = labels()
    out = model(torch.randn(2, 3, 64, 96), mask_labels=mask_labels, class_labels=class_labels)
    assert sorted(out.loss_dict) == ["loss_cross_entropy", "loss_cross_entropy_0"]
    torch.testing.assert_close(out.loss, sum(out.loss_dict.values()))
    out.loss.backward()
    assert model.model.transformer_module.query_embeddings.weight.grad.abs().sum() > 0
    assert out.class_queries_logits.shape == (2, 5, 6) and len(out.auxiliary_logits) == 1


@pytest.mark.parametrize("kind", ["per_pixel", "per_pixel_plus"])
def test_baselines_save_and_load_like_the_main_model(kind, tmp_path):
    model = tiny_model(kind)
    model.save_pretrained(tmp_path)
    loaded, info = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.config.segmentation_type == kind
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).masks_queries_logits, model(x).masks_queries_logits)


def test_bad_segmentation_types_are_refused():
    with pytest.raises(ValueError, match="segmentation_type"):
        MaskFormerConfig(segmentation_type="per-pixel")
    with pytest.raises(ValueError, match="fixed_matching"):
        MaskFormerConfig(segmentation_type="per_pixel", fixed_matching=True)
    from maskformer_hf.export import MaskFormerGraph
    from maskformer_hf.optimize import optimize

    for kind in ("per_pixel", "per_pixel_plus"):
        with pytest.raises(ValueError, match="segmentation_type"):
            MaskFormerGraph(tiny_model(kind))
        with pytest.raises(ValueError, match="segmentation_type"):
            optimize(tiny_model(kind), mode="bf16")


def test_training_variants_map_to_config_fields():
    assert variant_overrides(None, 9) == {}
    assert variant_overrides("maskformer", 9) == {"segmentation_type": "mask_classification", "fixed_matching": False}
    assert variant_overrides("maskformer-fixed", 9)["num_queries"] == 9
    assert variant_overrides("per-pixel-plus", 9) == {"segmentation_type": "per_pixel_plus", "fixed_matching": False,
                                                      "num_queries": 9}
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="deeplab")


def test_fixed_matching_trains_query_c_on_class_c():
    model = tiny_model("mask_classification", fixed_matching=True).train()
    mask_labels, class_labels = labels()
    matches = model.criterion.match(torch.zeros(1, 2, 5, 6), torch.zeros(1, 2, 5, 16, 24), mask_labels, class_labels)
    assert matches[0][0][0].tolist() == [0, 3] and matches[0][1][0].tolist() == [2]
    out = model(torch.randn(2, 3, 64, 96), mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(out.loss)


def test_semantic_inference_loss_is_the_cross_entropy_of_the_normalised_scores():
    torch.manual_seed(2)
    class_logits, mask_logits = torch.randn(2, 4, 4), torch.randn(2, 4, 3, 3)  # K = 3
    target = torch.randint(0, 3, (2, 3, 3))
    target[0, 0, 0] = -100
    scores = torch.einsum("bqk,bqhw->bkhw", class_logits.softmax(-1)[..., :3], mask_logits.sigmoid())
    expected = F.nll_loss((scores / scores.sum(1, keepdim=True)).log(), target, ignore_index=-100)
    torch.testing.assert_close(semantic_inference_loss(class_logits, mask_logits, target), expected)
    # A label map finer than the masks: the scores are bilinearly upsampled to it first.
    fine = torch.randint(0, 3, (2, 6, 6))
    upsampled = F.interpolate(scores, size=(6, 6), mode="bilinear", align_corners=False)
    expected = F.nll_loss((upsampled / upsampled.sum(1, keepdim=True)).log(), fine)
    torch.testing.assert_close(semantic_inference_loss(class_logits, mask_logits, fine), expected)
    config = MaskFormerConfig.from_preset("test-tiny", num_labels=5, num_queries=6, semantic_loss_weight=0.5, **TINY)
    model = MaskFormerForUniversalSegmentation(config)
    mask_labels, class_labels = labels()
    out = model(torch.randn(2, 3, 64, 96), mask_labels=mask_labels, class_labels=class_labels)
    assert {"loss_semantic", "loss_semantic_0"} <= set(out.loss_dict)
    assert out.loss_dict["loss_semantic"] > 0


def test_semantic_targets_ignore_uncovered_pixels():
    mask_labels, class_labels = labels(16, 16)
    target = semantic_targets(mask_labels, class_labels)
    assert target[0, 0, 0] == 0 and target[0, 9, 0] == -100 and target[0, 15, 15] == 3
    assert target[1, 0, 0] == 2 and target[1, 0, 15] == -100


def test_pq_stuff_of_semantic_maps_counts_each_class_region_as_one_segment():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 2, 2]])
    good = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2]])  # the ignored row is free
    bad = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 2, 2]])  # class 1: IoU 0.5, not a match
    # bad: class 0 IoU 4/6 (its 2 pixels on the ignored row leave the union), matched; class 1 IoU 2/4, not
    # matched (a false positive and a false negative); class 2 perfect
    for prediction, expected in ((good, 1.0), (bad, (4 / 6 + 0.0 + 1.0) / 3)):
        metric = PanopticQuality(3, [])
        p, t = semantic_as_segments(prediction, 255), semantic_as_segments(truth, 255)
        metric.update([p[0]], [p[1]], [t[0]], [t[1]])
        assert metric.compute()["pq_stuff"] == pytest.approx(expected)


def test_scene_sets_are_seeded_and_consistent():
    generator = SceneGenerator(4, 8, seed=3)
    assert len(generator.classes) == 12 and sum(c["isthing"] for c in generator.classes) == 8
    image, ids, segments = generator(np.random.default_rng(5), 96)
    again = SceneGenerator(4, 8, seed=3)(np.random.default_rng(5), 96)
    assert np.array_equal(image, again[0]) and np.array_equal(ids, again[1])
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert sorted(s["id"] for s in segments) == sorted(np.unique(ids).tolist())
    assert all(0 <= s["label_id"] < 12 for s in segments)
    assert sum(s["area"] for s in segments) == 96 * 96
    assert SceneGenerator(4, 8, seed=4).textures != generator.textures
    with pytest.raises(ValueError, match="at most"):
        SceneGenerator(200, 0)


def test_recipes_train_on_scene_sets_and_refuse_a_folder_of_another_set(tmp_path):
    from maskformer_hf.training import load_splits

    values = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), synthetic_num_train=3, synthetic_num_val=2,
                  synthetic_size=48, synthetic_scenes=["2", "3"], synthetic_scenes_seed=5)
    config = TrainConfig(**values)  # the CLI passes list items as strings
    assert config.synthetic_scenes == [2, 3]
    train, evaluation, metadata = load_splits(config)
    assert len(train) == 3 and len(evaluation) == 2
    names = [metadata.id2label[i] for i in sorted(metadata.id2label)]
    assert names == [c["name"] for c in SceneGenerator(2, 3, seed=5).classes]
    assert sorted(metadata.thing_ids) == [2, 3, 4]
    load_splits(TrainConfig(**values))  # the same set again: read back
    load_splits(TrainConfig(**{**values, "seed": 7}))  # another training seed: the same images, reused
    with pytest.raises(ValueError, match="another data_dir"):
        load_splits(TrainConfig(**{**values, "synthetic_scenes_seed": 6}))
    with pytest.raises(ValueError, match="another data_dir"):
        load_splits(TrainConfig(**{**values, "synthetic_scenes": []}))
    for bad in ([4], [0, 3], ["a", "b"]):
        with pytest.raises(ValueError, match="synthetic_scenes"):
            TrainConfig(synthetic_scenes=bad)


@pytest.mark.system
def test_quick_ablation_writes_results_from_its_runs(tmp_path, capsys):
    from maskformer_hf.cli import main

    out = tmp_path / "ablation"
    assert main(["ablate", "--quick", "--out", str(out), "--class-counts", "4", "--queries", "4",
                 "--no-demo"]) == 0
    text = (out / "RESULTS.md").read_text()
    for name in ("PerPixelBaseline |", "PerPixelBaseline+", "MaskFormer-fixed", "MaskFormer (bipartite)"):
        assert name in text
    assert (out / "ablation_classes.png").stat().st_size > 1000 and (out / "ablation_curves.png").exists()
    records = sorted((out / "runs").glob("*/record.json"))
    assert len(records) == 5  # 4 variants + 1 queries run
    for record in map(json.loads, (r.read_text() for r in records)):  # the page is made of the records
        steps = record["budget"]["steps"]
        assert [step for step, _ in record["curve"]] == [steps // 2, steps]  # two curve points, the last at the end
        assert record["curve"][-1][1] == record["mean_iou"]  # the final evaluation is the curve's last point
        assert f"| {record['name']} | {record['mean_iou'] * 100:.1f} | {record['pq_stuff'] * 100:.1f} |" in text
    # a second invocation reads the records back instead of training again
    before = [r.stat().st_mtime for r in records]
    assert main(["ablate", "--quick", "--out", str(out), "--class-counts", "4", "--queries", "4", "--no-demo"]) == 0
    assert [r.stat().st_mtime for r in records] == before
    # ... unless the budget changed: then the runs are trained again under the new one
    assert main(["ablate", "--quick", "--out", str(out), "--class-counts", "4", "--queries", "4", "--no-demo",
                 "--steps", "3"]) == 0
    assert all(json.loads(r.read_text())["budget"]["steps"] == 3 for r in records)
    assert "3 steps" in (out / "RESULTS.md").read_text()
