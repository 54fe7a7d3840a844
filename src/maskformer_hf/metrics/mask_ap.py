"""Mask average precision for instance segmentation, with the conventions of COCO's ``COCOeval(iouType="segm")``.

Per category, area range and IoU threshold ``t`` in 0.50:0.05:0.95, detections are matched to ground
truth (GT) image by image, then pooled over images into a precision/recall curve:

- per image and category, the detections are sorted by score, best first (a stable sort: ties keep
  their input order), and only the first 100 (``maxDets``) are kept;
- IoU is ``|D∩G| / |D∪G|`` on the binary masks, and ``|D∩G| / |D|`` for a crowd GT;
- a GT is *ignored* for an area range when it is crowd or its area lies outside the range
  (``area < lo or area > hi``: the bounds belong to both neighbouring ranges). The area is the
  GT's ``area`` when given (COCO json carries one), else its pixel count;
- greedy matching in score order: a detection takes, among the GT it overlaps with IoU >= ``t``
  that are still free, the one of highest IoU (on ties, the later one in input order), looking at
  non-ignored GT first and at ignored GT only when no non-ignored one qualifies. A matched GT is no
  longer free, except a crowd GT, which any number of detections may match;
- a detection matched to an ignored GT is ignored, and so is an unmatched one whose pixel count lies
  outside the area range; the others are true or false positives;
- pooled over images (in the order they were given), the detections are sorted by score (stable);
  cumulative TP/FP give recall ``TP / n_gt`` (``n_gt``: non-ignored GT) and precision
  ``TP / (TP + FP + eps)``, precision is made non-increasing from the right and read at the 101 recall
  points 0:0.01:1 (the first detection reaching each recall; 0 past the last recall reached). AP is
  the mean over those points, recall (AR) is the recall after the last detection;
- a category without non-ignored GT in a range has no AP/AR there and is left out of the means.

Area ranges (pixels): all ``[0, 1e10]``, small ``[0, 32²]``, medium ``[32², 96²]``, large
``[96², 1e10]``. ``tests/test_mask_ap.py`` checks all 12 COCO figures against pycocotools to 1e-6.

No mask is kept: :func:`mask_ap_image_statistics` turns one image into a :class:`MaskAPStatistics`
(per kept detection its score, category, rank and matched / ignored flags per area range and IoU
threshold; per area range and category the count of non-ignored GT). Statistics add up with ``+``
(concatenation in image order); :func:`mask_ap_from_statistics` turns them into numbers. The IoU
table of one image is, per category, one :func:`mask_intersections` (bit-packed AND + popcount on
CPU, a matmul of the flattened masks on an accelerator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .panoptic import _as_map

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,) the 10 COCO IoU thresholds
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # (R,) the 101 recall points
MAX_DETECTIONS = (1, 10, 100)  # per image and category, for AR@1 / AR@10 / AR@100; AP uses 100
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}  # inclusive bounds, in pixels
_AREA_BOUNDS = np.array(list(AREA_RANGES.values()))  # (A, 2)

ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]


@dataclass
class MaskAPStatistics:
    """Matching results of the kept detections, concatenated image after image (D in all), and GT counts.

    Instances add with ``+`` (and ``sum(...)``): detections are concatenated (``self`` first), GT
    counts summed. The order of images only matters for detections of one category with exactly
    equal scores in different images (COCO's stable sort keeps the earlier image first).
    """

    scores: np.ndarray  # (D,) float64
    labels: np.ndarray  # (D,) int64, category of each detection
    ranks: np.ndarray  # (D,) int64, rank by score within its image and category (0 = best, < 100)
    matched: np.ndarray  # (A, T, D) bool, matched to a GT, per area range and IoU threshold
    ignored: np.ndarray  # (A, T, D) bool, ignored (matched to an ignored GT, or unmatched and out of range)
    num_gt: np.ndarray  # (A, K) int64, non-ignored GT per area range and category
    num_images: int = 0

    @classmethod
    def zeros(cls, num_labels: int) -> "MaskAPStatistics":
        num_areas, num_thresholds = len(AREA_RANGES), len(IOU_THRESHOLDS)
        return cls(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                   np.zeros((num_areas, num_thresholds, 0), dtype=bool),
                   np.zeros((num_areas, num_thresholds, 0), dtype=bool),
                   np.zeros((num_areas, num_labels), dtype=np.int64))

    @classmethod
    def concatenate(cls, parts: Sequence["MaskAPStatistics"], num_labels: int) -> "MaskAPStatistics":
        """All ``parts`` in order, in one copy (``sum`` would copy the growing arrays at every step)."""
        parts = [cls.zeros(num_labels), *parts]
        if any(p.num_gt.shape != parts[0].num_gt.shape for p in parts):
            raise ValueError(f"cannot add statistics of {sorted({p.num_gt.shape[1] for p in parts})} categories")
        return cls(np.concatenate([p.scores for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.ranks for p in parts]), np.concatenate([p.matched for p in parts], axis=2),
                   np.concatenate([p.ignored for p in parts], axis=2), sum(p.num_gt for p in parts),
                   sum(p.num_images for p in parts))

    def __add__(self, other: "MaskAPStatistics") -> "MaskAPStatistics":
        if not isinstance(other, MaskAPStatistics):
            return NotImplemented
        return MaskAPStatistics.concatenate([self, other], self.num_gt.shape[1])

    def __radd__(self, other: Any) -> "MaskAPStatistics":
        if isinstance(other, int) and other == 0:  # lets the builtin sum() start from 0
            return self
        return self.__add__(other)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (picklable; ``torch.distributed.all_gather_object`` takes it as is)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["num_images"] = np.array(self.num_images, dtype=np.int64)
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "MaskAPStatistics":
        """Inverse of :meth:`to_dict` (numpy arrays or tensors)."""
        names = [f.name for f in fields(cls)]
        if not isinstance(state, Mapping) or set(state) != set(names):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"expected a state dict with keys {names}, got {got}")
        arrays = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in state.items()}
        return cls(arrays["scores"].astype(np.float64), arrays["labels"].astype(np.int64),
                   arrays["ranks"].astype(np.int64), arrays["matched"].astype(bool), arrays["ignored"].astype(bool),
                   arrays["num_gt"].astype(np.int64), int(arrays["num_images"]))


# ----------------------------------------------------------------------------------------------- inputs

def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


def _as_masks(value: Any, name: str) -> Tensor:
    """`(N, H, W)` bool or 0/1 masks -> bool tensor (same device); an empty value of any shape -> `(0, 0, 0)`."""
    masks = _as_tensor(value)
    if masks.numel() == 0 and masks.ndim != 3:
        return torch.zeros((0, 0, 0), dtype=torch.bool, device=masks.device)
    if masks.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) binary masks, got shape {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not ((masks == 0) | (masks == 1)).all():
            raise ValueError(f"{name}: expected bool or 0/1 masks (threshold probabilities first), got dtype "
                             f"{masks.dtype} with values other than 0 and 1")
        masks = masks != 0
    return masks


def _as_vector(value: Any, length: int, name: str, kind: str) -> np.ndarray:
    """`(N,)` -> numpy float64 (kind "float"), int64 ("int") or bool ("bool"), checked."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        value = value.double() if value.is_floating_point() else value  # numpy has no bfloat16
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},) (one per mask), got {array.shape}")
    if kind == "int":
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name}: expected integer label ids, got dtype {array.dtype}")
        return array.astype(np.int64)
    if kind == "bool":
        if array.size and not (array.dtype == bool or np.isin(array, (0, 1)).all()):
            raise ValueError(f"{name}: expected bool or 0/1 flags, got {array.tolist()}")
        return array.astype(bool)
    if array.size and (not np.issubdtype(array.dtype, np.number) or not np.isfinite(array.astype(np.float64)).all()):
        raise ValueError(f"{name}: expected finite numbers, got {array.tolist()}")
    return array.astype(np.float64)


def _check_labels(labels: np.ndarray, num_labels: int, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"{name}: label ids must lie in [0, {num_labels}), got {sorted(set(labels.tolist()))}")


# -------------------------------------------------------------------------------------------- one image

def _pixel_counts(masks: Tensor) -> np.ndarray:
    """`(N, H, W)` bool -> `(N,)` float64 pixel counts."""
    if masks.device.type == "cpu":  # numpy counts bools far faster than torch on CPU
        flat = masks.flatten(1).numpy()
        return np.array([np.count_nonzero(row) for row in flat], dtype=np.float64)
    return torch.count_nonzero(masks.flatten(1), dim=1).cpu().numpy().astype(np.float64)


def _bit_rows(masks: Tensor) -> np.ndarray:
    """`(N, H, W)` bool CPU -> `(N, ceil(H*W / 64))` uint64, 64 pixels per word."""
    packed = np.packbits(masks.flatten(1).numpy(), axis=1)  # (N, ceil(H*W / 8)) uint8
    return np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8))).view(np.uint64)


def mask_intersections(a: Tensor, b: Tensor) -> np.ndarray:
    """Pixel counts of every pairwise intersection, exact: `(n, H, W)`, `(m, H, W)` bool -> `(n, m)` float64.

    On CPU: bit-packed rows, AND, popcount (numpy >= 2). Elsewhere: a matmul of the flattened 0/1 masks
    on their device, in float32 below 2**24 pixels (integer sums are exact there, also under TF32 /
    bf16 matmul modes, whose inputs 0/1 are exact and whose accumulation is fp32), else float64.
    """
    if a.device.type == "cpu" and b.device.type == "cpu" and hasattr(np, "bitwise_count"):
        rows_a, rows_b = _bit_rows(a), _bit_rows(b)  # (n, words), (m, words)
        out = np.empty((rows_a.shape[0], rows_b.shape[0]))
        step = max(1, (1 << 22) // max(1, rows_b.size))  # bound the (step, m, words) temporary
        for start in range(0, rows_a.shape[0], step):
            both = rows_a[start:start + step, None] & rows_b[None]
            out[start:start + step] = np.bitwise_count(both).sum(-1, dtype=np.int64)
        return out
    dtype = torch.float32 if a.shape[1] * a.shape[2] < 2 ** 24 else torch.float64
    return (a.flatten(1).to(dtype) @ b.flatten(1).to(a.device, dtype).T).double().cpu().numpy()


def _match(iou: np.ndarray, ranks: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of one image (all categories at once: cross-category IoU must be -1).

    Detections of equal rank belong to different categories, whose GT are disjoint, so each rank is
    one vectorised step over (area range, IoU threshold, detection of that rank, GT).

    Args:
        iou: `(D, G)` float64, -1 between different categories. ranks: `(D,)` rank within the category.
        gt_ignore: `(A, G)` bool. gt_crowd: `(G,)` bool.
    Returns:
        matched `(A, T, D)` bool and, for the matched ones, whether their GT is ignored `(A, T, D)` bool.
    """
    num_dets, num_gt = iou.shape
    num_areas = gt_ignore.shape[0]
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None, None]  # (1, T, 1, 1)
    matched = np.zeros((num_areas, len(IOU_THRESHOLDS), num_dets), dtype=bool)
    on_ignored = np.zeros_like(matched)
    if num_dets == 0 or num_gt == 0:
        return matched, on_ignored
    taken = np.zeros((num_areas, len(IOU_THRESHOLDS), num_gt), dtype=bool)  # (A, T, G) non-crowd GT matched
    hopeful = iou.max(1) >= thresholds.min()  # (D,) only those can match anything
    ignore = gt_ignore[:, None, None, :]  # (A, 1, 1, G)
    for rank in np.unique(ranks[hopeful]):
        dets = np.flatnonzero(hopeful & (ranks == rank))  # (d,) one per category
        rows = iou[dets][None, None]  # (1, 1, d, G)
        free = ~(taken[:, :, None, :] & ~gt_crowd)  # (A, T, 1, G)
        candidate = (rows >= thresholds) & free  # (A, T, d, G)
        regular = candidate & ~ignore
        use = np.where(regular.any(-1, keepdims=True), regular, candidate)  # non-ignored GT first
        value = np.where(use, rows, -1.0)
        best = num_gt - 1 - value[..., ::-1].argmax(-1)  # (A, T, d) the last maximum, as COCO's `>=` scan
        hit = use.any(-1)  # (A, T, d)
        matched[:, :, dets] = hit
        on_ignored[:, :, dets] = hit & gt_ignore[np.arange(num_areas)[:, None, None], best]
        a, t, j = np.nonzero(hit)
        taken[a, t, best[a, t, j]] = True
    return matched, on_ignored


def mask_ap_image_statistics(
    pred_masks: ArrayLike,
    pred_scores: ArrayLike,
    pred_labels: ArrayLike,
    gt_masks: ArrayLike,
    gt_labels: ArrayLike,
    num_labels: int,
    gt_iscrowd: ArrayLike | None = None,
    gt_areas: ArrayLike | None = None,
) -> MaskAPStatistics:
    """COCO matching results of ONE image.

    Args:
        pred_masks: `(N, H, W)` bool or 0/1 predicted instance masks (tensor, on any device, or numpy).
        pred_scores: `(N,)` confidence scores. pred_labels: `(N,)` int label ids in ``[0, num_labels)``.
        gt_masks: `(M, H, W)` bool or 0/1 ground-truth masks. gt_labels: `(M,)` int label ids.
        num_labels: K.
        gt_iscrowd: `(M,)` bool, default all False. gt_areas: `(M,)` areas for the area ranges, default
            the masks' pixel counts (pass COCO's ``area`` to reproduce COCOeval on COCO json).

    Returns:
        :class:`MaskAPStatistics` of this image (``num_images`` = 1).
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    preds, gts = _as_masks(pred_masks, "pred_masks"), _as_masks(gt_masks, "gt_masks")
    if preds.shape[0] and gts.shape[0] and preds.shape[1:] != gts.shape[1:]:
        raise ValueError(f"pred_masks are {tuple(preds.shape[1:])} pixels but gt_masks {tuple(gts.shape[1:])}")
    scores = _as_vector(pred_scores, preds.shape[0], "pred_scores", "float")
    labels = _as_vector(pred_labels, preds.shape[0], "pred_labels", "int")
    truth = _as_vector(gt_labels, gts.shape[0], "gt_labels", "int")
    _check_labels(labels, num_labels, "pred_labels")
    _check_labels(truth, num_labels, "gt_labels")
    crowd = (np.zeros(gts.shape[0], dtype=bool) if gt_iscrowd is None
             else _as_vector(gt_iscrowd, gts.shape[0], "gt_iscrowd", "bool"))
    gt_pixels = _pixel_counts(gts)  # (M,)
    areas = gt_pixels if gt_areas is None else _as_vector(gt_areas, gts.shape[0], "gt_areas", "float")

    # Per category, best score first (stable), at most 100 detections.
    by_score = np.argsort(-scores, kind="stable")
    order = by_score[np.argsort(labels[by_score], kind="stable")]  # (N,) grouped by category
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    ranks = np.arange(order.size) - first
    keep = ranks < MAX_DETECTIONS[-1]
    order, ranks, det_labels = order[keep], ranks[keep], sorted_labels[keep]

    # IoU table, category by category (exact pixel counts, see mask_intersections).
    iou = np.full((order.size, gts.shape[0]), -1.0)  # (D, G)
    det_pixels = _pixel_counts(preds)[order]  # (D,)
    for label in np.intersect1d(det_labels, truth):
        d, g = np.flatnonzero(det_labels == label), np.flatnonzero(truth == label)
        inter = mask_intersections(preds[torch.as_tensor(order[d], device=preds.device)],
                                   gts[torch.as_tensor(g, device=gts.device)])  # (d, g)
        union = np.where(crowd[g][None], det_pixels[d][:, None],
                         det_pixels[d][:, None] + gt_pixels[g][None] - inter)
        iou[np.ix_(d, g)] = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)

    lo, hi = _AREA_BOUNDS[:, :1], _AREA_BOUNDS[:, 1:]  # (A, 1)
    gt_ignore = crowd[None] | (areas[None] < lo) | (areas[None] > hi)  # (A, G)
    matched, on_ignored = _match(iou, ranks, gt_ignore, crowd)
    det_outside = (det_pixels[None] < lo) | (det_pixels[None] > hi)  # (A, D)
    ignored = on_ignored | (~matched & det_outside[:, None, :])
    num_gt = np.zeros((len(AREA_RANGES), num_labels), dtype=np.int64)
    for a in range(len(AREA_RANGES)):
        num_gt[a] = np.bincount(truth[~gt_ignore[a]], minlength=num_labels)
    return MaskAPStatistics(scores[order], det_labels, ranks, matched, ignored, num_gt, num_images=1)


# ------------------------------------------------------------------------------------- lists of images

def instances_from_post_processing(result: Mapping[str, Any], mask_threshold: float = 0.5) -> dict[str, Tensor]:
    """One image of ``post_process_instance_segmentation`` -> a prediction dict for :func:`mask_ap`.

    Args:
        result: ``{"segmentation", "segments_info": [{"id", "label_id", "score", ...}]}``; ``segmentation``
            is the `(N, H, W)` stack of full masks (``return_binary_maps=True``, best for AP: masks may
            overlap) or the `(H, W)` id map (each instance's visible pixels, -1 = background).
        mask_threshold: a stack's values above it are "on".

    Returns:
        ``{"masks": (N, H, W) bool, "scores": (N,) float64, "labels": (N,) int64}`` (on the map's device).
    """
    if not isinstance(result, Mapping) or "segmentation" not in result or "segments_info" not in result:
        raise TypeError(f"expected a post-processing result {{'segmentation', 'segments_info'}}, got {result!r:.200}")
    segmentation = _as_tensor(result["segmentation"])
    info = list(result["segments_info"])
    if any(not isinstance(s, Mapping) or not {"id", "label_id", "score"} <= set(s) for s in info):
        raise TypeError(f"segments_info: expected dicts with 'id', 'label_id' and 'score', got {info!r:.200}")
    ids = torch.tensor([int(s["id"]) for s in info], dtype=torch.long, device=segmentation.device)
    if segmentation.ndim == 3:
        if ids.numel() and (ids.min() < 0 or ids.max() >= segmentation.shape[0]):
            raise ValueError(f"segments_info ids must index the {segmentation.shape[0]} maps, got {ids.tolist()}")
        masks = segmentation[ids] > mask_threshold
    elif segmentation.ndim == 2:
        masks = segmentation[None] == ids[:, None, None]
    else:
        raise ValueError(f"segmentation: expected (N, H, W) maps or an (H, W) id map, got shape "
                         f"{tuple(segmentation.shape)}")
    return {"masks": masks, "scores": torch.tensor([float(s["score"]) for s in info], dtype=torch.float64),
            "labels": torch.tensor([int(s["label_id"]) for s in info], dtype=torch.long)}


def instances_from_segments(segment_map: Any, segments_info: Iterable[Mapping[str, Any]],
                            thing_ids: Iterable[int] | None = None) -> dict[str, Tensor]:
    """A panoptic ground truth -> a reference dict for :func:`mask_ap` (one instance per thing segment).

    Args:
        segment_map: `(H, W)` int segment-id map. segments_info: ``[{"id", "label_id", "iscrowd"}, ...]``
            (``iscrowd`` defaults to False). thing_ids: label ids kept (default: all segments).

    Returns:
        ``{"masks": (M, H, W) bool, "labels": (M,) int64, "iscrowd": (M,) bool}``; segments with no pixel
        in the map are dropped, areas default to pixel counts.
    """
    ids = _as_map(segment_map, "segment_map")
    things = None if thing_ids is None else {int(i) for i in thing_ids}
    rows = []
    for segment in segments_info:
        if not isinstance(segment, Mapping) or "id" not in segment or "label_id" not in segment:
            raise TypeError(f"segments_info: expected dicts with 'id' and 'label_id' (and optionally 'iscrowd'), "
                            f"got {segment!r}")
        if things is None or int(segment["label_id"]) in things:
            rows.append((int(segment["id"]), int(segment["label_id"]), bool(segment.get("iscrowd", False))))
    masks = ids[None] == torch.tensor([r[0] for r in rows], dtype=torch.long).view(-1, 1, 1)  # (M, H, W)
    present = masks.flatten(1).any(1)
    return {"masks": masks[present], "labels": torch.tensor([r[1] for r in rows], dtype=torch.long)[present],
            "iscrowd": torch.tensor([r[2] for r in rows], dtype=torch.bool)[present]}


def _image_statistics(prediction: Mapping[str, Any], reference: Mapping[str, Any], num_labels: int,
                      index: int) -> MaskAPStatistics:
    if isinstance(prediction, Mapping) and "segments_info" in prediction:
        prediction = instances_from_post_processing(prediction)
    if not isinstance(prediction, Mapping) or not {"masks", "scores", "labels"} <= set(prediction):
        raise TypeError(f"predictions[{index}]: expected a dict with 'masks', 'scores' and 'labels' (or a "
                        f"post-processing result), got {prediction!r:.200}")
    if not isinstance(reference, Mapping) or not {"masks", "labels"} <= set(reference):
        raise TypeError(f"references[{index}]: expected a dict with 'masks' and 'labels' (and optionally "
                        f"'iscrowd', 'area'), got {reference!r:.200}")
    try:
        return mask_ap_image_statistics(prediction["masks"], prediction["scores"], prediction["labels"],
                                        reference["masks"], reference["labels"], num_labels,
                                        gt_iscrowd=reference.get("iscrowd"), gt_areas=reference.get("area"))
    except ValueError as error:
        raise ValueError(f"image {index}: {error}") from None


def mask_ap_statistics(predictions: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]],
                       num_labels: int) -> MaskAPStatistics:
    """:func:`mask_ap_image_statistics` over images, concatenated in order.

    Args:
        predictions: per image ``{"masks": (N, H, W), "scores": (N,), "labels": (N,)}`` or a
            ``post_process_instance_segmentation`` result (see :func:`instances_from_post_processing`).
        references: per image ``{"masks": (M, H, W), "labels": (M,), "iscrowd": (M,) optional,
            "area": (M,) optional}``.
        num_labels: K.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references (one each per image)")
    parts = [_image_statistics(p, r, num_labels, i) for i, (p, r) in enumerate(zip(predictions, references))]
    return MaskAPStatistics.concatenate(parts, num_labels)


def mask_ap_from_statistics(statistics: MaskAPStatistics) -> dict[str, Any]:
    """COCO's 12 summary figures, and AP / AR per category.

    Returns:
        ``map`` (AP at IoU 0.50:0.95), ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large``
        (100 detections per image and category), ``mar_1``, ``mar_10``, ``mar_100`` (AR at 1 / 10 / 100
        detections), ``mar_small``, ``mar_medium``, ``mar_large`` (floats, in COCOeval's ``stats`` order;
        -1 as in COCOeval when no category has GT in that range), ``n`` (categories averaged in ``map``),
        ``per_category_ap`` and ``per_category_ar`` (`(K,)` float64 AP@[0.50:0.95] and AR@100, area
        all; nan for categories without non-ignored GT).
    """
    s = statistics
    num_thresholds, num_labels = len(IOU_THRESHOLDS), s.num_gt.shape[1]
    num_areas, num_max = len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((num_thresholds, len(RECALL_THRESHOLDS), num_labels, num_areas))  # (T, R, K, A) @100
    recall = -np.ones((num_thresholds, num_labels, num_areas, num_max))  # (T, K, A, M)
    positive = s.matched & ~s.ignored  # (A, T, D)
    negative = ~s.matched & ~s.ignored
    for k in range(num_labels):
        in_k = s.labels == k
        for a in range(num_areas):
            num_gt = s.num_gt[a, k]
            if num_gt == 0:
                continue
            for m, max_det in enumerate(MAX_DETECTIONS):
                chosen = np.flatnonzero(in_k & (s.ranks < max_det))
                chosen = chosen[np.argsort(-s.scores[chosen], kind="mergesort")]  # (d,) pooled, best first
                tp = np.cumsum(positive[a][:, chosen], axis=1).astype(np.float64)  # (T, d)
                fp = np.cumsum(negative[a][:, chosen], axis=1).astype(np.float64)
                rc = tp / num_gt
                recall[:, k, a, m] = rc[:, -1] if chosen.size else 0.0
                if max_det != MAX_DETECTIONS[-1]:
                    continue
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # non-increasing from the right
                for t in range(num_thresholds):
                    at = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")  # (R,)
                    reached = at < chosen.size
                    precision[t, reached, k, a] = pr[t, at[reached]]
                    precision[t, ~reached, k, a] = 0.0

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(np.mean(defined)) if defined.size else -1.0

    area = {name: i for i, name in enumerate(AREA_RANGES)}
    t50, t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5))), int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    results: dict[str, Any] = {"map": mean(precision[..., 0]), "map_50": mean(precision[t50, ..., 0]),
                               "map_75": mean(precision[t75, ..., 0])}
    for name in ("small", "medium", "large"):
        results[f"map_{name}"] = mean(precision[..., area[name]])
    for m, max_det in enumerate(MAX_DETECTIONS):
        results[f"mar_{max_det}"] = mean(recall[:, :, 0, m])
    for name in ("small", "medium", "large"):
        results[f"mar_{name}"] = mean(recall[:, :, area[name], -1])
    has_gt = s.num_gt[0] > 0  # (K,)
    results["n"] = int(has_gt.sum())
    results["per_category_ap"] = np.where(has_gt, precision[..., 0].mean(axis=(0, 1)), np.nan)
    results["per_category_ar"] = np.where(has_gt, recall[:, :, 0, -1].mean(axis=0), np.nan)
    return results


def mask_ap(predictions: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]],
            num_labels: int) -> dict[str, Any]:
    """One-shot mask AP over a list of images; see :func:`mask_ap_statistics` (inputs) and
    :func:`mask_ap_from_statistics` (outputs)."""
    return mask_ap_from_statistics(mask_ap_statistics(predictions, references, num_labels))


class MaskAP:
    """Accumulates :class:`MaskAPStatistics`: ``update(predictions, references)`` per batch, ``compute()``.

    State: ``statistics`` (the images added so far, concatenated on demand); ``state()`` gives it as a
    dict of numpy arrays, ``merge(state)`` appends another's. Under data parallelism gather the
    states (their sizes differ, so ``torch.distributed.all_gather_object(states, metric.state())``),
    then merge them in rank order into a fresh ``MaskAP`` (or one after ``reset()``) and compute. The
    images then count in that order, which can only change results where detections of one category
    in different images have exactly equal scores.
    """

    def __init__(self, num_labels: int):
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        self.num_labels = num_labels
        self._parts: list[MaskAPStatistics] = []

    @property
    def statistics(self) -> MaskAPStatistics:
        if len(self._parts) != 1:
            self._parts = [MaskAPStatistics.concatenate(self._parts, self.num_labels)]
        return self._parts[0]

    def update(self, predictions: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]]) -> None:
        """Add a batch: lists of per-image dicts, as :func:`mask_ap_statistics` takes."""
        self._parts.append(mask_ap_statistics(predictions, references, self.num_labels))

    def compute(self) -> dict[str, Any]:
        """The figures of :func:`mask_ap_from_statistics` over every image added so far."""
        return mask_ap_from_statistics(self.statistics)

    def reset(self) -> None:
        self._parts = []

    def state(self) -> dict[str, np.ndarray]:
        """The accumulated statistics as plain numpy arrays (see :meth:`MaskAPStatistics.to_dict`)."""
        return self.statistics.to_dict()

    def merge(self, other: Mapping[str, Any] | MaskAPStatistics | "MaskAP") -> "MaskAP":
        """Append another accumulator's images (its ``state()``, statistics or itself) after ours; returns self."""
        if isinstance(other, MaskAP):
            other = other.statistics
        elif not isinstance(other, MaskAPStatistics):
            other = MaskAPStatistics.from_dict(other)
        if other.num_gt.shape[1] != self.num_labels:
            raise ValueError(f"cannot merge statistics of {other.num_gt.shape[1]} categories into a MaskAP of "
                             f"{self.num_labels}")
        self._parts.append(other)
        return self
