"""Mean IoU and panoptic quality: against a numpy reference, torchmetrics, a hand-computed crowd case,
and the evaluate modules loaded offline."""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ
from torchmetrics.segmentation import MeanIoU as TorchmetricsMeanIoU

import maskformer_hf.metrics as metrics
from maskformer_hf.metrics import (
    MeanIoU,
    PanopticQuality,
    PanopticQualityStatistics,
    confusion_matrix,
    mean_iou,
    panoptic_quality,
    panoptic_statistics,
)

ROOT = Path(__file__).resolve().parents[1]


def numpy_mean_iou(preds, refs, num_labels, ignore_index=255):
    """The straightforward definition: a confusion matrix by np.add.at, then ratios."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    for pred, ref in zip(preds, refs):
        keep = ref != ignore_index
        np.add.at(confusion, (ref[keep], pred[keep]), 1)
    inter = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / confusion.sum(1)
    return {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": inter.sum() / confusion.sum(), "per_category_iou": iou, "per_category_accuracy": acc}


def random_maps(seed, num_labels=7, sizes=((20, 30), (17, 11), (32, 32))):
    """Maps of several sizes; class 5 never occurs (nan), class 6 only predicted; 10% ignored."""
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for h, w in sizes:
        ref = rng.choice([0, 1, 2, 3, 4], size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, ref, rng.choice([0, 1, 2, 3, 4, 6], size=(h, w)))
        ref[rng.random((h, w)) < 0.1] = 255
        preds.append(pred)
        refs.append(ref)
    return preds, refs


def test_mean_iou_equals_numpy_reference():
    preds, refs = random_maps(0)
    ours = mean_iou(preds, refs, num_labels=7, ignore_index=255)
    expected = numpy_mean_iou(preds, refs, 7)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12)
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(ours[key], expected[key], atol=1e-12)  # nan where expected is nan
    assert np.isnan(ours["per_category_iou"][5]) and ours["per_category_iou"][6] == 0.0
    assert np.isnan(ours["per_category_accuracy"][6])  # predicted but absent from the references
    filled = mean_iou(preds, refs, num_labels=7, nan_to_num=-1.0)
    assert filled["per_category_iou"][5] == -1.0 and filled["mean_iou"] == pytest.approx(expected["mean_iou"])


def test_mean_iou_equals_torchmetrics():
    preds, refs = random_maps(1, sizes=((24, 24),) * 3)
    pred, ref = torch.as_tensor(np.stack(preds)), torch.as_tensor(np.stack(refs))
    ours = mean_iou(pred, ref, num_labels=7, ignore_index=255)
    jaccard = MulticlassJaccardIndex(num_classes=7, ignore_index=255, average="none")(pred, ref)
    present = ~np.isnan(ours["per_category_iou"])  # torchmetrics reports 0 for classes absent from both
    np.testing.assert_allclose(ours["per_category_iou"][present], jaccard.numpy()[present], atol=1e-6)
    assert jaccard[~torch.as_tensor(present)].eq(0).all()
    # torchmetrics' MeanIoU has no ignore_index and averages per image: compare image by image on fully
    # labelled maps, and its batch value with the mean of our per-image values.
    full_ref = torch.as_tensor(np.stack([np.where(r == 255, 5, r) for r in refs]))
    full_ref[:, 0, :3] = 6
    per_image = []
    for i in range(3):
        ours_i = mean_iou(pred[i:i + 1], full_ref[i:i + 1], num_labels=7, ignore_index=None)
        tm_i = TorchmetricsMeanIoU(num_classes=7, per_class=True, input_format="index")(pred[i:i + 1], full_ref[i:i + 1])
        np.testing.assert_allclose(ours_i["per_category_iou"], tm_i.numpy(), atol=1e-6)
        tm_mean = TorchmetricsMeanIoU(num_classes=7, input_format="index")(pred[i:i + 1], full_ref[i:i + 1])
        assert ours_i["mean_iou"] == pytest.approx(float(tm_mean), abs=1e-6)
        per_image.append(ours_i["mean_iou"])
    tm_batch = TorchmetricsMeanIoU(num_classes=7, input_format="index")(pred, full_ref)
    assert np.mean(per_image) == pytest.approx(float(tm_batch), abs=1e-6)
    ours_full = mean_iou(pred, full_ref, num_labels=7, ignore_index=None)
    assert ours_full["mean_iou"] == pytest.approx(float(MulticlassJaccardIndex(num_classes=7)(pred, full_ref)), abs=1e-6)


def test_mean_iou_options_and_accumulation():
    preds, refs = random_maps(2)
    # reduce_labels: stored 0 = unlabelled, k = class k-1
    stored = [np.where(r == 255, 0, r + 1) for r in refs]
    assert mean_iou(preds, stored, 7, reduce_labels=True)["mean_iou"] == pytest.approx(mean_iou(preds, refs, 7)["mean_iou"])
    # a stored value already equal to ignore_index stays ignored (the Hub's mean_iou does the same)
    raw = [np.where(r == 255, 0, r + 1) for r in refs]
    raw[0][0, :3] = 255
    kept = [r.copy() for r in refs]
    kept[0][0, :3] = 255
    np.testing.assert_allclose(mean_iou(preds, raw, 7, reduce_labels=True)["per_category_iou"],
                               mean_iou(preds, kept, 7)["per_category_iou"])
    swapped = [np.where(r == 0, 1, np.where(r == 1, 0, r)) for r in refs]
    remapped = mean_iou(preds, swapped, 7, label_map={0: 1, 1: 0})
    np.testing.assert_allclose(remapped["per_category_iou"], mean_iou(preds, refs, 7)["per_category_iou"])
    accumulator = MeanIoU(num_labels=7)
    for pred, ref in zip(preds, refs):
        accumulator.update([pred], [ref])
    assert torch.equal(accumulator.confusion, confusion_matrix(preds, refs, 7))
    assert accumulator.compute()["mean_iou"] == pytest.approx(mean_iou(preds, refs, 7)["mean_iou"])
    assert int(accumulator.confusion.sum()) == sum(int((r != 255).sum()) for r in refs)


def test_mean_iou_rejects_bad_input():
    with pytest.raises(ValueError, match="not a class"):
        mean_iou([np.full((2, 2), 9)], [np.zeros((2, 2), int)], num_labels=3)
    with pytest.raises(ValueError, match="neither a class"):
        mean_iou([np.zeros((2, 2), int)], [np.full((2, 2), 7)], num_labels=3)
    with pytest.raises(ValueError, match="shape"):
        mean_iou([np.zeros((2, 3), int)], [np.zeros((2, 2), int)], num_labels=3)
    with pytest.raises(TypeError, match="integer"):
        mean_iou([np.zeros((2, 2))], [np.zeros((2, 2), int)], num_labels=3)
    with pytest.raises(ValueError, match="wrap it in a list"):
        mean_iou(np.zeros((2, 2), int), np.zeros((2, 2), int), num_labels=3)


def panoptic_case(rng, size=24, things=(0, 1), stuff=(2, 3), void=True):
    """Ground truth: two stuff bands and random thing rectangles (some touching), optional void strip."""
    category = np.full((size, size), stuff[0])
    category[size // 2:] = stuff[1]
    instance = np.zeros((size, size), dtype=np.int64)
    for k in range(1, 5):
        y, x = rng.integers(0, size - 7, 2)
        h, w = rng.integers(3, 8, 2)
        category[y:y + h, x:x + w] = things[k % 2]
        instance[y:y + h, x:x + w] = k
    if void:
        category[0, :6] = 99
        instance[0, :6] = 0
    return category, instance


def perturbed(rng, category, instance, labels):
    """A prediction: shifted ground truth with noise; every pixel assigned to a known class."""
    shift = tuple(int(s) for s in rng.integers(-2, 3, 2))
    category, instance = np.roll(category, shift, (0, 1)).copy(), np.roll(instance, shift, (0, 1)).copy()
    noise = rng.random(category.shape) < 0.06
    category[noise] = rng.choice(labels, size=int(noise.sum()))
    category[category == 99] = labels[-1]
    return category, instance


def to_segments(category, instance, stuff, id_base):
    """(category, instance) maps -> segment-id map (large ids) + segments_info; stuff merged per class."""
    ids = np.zeros(category.shape, dtype=np.int64)
    segments = []
    keys = sorted({(int(c), 0 if c in stuff else int(i)) for c, i in zip(category.ravel(), instance.ravel()) if c != 99})
    for n, (c, i) in enumerate(keys):
        segment_id = id_base + 1000 * n + 7
        ids[(category == c) & ((instance == i) | (c in stuff))] = segment_id
        segments.append({"id": segment_id, "label_id": c, "iscrowd": False})
    return ids, segments


def test_panoptic_quality_equals_torchmetrics_without_crowd():
    rng = np.random.default_rng(0)
    things, stuff = (0, 1), (2, 3)
    reference_pq = TorchmetricsPQ(things=set(things), stuffs=set(stuff), return_sq_and_rq=True, return_per_class=True)
    preds, pred_segments, refs, ref_segments = [], [], [], []
    for _ in range(8):
        gt_cat, gt_inst = panoptic_case(rng, things=things, stuff=stuff)
        pr_cat, pr_inst = perturbed(rng, gt_cat, gt_inst, [0, 1, 2, 3])
        # torchmetrics marks void with a category outside things and stuff
        reference_pq.update(torch.as_tensor(np.stack([pr_cat, pr_inst], -1))[None],
                            torch.as_tensor(np.stack([gt_cat, gt_inst], -1))[None])
        pred_ids, pred_info = to_segments(pr_cat, pr_inst, stuff, id_base=300)
        ref_ids, ref_info = to_segments(gt_cat, gt_inst, stuff, id_base=70_000)
        preds.append(pred_ids), pred_segments.append(pred_info), refs.append(ref_ids), ref_segments.append(ref_info)
    expected = reference_pq.compute().numpy()  # (K, 3): PQ, SQ, RQ per class
    ours = panoptic_quality(preds, pred_segments, refs, ref_segments, num_labels=4, thing_ids=things)
    np.testing.assert_allclose(ours["per_category_pq"], expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(ours["per_category_sq"], expected[:, 1], atol=1e-6)
    np.testing.assert_allclose(ours["per_category_rq"], expected[:, 2], atol=1e-6)
    assert ours["pq"] == pytest.approx(float(expected[:, 0].mean()), abs=1e-6)
    assert ours["pq_things"] == pytest.approx(float(expected[:2, 0].mean()), abs=1e-6)
    assert ours["pq_stuff"] == pytest.approx(float(expected[2:, 0].mean()), abs=1e-6)
    assert 0.1 < ours["pq"] < 0.95  # a real mix of matches and misses


def test_panoptic_quality_crowd_by_hand():
    """One row of 20 pixels, worked out by hand.

    gt:   id 1 (class 0) at 0-4 | id 2 (class 0, crowd) at 5-9 | id 3 (class 1) at 10-15 | void at 16-19
    pred: 10 (class 0) at 0-3   -> IoU with gt 1 = 4/5 = 0.8: TP
          11 (class 0) at 4-8   -> unmatched; 4 of its 5 pixels on own-class crowd: not an FP
          12 (class 1) at 9-13  -> IoU with gt 3 = 4/(5+6-4) = 4/7 > 0.5: TP (its crowd pixel is of class 0)
          13 (class 1) at 14-17 -> IoU with gt 3 = 2/(4+6-2-2) = 1/3: unmatched; void 2/4 is not > 0.5: FP
          14 (class 0) at 18-19 -> all on void: not an FP
    class 0: TP 1 (0.8), FP 0, FN 0 (crowd is never an FN); class 1: TP 1 (4/7), FP 1, FN 0.
    """
    gt = np.array([[1] * 5 + [2] * 5 + [3] * 6 + [0] * 4])
    pred = np.array([[10] * 4 + [11] * 5 + [12] * 5 + [13] * 4 + [14] * 2])
    gt_info = [{"id": 1, "label_id": 0, "iscrowd": False}, {"id": 2, "label_id": 0, "iscrowd": True},
               {"id": 3, "label_id": 1, "iscrowd": False}]
    pred_info = {10: 0, 11: 0, 12: 1, 13: 1, 14: 0}
    stats = panoptic_statistics(pred, pred_info, gt, gt_info, num_labels=2)
    assert stats.true_positives.tolist() == [1, 1]
    assert stats.false_positives.tolist() == [0, 1]
    assert stats.false_negatives.tolist() == [0, 0]
    np.testing.assert_allclose(stats.iou_sum.numpy(), [0.8, 4 / 7])
    result = panoptic_quality([pred], [pred_info], [gt], [gt_info], num_labels=2, thing_ids=[0])
    assert result["pq_things"] == pytest.approx(0.8)
    assert result["pq_stuff"] == pytest.approx((4 / 7) / 1.5)
    assert result["sq_stuff"] == pytest.approx(4 / 7) and result["rq_stuff"] == pytest.approx(2 / 3)
    assert result["pq"] == pytest.approx((0.8 + (4 / 7) / 1.5) / 2)
    # The same prediction labelled class 1 on the class-0 crowd is a false positive; a missed gt is an FN.
    stats = panoptic_statistics(pred, {**pred_info, 11: 1, 10: 1}, gt, gt_info, num_labels=2)
    assert stats.false_positives.tolist() == [0, 3] and stats.false_negatives.tolist() == [1, 0]


def test_panoptic_statistics_accumulate_and_reduce():
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(4):
        gt_cat, gt_inst = panoptic_case(rng)
        pr_cat, pr_inst = perturbed(rng, gt_cat, gt_inst, [0, 1, 2, 3])
        cases.append((*to_segments(pr_cat, pr_inst, (2, 3), 5), *to_segments(gt_cat, gt_inst, (2, 3), 1 << 20)))
    accumulator = PanopticQuality(num_labels=4, thing_ids=[0, 1])
    for pred, pred_info, ref, ref_info in cases:
        accumulator.update([pred], [pred_info], [ref], [ref_info])
    one_shot = panoptic_quality(*zip(*cases), num_labels=4, thing_ids=[0, 1])
    assert accumulator.compute()["pq"] == pytest.approx(one_shot["pq"])
    total = sum(panoptic_statistics(*case, num_labels=4) for case in cases)
    rebuilt = PanopticQualityStatistics.from_tensor(total.to_tensor())
    assert torch.equal(rebuilt.true_positives, accumulator.statistics.true_positives)
    assert torch.allclose(rebuilt.iou_sum, accumulator.statistics.iou_sum)
    # Perfect prediction, whatever the ids: PQ = 1; an absent class is nan and left out of the means.
    pred, pred_info, ref, ref_info = cases[0]
    perfect = panoptic_quality([ref], [ref_info], [ref], [ref_info], num_labels=5, thing_ids=[0, 1])
    assert perfect["pq"] == 1.0 and np.isnan(perfect["per_category_pq"][4]) and perfect["n"] == 4


def test_panoptic_quality_rejects_bad_input():
    gt = np.ones((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="label_id"):
        panoptic_statistics(gt, {1: 5}, gt, {1: 0}, num_labels=2)
    with pytest.raises(ValueError, match="unique"):
        panoptic_statistics(gt, [{"id": 1, "label_id": 0}, {"id": 1, "label_id": 1}], gt, {1: 0}, num_labels=2)
    with pytest.raises(ValueError, match="shape"):
        panoptic_statistics(np.ones((2, 3), int), {1: 0}, gt, {1: 0}, num_labels=2)
    with pytest.raises(TypeError, match="label_id"):
        panoptic_statistics(gt, [{"id": 1}], gt, {1: 0}, num_labels=2)


def test_metric_files_are_package_data():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config.get("options.package_data", "maskformer_hf").split()
    package = ROOT / "src" / "maskformer_hf"
    for folder in (metrics.MEAN_IOU, metrics.PANOPTIC_QUALITY):
        script = Path(folder) / f"{Path(folder).name}.py"
        assert script.is_file()
        relative = script.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), (relative, patterns)


OFFLINE_SCRIPT = """
import json, sys
import evaluate, numpy as np
import maskformer_hf.metrics as m
preds, refs = [np.array([[0, 1], [1, 2]]), np.array([[2, 2, 0]])], [np.array([[0, 1], [0, 255]]), np.array([[2, 1, 0]])]
miou = evaluate.load(m.MEAN_IOU)
miou.add_batch(predictions=preds[:1], references=refs[:1])
out = miou.compute(predictions=preds[1:], references=refs[1:], num_labels=3, ignore_index=255)
gt = np.array([[300, 300, 70000], [300, 0, 70000]])
pq = evaluate.load(m.PANOPTIC_QUALITY)
pq.add(prediction=gt, reference=gt, predicted_segments_info={300: 0, 70000: 1},
       reference_segments_info=[{"id": 300, "label_id": 0}, {"id": 70000, "label_id": 1}])
res = pq.compute(predictions=[gt], references=[gt], predicted_segments_info=[[  # post-processing output format
                 {"id": 300, "label_id": 0, "score": 0.9, "was_fused": False},
                 {"id": 70000, "label_id": 1, "score": 0.8, "was_fused": True}]], reference_segments_info=[[
                 {"id": 300, "label_id": 0, "iscrowd": False}, {"id": 70000, "label_id": 1, "iscrowd": False}]],
                 num_labels=2, thing_ids=[0])
print(json.dumps({"miou": out["mean_iou"], "plain": m.mean_iou(preds, refs, 3)["mean_iou"], "pq": res["pq"],
                  "n": res["n"]}))
"""


@pytest.mark.system
def test_evaluate_modules_load_offline(tmp_path):
    env = {**os.environ, "HF_EVALUATE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["miou"] == pytest.approx(values["plain"]) and 0 < values["miou"] < 1
    assert values["pq"] == 1.0 and values["n"] == 2


def test_docs_metrics_example_gives_what_it_says(monkeypatch):
    page = (ROOT / "docs" / "evaluation.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "PanopticQuality(" in b]
    assert len(blocks) == 1
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    namespace: dict = {}
    exec(compile(blocks[0], "docs/evaluation.md", "exec"), namespace)
    assert namespace["pq"].compute()["pq"] == 1.0
    assert namespace["miou"] is not None
