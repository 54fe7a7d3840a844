"""Panoptic quality (Kirillov et al., 2019) with the COCO panopticapi conventions.

Per class c: ``PQ_c = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|)``, ``SQ_c = Σ_TP IoU / |TP|``,
``RQ_c = |TP| / (|TP| + ½|FP| + ½|FN|)``; PQ/SQ/RQ are the means over the classes that occur
(``TP + FP + FN > 0``), for all classes, things and stuff.

Per image, a predicted and a ground-truth segment match when they have the same class and
IoU > 0.5 (matches are then unique). As in panopticapi:

- *void* pixels — ground-truth pixels whose id is not listed in the ground-truth segments (COCO
  uses id 0) — are removed from the union: ``IoU = |P∩G| / (|P| + |G| - |P∩G| - |P∩void|)``;
- crowd ground-truth segments (``iscrowd``) are never matched and never false negatives; an
  unmatched prediction whose overlap with void plus with the crowd regions of its own class is
  more than half of its area is not a false positive;
- predicted pixels whose id is not listed in the predicted segments are unassigned (void).

Segments listed but with no pixel in the map are skipped (they cannot be matched or missed).

The work of one image is one ``torch.bincount`` over the pixel pairs (an intersection table of
ground-truth × predicted segments), then tensor ops over that table; the result is a
:class:`PanopticQualityStatistics` of per-class TP/FP/FN counts and IoU sums, which add up over
images, batches and processes. :func:`panoptic_quality_from_statistics` turns the sums into numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

# A segments description: [{"id": int, "label_id": int, "iscrowd": bool (optional)}, ...] or {id: label_id}.
Segments = Union[Sequence[Mapping[str, Any]], Mapping[int, int]]


@dataclass
class PanopticQualityStatistics:
    """Per-class sums; every field is `(K,)`. Instances add with ``+`` (and ``sum(...)``)."""

    iou_sum: Tensor  # float64, sum of the IoUs of the true positives
    true_positives: Tensor  # int64
    false_positives: Tensor  # int64
    false_negatives: Tensor  # int64

    @classmethod
    def zeros(cls, num_labels: int) -> "PanopticQualityStatistics":
        return cls(torch.zeros(num_labels, dtype=torch.float64), *(torch.zeros(num_labels, dtype=torch.long)
                                                                    for _ in range(3)))

    def __add__(self, other: "PanopticQualityStatistics") -> "PanopticQualityStatistics":
        if not isinstance(other, PanopticQualityStatistics):
            return NotImplemented
        return PanopticQualityStatistics(self.iou_sum + other.iou_sum, self.true_positives + other.true_positives,
                                         self.false_positives + other.false_positives,
                                         self.false_negatives + other.false_negatives)

    def __radd__(self, other: Any) -> "PanopticQualityStatistics":
        if other == 0:  # lets the builtin sum() start from 0
            return self
        return self.__add__(other)

    def to_tensor(self) -> Tensor:
        """`(4, K)` float64 (iou_sum, TP, FP, FN): one tensor to all-reduce across processes."""
        return torch.stack([self.iou_sum, self.true_positives.double(), self.false_positives.double(),
                            self.false_negatives.double()])

    @classmethod
    def from_tensor(cls, tensor: Tensor) -> "PanopticQualityStatistics":
        """Inverse of :meth:`to_tensor`."""
        if tensor.ndim != 2 or tensor.shape[0] != 4:
            raise ValueError(f"expected a (4, K) tensor, got shape {tuple(tensor.shape)}")
        tensor = tensor.double().cpu()
        return cls(tensor[0], *(tensor[i].round().long() for i in (1, 2, 3)))


def _parse_segments(segments: Segments, num_labels: int, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Segments -> ids `(S,)`, labels `(S,)`, iscrowd `(S,)` bool, sorted by id."""
    if isinstance(segments, Mapping):
        rows = [(int(i), int(label), False) for i, label in segments.items()]
    else:
        rows = []
        for segment in segments:
            if not isinstance(segment, Mapping) or "id" not in segment or "label_id" not in segment:
                raise TypeError(f"{name}: expected dicts with 'id' and 'label_id' (and optionally 'iscrowd'), "
                                f"got {segment!r}")
            rows.append((int(segment["id"]), int(segment["label_id"]), bool(segment.get("iscrowd", False))))
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
    crowd = torch.tensor([r[2] for r in rows], dtype=torch.bool)
    if ids.unique().numel() != ids.numel():
        raise ValueError(f"{name}: segment ids must be unique, got {ids.tolist()}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"{name}: label_id must lie in [0, {num_labels}), got {labels.tolist()}")
    order = ids.argsort()
    return ids[order], labels[order], crowd[order]


def _segment_index(segment_map: Tensor, ids: Tensor) -> Tensor:
    """Index of each pixel's segment in ``ids`` (sorted), ``len(ids)`` for unlisted ids; `(N,)` -> `(N,)`."""
    if ids.numel() == 0:
        return torch.zeros_like(segment_map)
    position = torch.searchsorted(ids, segment_map).clamp_(max=ids.numel() - 1)
    return torch.where(ids[position] == segment_map, position, torch.full_like(position, ids.numel()))


def _as_map(segment_map: Any, name: str) -> Tensor:
    tensor = segment_map if isinstance(segment_map, Tensor) else torch.as_tensor(np.asarray(segment_map))
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) integer segment-id map, got dtype {tensor.dtype} and "
                         f"shape {tuple(tensor.shape)}")
    return tensor.long().cpu()


def panoptic_statistics(
    prediction: Any,
    prediction_segments: Segments,
    reference: Any,
    reference_segments: Segments,
    num_labels: int,
) -> PanopticQualityStatistics:
    """TP / FP / FN counts and IoU sums per class for ONE image.

    Args:
        prediction: `(H, W)` int predicted segment-id map (e.g. ``post_process_panoptic_segmentation``'s
            ``segmentation``).
        prediction_segments: its segments, ``[{"id", "label_id"}, ...]`` or ``{id: label_id}``.
        reference: `(H, W)` int ground-truth segment-id map (e.g. COCO's decoded RGB PNG).
        reference_segments: ``[{"id", "label_id", "iscrowd"}, ...]`` (``iscrowd`` defaults to False).
        num_labels: K; every ``label_id`` lies in ``[0, K)``.

    Returns:
        :class:`PanopticQualityStatistics` with `(K,)` fields.
    """
    pred = _as_map(prediction, "prediction")
    ref = _as_map(reference, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != reference shape {tuple(ref.shape)}")
    pred_ids, pred_labels, _ = _parse_segments(prediction_segments, num_labels, "prediction_segments")
    ref_ids, ref_labels, ref_crowd = _parse_segments(reference_segments, num_labels, "reference_segments")
    num_ref, num_pred = ref_ids.numel(), pred_ids.numel()

    # Intersection table: rows = reference segments + void, columns = predicted segments + unassigned.
    ref_index = _segment_index(ref.flatten(), ref_ids)  # (H*W,) in [0, num_ref]
    pred_index = _segment_index(pred.flatten(), pred_ids)  # (H*W,) in [0, num_pred]
    table = torch.bincount(ref_index * (num_pred + 1) + pred_index, minlength=(num_ref + 1) * (num_pred + 1))
    table = table.view(num_ref + 1, num_pred + 1)
    intersection = table[:num_ref, :num_pred].double()  # (R, P)
    ref_area = table[:num_ref].sum(1).double()  # (R,) including pixels on unassigned predictions
    pred_area = table[:, :num_pred].sum(0).double()  # (P,) including pixels on void
    pred_on_void = table[num_ref, :num_pred].double()  # (P,)

    ref_present, pred_present = ref_area > 0, pred_area > 0
    same_class = ref_labels[:, None] == pred_labels[None, :]  # (R, P)
    union = ref_area[:, None] + pred_area[None, :] - intersection - pred_on_void[None, :]
    iou = intersection / union.clamp(min=1)
    matches = same_class & ~ref_crowd[:, None] & (iou > 0.5)  # (R, P), at most one True per row and column

    stats = PanopticQualityStatistics.zeros(num_labels)
    ref_matched, pred_matched = matches.any(1), matches.any(0)
    matched_ref = matches.nonzero()[:, 0]
    stats.true_positives += torch.bincount(ref_labels[matched_ref], minlength=num_labels)
    stats.iou_sum += torch.bincount(ref_labels[matched_ref], weights=iou[matches], minlength=num_labels)
    missed = ref_present & ~ref_crowd & ~ref_matched
    stats.false_negatives += torch.bincount(ref_labels[missed], minlength=num_labels)
    on_crowd = (intersection * (same_class & ref_crowd[:, None])).sum(0)  # (P,) overlap with own-class crowd
    excused = (pred_on_void + on_crowd) > 0.5 * pred_area
    false = pred_present & ~pred_matched & ~excused
    stats.false_positives += torch.bincount(pred_labels[false], minlength=num_labels)
    return stats


def panoptic_quality_statistics(
    predictions: Iterable[Any],
    prediction_segments: Iterable[Segments],
    references: Iterable[Any],
    reference_segments: Iterable[Segments],
    num_labels: int,
) -> PanopticQualityStatistics:
    """:func:`panoptic_statistics` summed over images (lists, or `(B, H, W)` tensors for the maps)."""
    columns = [list(predictions), list(prediction_segments), list(references), list(reference_segments)]
    if len({len(c) for c in columns}) != 1:
        raise ValueError("predictions, prediction_segments, references and reference_segments must have the "
                         f"same length, got {[len(c) for c in columns]}")
    total = PanopticQualityStatistics.zeros(num_labels)
    for pred, pred_segments, ref, ref_segments in zip(*columns):
        total = total + panoptic_statistics(pred, pred_segments, ref, ref_segments, num_labels)
    return total


def panoptic_quality_from_statistics(
    statistics: PanopticQualityStatistics, thing_ids: Iterable[int] = ()
) -> dict[str, Any]:
    """PQ, SQ, RQ for all classes, things and stuff, and per class.

    Returns:
        ``pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff`` (floats; nan
        when no class of that group occurs), ``n, n_things, n_stuff`` (number of classes averaged),
        ``per_category_pq, per_category_sq, per_category_rq`` (`(K,)` float64 numpy arrays, nan for
        classes that do not occur; SQ is 0 for a class with FPs/FNs but no TP, as in panopticapi).
    """
    tp = statistics.true_positives.double()
    fp = statistics.false_positives.double()
    fn = statistics.false_negatives.double()
    num_labels = tp.numel()
    thing = torch.zeros(num_labels, dtype=torch.bool)
    thing_ids = [int(i) for i in thing_ids]
    if any(i < 0 or i >= num_labels for i in thing_ids):
        raise ValueError(f"thing_ids must lie in [0, {num_labels}), got {thing_ids}")
    thing[thing_ids] = True
    occurs = (tp + fp + fn) > 0
    denominator = tp + 0.5 * fp + 0.5 * fn
    nan = torch.full_like(tp, float("nan"))
    pq = torch.where(occurs, statistics.iou_sum / denominator.clamp(min=1e-12), nan)
    sq = torch.where(occurs, statistics.iou_sum / tp.clamp(min=1), nan)
    rq = torch.where(occurs, tp / denominator.clamp(min=1e-12), nan)
    results: dict[str, Any] = {}
    for suffix, group in (("", torch.ones_like(thing)), ("_things", thing), ("_stuff", ~thing)):
        selected = group & occurs
        count = int(selected.sum())
        results[f"n{suffix}"] = count
        for name, values in (("pq", pq), ("sq", sq), ("rq", rq)):
            results[f"{name}{suffix}"] = float(values[selected].mean()) if count else float("nan")
    results.update(per_category_pq=pq.numpy(), per_category_sq=sq.numpy(), per_category_rq=rq.numpy())
    return results


def panoptic_quality(
    predictions: Iterable[Any],
    prediction_segments: Iterable[Segments],
    references: Iterable[Any],
    reference_segments: Iterable[Segments],
    num_labels: int,
    thing_ids: Iterable[int] = (),
) -> dict[str, Any]:
    """One-shot PQ over a list of images; see :func:`panoptic_statistics` and
    :func:`panoptic_quality_from_statistics`."""
    statistics = panoptic_quality_statistics(predictions, prediction_segments, references, reference_segments,
                                             num_labels)
    return panoptic_quality_from_statistics(statistics, thing_ids)


class PanopticQuality:
    """Accumulates :class:`PanopticQualityStatistics`: ``update(...)`` per batch, ``compute()`` at the end.

    ``statistics`` is public; under data parallelism all-reduce ``statistics.to_tensor()`` (sum)
    and rebuild with ``PanopticQualityStatistics.from_tensor``.
    """

    def __init__(self, num_labels: int, thing_ids: Iterable[int] = ()):
        self.num_labels = num_labels
        self.thing_ids = list(thing_ids)
        self.statistics = PanopticQualityStatistics.zeros(num_labels)

    def update(self, predictions: Iterable[Any], prediction_segments: Iterable[Segments],
               references: Iterable[Any], reference_segments: Iterable[Segments]) -> None:
        self.statistics = self.statistics + panoptic_quality_statistics(
            predictions, prediction_segments, references, reference_segments, self.num_labels)

    def compute(self) -> dict[str, Any]:
        return panoptic_quality_from_statistics(self.statistics, self.thing_ids)

    def reset(self) -> None:
        self.statistics = PanopticQualityStatistics.zeros(self.num_labels)
