"""Mean intersection-over-union for semantic segmentation, from confusion matrices.

The unit of work is a ``(K, K)`` confusion matrix (rows: ground truth, columns: prediction) built
with one ``torch.bincount`` per image; matrices of many images, batches or processes simply add
up, so an evaluation loop keeps one ``(K, K)`` int64 tensor and calls
:func:`mean_iou_from_confusion` at the end (under data parallelism: sum the matrices, e.g. with
``accelerator.reduce(confusion, "sum")``).

The numbers follow the Hub's ``mean_iou`` metric: per-class IoU ``|P∩G| / |P∪G|`` and accuracy
``|P∩G| / |G|``; a class absent from both prediction and ground truth has IoU nan (accuracy nan
when absent from the ground truth) and is left out of the means; pixel accuracy is the fraction of
non-ignored pixels predicted right. Pixels whose reference equals ``ignore_index`` are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

LabelMaps = Union[Tensor, np.ndarray, Sequence[Any]]  # (B, H, W) or a list of (H_i, W_i) maps


def _as_long_tensor(label_map: Any, name: str) -> Tensor:
    """An integer map (tensor, array, PIL image or nested list) as an int64 tensor."""
    if isinstance(label_map, Tensor):
        tensor = label_map
    else:
        tensor = torch.as_tensor(np.asarray(label_map))
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    return tensor.long()


def _as_map_list(maps: LabelMaps, name: str) -> list[Tensor]:
    """A `(B, H, W)` tensor/array or a sequence of `(H, W)` maps -> list of `(H, W)` int64 tensors."""
    if isinstance(maps, (Tensor, np.ndarray)) and maps.ndim == 3:
        return list(_as_long_tensor(maps, name))
    if isinstance(maps, (Tensor, np.ndarray)) and maps.ndim == 2:
        raise ValueError(f"{name}: expected a batch (B, H, W) or a list of (H, W) maps, got one map of shape "
                         f"{tuple(maps.shape)}; wrap it in a list")
    if isinstance(maps, (Tensor, np.ndarray)):
        raise ValueError(f"{name}: expected a batch (B, H, W), got shape {tuple(maps.shape)}")
    out = [_as_long_tensor(m, name) for m in maps]
    for i, m in enumerate(out):
        if m.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected an (H, W) map, got shape {tuple(m.shape)}")
    return out


def _remap(label_map: Tensor, mapping: Mapping[int, int]) -> Tensor:
    """Replace every value ``old`` by ``mapping[old]`` through a lookup table; `(H, W)` -> `(H, W)`."""
    if label_map.numel() and label_map.min() < 0:
        raise ValueError(f"label_map needs non-negative references, got {label_map.min().item()}")
    size = max([int(label_map.max()) if label_map.numel() else 0, *mapping.keys()]) + 1
    lut = torch.arange(size, device=label_map.device)
    lut[torch.tensor(list(mapping.keys()), dtype=torch.long)] = torch.tensor(list(mapping.values()), dtype=torch.long)
    return lut.to(label_map.device)[label_map]


def reduce_labels_map(label_map: Tensor, ignore_index: int = 255) -> Tensor:
    """ADE20K-style label reduction: 0 ("other") -> ``ignore_index``, k -> k - 1, and a value already
    equal to ``ignore_index`` stays ignored (as in the Hub's ``mean_iou``); `(H, W)` -> `(H, W)`."""
    ignored = (label_map == 0) | (label_map == ignore_index)
    return torch.where(ignored, ignore_index, label_map - 1)


def confusion_matrix(
    predictions: LabelMaps,
    references: LabelMaps,
    num_labels: int,
    ignore_index: int | None = 255,
    reduce_labels: bool = False,
    label_map: Mapping[int, int] | None = None,
) -> Tensor:
    """Confusion matrix of predicted against reference class maps.

    Args:
        predictions: `(B, H, W)` or a list of `(H_i, W_i)` class-index maps, values in ``[0, K)``
            wherever the reference is not ignored.
        references: same shapes; values in ``[0, K)`` or ``ignore_index``.
        num_labels: K.
        ignore_index: reference value to skip (after ``reduce_labels`` / ``label_map``); None: none.
        reduce_labels: apply ADE20K reduction to the references first (0 -> ignore, k -> k - 1).
        label_map: optional ``{old: new}`` remapping of reference values, applied first.

    Returns:
        `(K, K)` int64, ``[g, p]`` = number of pixels of reference class g predicted as p.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if reduce_labels and ignore_index is None:
        raise ValueError("reduce_labels=True needs an ignore_index for the former label 0")
    preds = _as_map_list(predictions, "predictions")
    refs = _as_map_list(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references")
    confusion = torch.zeros(num_labels * num_labels, dtype=torch.long)
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        if pred.shape != ref.shape:
            raise ValueError(f"image {i}: prediction shape {tuple(pred.shape)} != reference shape {tuple(ref.shape)}")
        ref = ref.to(pred.device)
        if label_map:
            ref = _remap(ref, label_map)
        if reduce_labels:
            ref = reduce_labels_map(ref, ignore_index)
        valid = ref != ignore_index if ignore_index is not None else torch.ones_like(ref, dtype=torch.bool)
        ref, pred = ref[valid], pred[valid]  # (N,)
        if ref.numel() and (ref.min() < 0 or ref.max() >= num_labels):
            bad = ref[(ref < 0) | (ref >= num_labels)][0].item()
            raise ValueError(f"image {i}: reference value {bad} is neither a class in [0, {num_labels}) "
                             f"nor ignore_index={ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= num_labels):
            bad = pred[(pred < 0) | (pred >= num_labels)][0].item()
            raise ValueError(f"image {i}: predicted value {bad} is not a class in [0, {num_labels})")
        confusion += torch.bincount(ref * num_labels + pred, minlength=num_labels * num_labels).cpu()
    return confusion.view(num_labels, num_labels)


def mean_iou_from_confusion(confusion: Tensor, nan_to_num: float | None = None) -> dict[str, Any]:
    """Mean IoU, mean class accuracy and pixel accuracy from a `(K, K)` confusion matrix.

    Returns:
        ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (floats) and ``per_category_iou``,
        ``per_category_accuracy`` (`(K,)` float64 numpy arrays; nan for classes absent from both
        prediction and reference, resp. from the reference). With ``nan_to_num``, nans are
        replaced by it everywhere (after the means are taken), as in the Hub's ``mean_iou``.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {tuple(confusion.shape)}")
    confusion = confusion.double().cpu()
    intersection = confusion.diagonal()  # (K,)
    area_reference = confusion.sum(1)
    area_prediction = confusion.sum(0)
    union = area_reference + area_prediction - intersection
    iou = intersection / union  # 0 / 0 = nan for classes absent from both
    accuracy = intersection / area_reference
    total = area_reference.sum()
    metrics: dict[str, Any] = {
        "mean_iou": float(iou.nanmean()),
        "mean_accuracy": float(accuracy.nanmean()),
        "overall_accuracy": float(intersection.sum() / total) if total > 0 else float("nan"),
        "per_category_iou": iou.numpy(),
        "per_category_accuracy": accuracy.numpy(),
    }
    if nan_to_num is not None:
        metrics = {key: np.nan_to_num(value, nan=nan_to_num) if isinstance(value, np.ndarray)
                   else (nan_to_num if value != value else value) for key, value in metrics.items()}
    return metrics


def mean_iou(
    predictions: LabelMaps,
    references: LabelMaps,
    num_labels: int,
    ignore_index: int | None = 255,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """One-shot mean IoU with the arguments and outputs of the Hub's ``mean_iou`` metric.

    See :func:`confusion_matrix` for the inputs and :func:`mean_iou_from_confusion` for the output.
    """
    confusion = confusion_matrix(predictions, references, num_labels, ignore_index, reduce_labels, label_map)
    return mean_iou_from_confusion(confusion, nan_to_num)


class MeanIoU:
    """Accumulates a confusion matrix over many batches: ``update(preds, refs)`` ..., ``compute()``.

    ``confusion`` (`(K, K)` int64) is public: sum it across processes before ``compute``.
    """

    def __init__(self, num_labels: int, ignore_index: int | None = 255, reduce_labels: bool = False):
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)

    def update(self, predictions: LabelMaps, references: LabelMaps) -> None:
        """Add `(B, H, W)` or lists of `(H, W)` maps."""
        self.confusion += confusion_matrix(predictions, references, self.num_labels, self.ignore_index,
                                           self.reduce_labels)

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        return mean_iou_from_confusion(self.confusion, nan_to_num)

    def reset(self) -> None:
        self.confusion.zero_()
