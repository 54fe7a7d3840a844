"""Mask AP: the 12 COCO figures equal pycocotools' COCOeval(iouType="segm") on random scenes; batches,
merges, the evaluate module and the helpers agree with the one-shot function; bad input is refused."""

from __future__ import annotations

import configparser
import contextlib
import fnmatch
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import maskformer_hf.metrics as metrics
from maskformer_hf.metrics import (
    MaskAP,
    MaskAPStatistics,
    instances_from_post_processing,
    instances_from_segments,
    mask_ap,
    mask_ap_image_statistics,
    mask_intersections,
)

COCO_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]  # COCOeval.stats order
NUM_LABELS = 5  # label 3: predictions only (no GT); label 4: GT only (no predictions)


def blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A union of 1-3 ellipses of log-uniform size (a few pixels to most of the image), or an exact square
    of 32² or 96² pixels (the area-range bounds)."""
    if rng.random() < 0.1:
        side = int(rng.choice([32, 96]))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        mask = np.zeros((height, width), dtype=bool)
        mask[top:top + side, left:left + side] = True
        return mask
    ys, xs = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    for _ in range(rng.integers(1, 4)):
        ry, rx = np.exp(rng.uniform(np.log(1.5), np.log(80), size=2))
        oy, ox = rng.normal(0, 0.5 * ry), rng.normal(0, 0.5 * rx)
        mask |= ((ys - cy - oy) / ry) ** 2 + ((xs - cx - ox) / rx) ** 2 <= 1
    return mask


def perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A detection of ``mask``: shifted by up to ~5% of its size, sometimes grown or shrunk by one pixel."""
    reach = max(1, int(0.05 * np.sqrt(mask.sum())))
    out = np.roll(mask, (int(rng.integers(-reach, reach + 1)), int(rng.integers(-reach, reach + 1))), axis=(0, 1))
    change = rng.random()
    if change < 0.25:
        out = out | np.roll(out, 1, 0) | np.roll(out, 1, 1)
    elif change < 0.5 and mask.sum() > 100:
        out = out & np.roll(out, 1, 0) & np.roll(out, 1, 1)
    return out


def random_scene(seed: int, num_images: int = 20, custom_areas: bool = False):
    """Per image a prediction dict and a reference dict (numpy), COCO-like but adversarial."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for i in range(num_images):
        height, width = int(rng.integers(100, 141)), int(rng.integers(100, 151))
        num_gt = 0 if i in (0, 2) else int(rng.integers(1, 8))
        gt_masks = [blob(rng, height, width) for _ in range(num_gt)]
        if num_gt >= 2 and rng.random() < 0.3:
            gt_masks[1] = gt_masks[0].copy()  # equal IoU with two GT
        gt_labels = rng.choice([0, 1, 2, 4], size=num_gt)
        crowd = rng.random(num_gt) < 0.15
        areas = np.array([m.sum() for m in gt_masks], dtype=np.float64)
        if custom_areas:  # COCO's json area need not be the pixel count; include the exact bounds
            areas = np.where(rng.random(num_gt) < 0.3, rng.choice([1024.0, 9216.0, 0.0, 5e3], size=num_gt),
                             areas * rng.uniform(0.5, 2.0, size=num_gt))
        pred_masks, pred_labels = [], []
        if i not in (1, 2):
            for mask, label in zip(gt_masks, gt_labels):
                for _ in range(int(rng.random() < 0.85) + int(rng.random() < 0.3)):
                    pred_masks.append(perturb(rng, mask))
                    pred_labels.append(label if (rng.random() < 0.85 and label != 4) else rng.integers(0, 4))
            for _ in range(int(rng.integers(0, 5))):
                pred_masks.append(blob(rng, height, width))
                pred_labels.append(rng.integers(0, 4))
            if i == 5:  # 130 detections of category 0, better scored than the only one finding a new GT
                hidden = np.zeros((height, width), dtype=bool)
                hidden[10:40, 10:50] = True
                gt_masks.append(hidden)
                gt_labels, crowd = np.append(gt_labels, 0), np.append(crowd, False)
                areas = np.append(areas, 1200.0)
                sources = [m for m, lab in zip(gt_masks, gt_labels) if lab == 0]
                for _ in range(130):
                    pred_masks.append(perturb(rng, sources[int(rng.integers(len(sources)))]) if rng.random() < 0.3
                                      else blob(rng, height, width))
                    pred_labels.append(0)
                pred_masks.append(perturb(rng, hidden))
                pred_labels.append(0)
        num_pred = len(pred_masks)
        scores = np.round(rng.random(num_pred), 1 if seed % 2 else 2)  # ties
        if i == 5:
            scores[-131:-1] = np.maximum(scores[-131:-1], 0.3)
            scores[-1] = 0.01  # ranked past 100 in its image and category: not counted
        empty = np.zeros((0, height, width), dtype=bool)
        predictions.append({"masks": np.stack(pred_masks) if num_pred else empty, "scores": scores,
                            "labels": np.array(pred_labels, dtype=np.int64)})
        references.append({"masks": np.stack(gt_masks) if num_gt else empty, "labels": gt_labels.astype(np.int64),
                           "iscrowd": crowd, "area": areas})
    return predictions, references


def coco_stats(predictions, references, num_labels: int) -> np.ndarray:
    """The oracle: COCOeval(iouType="segm") on the same scene, built in memory (ids from 1)."""
    images, annotations, results = [], [], []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        height, width = ref["masks"].shape[1:]
        images.append({"id": i + 1, "height": height, "width": width})
        for mask, label, crowd, area in zip(ref["masks"], ref["labels"], ref["iscrowd"], ref["area"]):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "segmentation": rle, "area": float(area), "iscrowd": int(crowd),
                                "bbox": mask_utils.toBbox(rle).tolist()})
        for mask, score, label in zip(pred["masks"], pred["scores"], pred["labels"]):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "score": float(score),
                            "segmentation": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": k + 1, "name": str(k)} for k in range(num_labels)]}
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"]


def as_array(result) -> np.ndarray:
    return np.array([result[k] for k in COCO_KEYS])


@pytest.mark.parametrize("seed,custom_areas", [(0, False), (1, False), (2, True), (3, True), (4, False)])
def test_equals_pycocotools(seed, custom_areas):
    predictions, references = random_scene(seed, custom_areas=custom_areas)
    expected, precision = coco_stats(predictions, references, NUM_LABELS)
    result = mask_ap(predictions, references, num_labels=NUM_LABELS)
    np.testing.assert_allclose(as_array(result), expected, rtol=0, atol=1e-6)
    assert 0.05 < result["map"] < 0.95 and result["map_50"] > result["map_75"]  # a scene, not a degenerate one
    # Per category (area all, 100 detections): the mean of COCOeval's precision; nan without GT.
    coco_per_category = precision[:, :, :, 0, -1].mean(axis=(0, 1))
    has_gt = coco_per_category > -1
    np.testing.assert_allclose(result["per_category_ap"][has_gt], coco_per_category[has_gt], rtol=0, atol=1e-6)
    assert np.isnan(result["per_category_ap"][3]) and not np.isnan(result["per_category_ap"][4])
    assert result["per_category_ap"][4] == 0.0 and result["n"] == int(has_gt.sum()) == 4


def test_max_detections_and_ties_matter():
    """The scene exercises what it claims: tied scores, and in image 5 a detection that finds a GT alone
    but is ranked past 100 among its category's detections, so it is dropped."""
    predictions, references = random_scene(0)
    scores = np.concatenate([p["scores"] for p in predictions])
    assert np.unique(scores).size < scores.size
    pred, ref = predictions[5], references[5]
    stats = mask_ap_image_statistics(pred["masks"], pred["scores"], pred["labels"], ref["masks"], ref["labels"],
                                     NUM_LABELS, gt_iscrowd=ref["iscrowd"])
    assert (pred["labels"] == 0).sum() > 100 and (stats.labels == 0).sum() == 100 and stats.ranks.max() == 99
    assert 0.01 not in stats.scores
    alone = mask_ap_image_statistics(pred["masks"][-1:], [0.01], [0], ref["masks"], ref["labels"], NUM_LABELS)
    assert alone.matched[0, 0].all()


def test_tie_and_preference_rules_against_pycocotools():
    """Two cases where COCO's scan order decides: a detection with equal IoU to two GT takes the later
    one (then the next detection can take the first), and a detection prefers a regular GT of lower
    IoU to a crowd GT of higher IoU."""
    def box(x0, x1, y0=0, y1=10, size=(20, 40)):
        mask = np.zeros(size, dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask

    tie = ({"masks": np.stack([box(2, 12), box(0, 10)]), "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])},
           {"masks": np.stack([box(0, 10), box(4, 14)]), "labels": np.array([0, 0]), "iscrowd": np.array([False, False]),
            "area": np.array([100.0, 100.0])})  # IoU of the first detection: 80/120 with both GT
    prefer = ({"masks": np.stack([box(0, 10)]), "scores": np.array([0.9]), "labels": np.array([0])},
              {"masks": np.stack([box(0, 30), box(0, 8, 0, 8)]), "labels": np.array([0, 0]),
               "iscrowd": np.array([True, False]), "area": np.array([300.0, 64.0])})  # IoU 1 with crowd, 0.64
    for prediction, reference in (tie, prefer):
        expected, _ = coco_stats([prediction], [reference], 1)
        result = mask_ap([prediction], [reference], num_labels=1)
        np.testing.assert_allclose(as_array(result), expected, rtol=0, atol=1e-12)
        assert result["map_50"] == pytest.approx(1.0)


def test_crowd_iou_and_area_bounds_by_hand():
    """A crowd GT is matched on intersection / detection area, by any number of detections; a GT of
    area exactly 32² is in both small and medium."""
    crowd = np.zeros((1, 64, 64), dtype=bool)
    crowd[0, :, :32] = True  # 2048 pixels
    exact = np.zeros((1, 64, 64), dtype=bool)
    exact[0, :32, 32:] = True  # 1024 pixels
    dets = np.zeros((3, 64, 64), dtype=bool)
    dets[0, :10, :10] = True  # inside the crowd: IoU 1 with it (would be 100/2048 as plain IoU)
    dets[1, 20:30, :10] = True  # inside the crowd as well
    dets[2] = exact[0]
    stats = mask_ap_image_statistics(dets, [0.9, 0.8, 0.7], [0, 0, 0], np.concatenate([crowd, exact]), [0, 0],
                                     num_labels=1, gt_iscrowd=[True, False])
    assert stats.matched.all()  # every detection matched at every IoU threshold and in every area range
    np.testing.assert_array_equal(stats.ignored[:, 0], [[True, True, False], [True, True, False],
                                                        [True, True, False], [True, True, True]])
    np.testing.assert_array_equal(stats.num_gt[:, 0], [1, 1, 1, 0])  # all, small, medium, large
    result = mask_ap([{"masks": dets, "scores": [0.9, 0.8, 0.7], "labels": [0, 0, 0]}],
                     [{"masks": np.concatenate([crowd, exact]), "labels": [0, 0], "iscrowd": [True, False]}], 1)
    assert result["map"] == pytest.approx(1.0) and result["map_small"] == pytest.approx(1.0)
    assert result["map_medium"] == pytest.approx(1.0) and result["map_large"] == -1.0


def test_batches_merges_and_state_equal_one_shot():
    predictions, references = random_scene(1)
    one_shot = mask_ap(predictions, references, NUM_LABELS)
    batched = MaskAP(NUM_LABELS)
    for start in range(0, 20, 3):
        batched.update(predictions[start:start + 3], references[start:start + 3])
    first, second = MaskAP(NUM_LABELS), MaskAP(NUM_LABELS)
    first.update(predictions[:9], references[:9])
    second.update(predictions[9:], references[9:])
    state = {k: torch.as_tensor(v) for k, v in second.state().items()}  # as after a gather of tensors
    merged = MaskAP(NUM_LABELS).merge(first.state()).merge(state)
    for metric in (batched, merged):
        result = metric.compute()
        np.testing.assert_allclose(as_array(result), as_array(one_shot), rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["per_category_ap"], one_shot["per_category_ap"], equal_nan=True)
    assert merged.statistics.num_images == 20
    batched.reset()
    assert batched.compute()["map"] == -1.0 and batched.statistics.scores.size == 0
    with pytest.raises(ValueError, match="keys"):
        MaskAP(NUM_LABELS).merge({"scores": np.zeros(0)})
    with pytest.raises(ValueError, match="categories"):
        MaskAP(NUM_LABELS).merge(MaskAPStatistics.zeros(3))


def test_torch_inputs_and_helpers():
    predictions, references = random_scene(3, num_images=6)
    expected = mask_ap(predictions, references, NUM_LABELS)
    as_torch = [{k: torch.as_tensor(v) for k, v in p.items()} for p in predictions]
    float_masks = [{**p, "masks": p["masks"].float()} for p in as_torch]
    for preds in (as_torch, float_masks):
        np.testing.assert_allclose(as_array(mask_ap(preds, references, NUM_LABELS)), as_array(expected), atol=1e-12)
    # A post-processing result (binary maps, ids index them) gives the same as its prediction dict.
    pred = predictions[3]
    info = [{"id": j, "label_id": int(c), "was_fused": False, "score": float(s)}
            for j, (c, s) in enumerate(zip(pred["labels"], pred["scores"]))]
    post = {"segmentation": torch.as_tensor(pred["masks"]).float(), "segments_info": info}
    converted = instances_from_post_processing(post)
    assert torch.equal(converted["masks"], torch.as_tensor(pred["masks"]))
    assert converted["labels"].tolist() == pred["labels"].tolist()
    np.testing.assert_allclose(as_array(mask_ap([post], references[3:4], NUM_LABELS)),
                               as_array(mask_ap([pred], references[3:4], NUM_LABELS)), atol=1e-12)
    id_map = torch.tensor([[-1, 0, 0], [1, 1, -1]])
    from_map = instances_from_post_processing({"segmentation": id_map, "segments_info": [
        {"id": 0, "label_id": 2, "score": 0.5}, {"id": 1, "label_id": 0, "score": 0.25}]})
    assert from_map["masks"].int().tolist() == [[[0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]]]
    assert from_map["scores"].tolist() == [0.5, 0.25] and from_map["labels"].tolist() == [2, 0]
    # A panoptic ground truth: things only, empty segments dropped, crowd kept.
    segment_map = np.array([[5, 5, 9], [7, 0, 9]])
    segments = [{"id": 5, "label_id": 1, "iscrowd": False}, {"id": 9, "label_id": 2, "iscrowd": True},
                {"id": 7, "label_id": 3}, {"id": 11, "label_id": 1}]
    truth = instances_from_segments(segment_map, segments, thing_ids=[1, 2])
    assert truth["masks"].int().tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]]]
    assert truth["labels"].tolist() == [1, 2] and truth["iscrowd"].tolist() == [False, True]
    assert instances_from_segments(segment_map, segments)["labels"].tolist() == [1, 2, 3]


def test_rejects_bad_input():
    masks = np.zeros((2, 4, 4), dtype=bool)
    good = dict(pred_masks=masks, pred_scores=[0.5, 0.4], pred_labels=[0, 1], gt_masks=masks, gt_labels=[0, 1],
                num_labels=2)
    mask_ap_image_statistics(**good)
    cases = [
        (dict(gt_masks=np.zeros((2, 4, 5), dtype=bool)), r"pred_masks are \(4, 4\) pixels but gt_masks \(4, 5\)"),
        (dict(pred_scores=[0.5]), r"pred_scores: expected shape \(2,\) \(one per mask\), got \(1,\)"),
        (dict(pred_labels=[0, 2]), r"pred_labels: label ids must lie in \[0, 2\), got \[0, 2\]"),
        (dict(gt_labels=[-1, 0]), r"gt_labels: label ids must lie in \[0, 2\)"),
        (dict(pred_labels=[0.0, 1.0]), "expected integer label ids"),
        (dict(pred_masks=np.full((2, 4, 4), 0.3)), "expected bool or 0/1 masks"),
        (dict(pred_masks=np.zeros((4, 4), dtype=bool)), r"expected \(N, H, W\) binary masks, got shape \(4, 4\)"),
        (dict(pred_scores=[0.5, float("nan")]), "finite"),
        (dict(gt_iscrowd=[True]), r"gt_iscrowd: expected shape \(2,\)"),
        (dict(num_labels=0), "num_labels must be a positive int"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            mask_ap_image_statistics(**{**good, **change})
    prediction = {"masks": masks, "scores": [0.5, 0.4], "labels": [0, 1]}
    reference = {"masks": masks, "labels": [0, 5]}
    with pytest.raises(ValueError, match=r"image 0: gt_labels: label ids must lie in \[0, 2\)"):
        mask_ap([prediction], [reference], num_labels=2)
    with pytest.raises(ValueError, match="got 1 predictions but 2 references"):
        mask_ap([prediction], [reference, reference], num_labels=2)
    with pytest.raises(TypeError, match="'masks', 'scores' and 'labels'"):
        mask_ap([{"masks": masks}], [reference], num_labels=2)


def test_evaluate_module_equals_function():
    import evaluate

    predictions, references = random_scene(2, num_images=8, custom_areas=True)
    module = evaluate.load(metrics.MASK_AP)  # a local folder: no network
    module.add_batch(predictions=predictions[:3], references=references[:3])
    module.add(prediction={k: torch.as_tensor(v) for k, v in predictions[3].items()}, reference=references[3])
    without_area = [{k: v for k, v in r.items() if k != "area"} for r in references[4:]]  # pixel counts
    out = module.compute(predictions=predictions[4:], references=without_area, num_labels=NUM_LABELS)
    plain = mask_ap(predictions, references[:4] + without_area, num_labels=NUM_LABELS)
    np.testing.assert_allclose(as_array(out), as_array(plain), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["per_category_ap"], plain["per_category_ap"], equal_nan=True)
    assert 0 < plain["map"] < 1  # and the areas passed through matter:
    assert not np.allclose(as_array(plain), as_array(mask_ap(predictions, references, NUM_LABELS)))
    with pytest.raises(ValueError, match="expected bool or 0/1 masks"):
        module.add(prediction={**predictions[5], "masks": predictions[5]["masks"] * 0.5}, reference=references[5])


def test_mask_ap_module_is_package_data():
    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    patterns = config.get("options.package_data", "maskformer_hf").split()
    script = Path(metrics.MASK_AP) / "mask_average_precision.py"
    relative = script.relative_to(root / "src" / "maskformer_hf").as_posix()
    assert script.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), (relative, patterns)
    assert {"MASK_AP", "MaskAP", "mask_ap", "instances_from_post_processing"} <= set(metrics.__all__)


def test_matmul_path_equals_bit_path(monkeypatch):
    """Off CPU (and without numpy's bitwise_count) intersections are a matmul: same numbers."""
    predictions, references = random_scene(4, num_images=6)
    bits = mask_ap(predictions, references, NUM_LABELS)
    a, b = torch.as_tensor(predictions[3]["masks"]), torch.as_tensor(references[3]["masks"])
    expected = (a[:, None] & b[None]).flatten(2).sum(-1).numpy()
    np.testing.assert_array_equal(mask_intersections(a, b), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(mask_intersections(a, b), expected)
    matmul = mask_ap(predictions, references, NUM_LABELS)
    np.testing.assert_array_equal(as_array(matmul), as_array(bits))
