"""MaskFormer inference (SPEC §4): class and mask logits in, semantic / panoptic / instance maps out.

Pure tensor functions: nothing here reads a config or a processor; the processor's
``post_process_*`` methods are thin wrappers over :func:`semantic_inference`,
:func:`panoptic_inference` and :func:`instance_inference`. Padding is cropped and maps are
resized by :mod:`maskformer_hf.resampling` (one bilinear sampling per target pixel, settled per
low-resolution cell where bounds allow; see there for the geometry and why it is exact).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .resampling import (
    Assignment,
    CellMaps,
    Resampling,
    dense_above,
    dense_argmax,
    keep_by_overlap,
    overlap_keep,
    prefers_dense,
    resample_dense,
    resampled_above,
    resampled_argmax,
    resampling,
    valid_region,
)

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # SPEC §4, multiples of the test size


# ---------------------------------------------------------------------------------------------
# The three inference rules
# ---------------------------------------------------------------------------------------------
GROUP_BYTES = 4 << 20  # images post-processed together share one set of tensor ops, up to about this
# much (channels-last float32) map data: large enough to amortise per-op overhead, small enough for the cache
TYPICAL_SEGMENTS = 32  # kept queries per image assumed when grouping panoptic / instance post-processing


def _prepare(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None,
             target_sizes: Sequence[Sequence[int]] | Tensor | None,
             channels: int) -> list[tuple[Tensor, tuple[int, int], Resampling]]:
    """Validate shapes; group the images that share a mask crop `(n, m)` and a target size, so that
    one :class:`Resampling` and one set of batched operations serve them (about `channels` maps per
    image, see ``GROUP_BYTES``): `(indices, crop, plan)`."""
    for name, value in (("class_queries_logits", class_queries_logits), ("masks_queries_logits", masks_queries_logits)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name}: expected floating point logits, got {value.dtype}")
    if class_queries_logits.ndim != 3 or masks_queries_logits.ndim != 4:
        raise ValueError(
            "expected class_queries_logits (batch, queries, classes + 1) and masks_queries_logits "
            f"(batch, queries, height, width), got {tuple(class_queries_logits.shape)} and {tuple(masks_queries_logits.shape)}"
        )
    batch = class_queries_logits.shape[0]
    if masks_queries_logits.shape[:2] != class_queries_logits.shape[:2]:
        raise ValueError(f"batch and query dimensions differ: {tuple(class_queries_logits.shape[:2])} "
                         f"vs {tuple(masks_queries_logits.shape[:2])}")
    if class_queries_logits.shape[1] < 1 or min(masks_queries_logits.shape[-2:]) < 1:
        raise ValueError(f"expected at least one query and a mask of at least 1x1, got masks_queries_logits of "
                         f"shape {tuple(masks_queries_logits.shape)}")
    if class_queries_logits.shape[-1] < 2:
        raise ValueError(f"class_queries_logits: expected K + 1 >= 2 classes (the last is no-object), got "
                         f"{class_queries_logits.shape[-1]}")
    devices = {class_queries_logits.device, masks_queries_logits.device}
    if pixel_mask is not None:
        devices.add(pixel_mask.device)
    if len(devices) > 1:
        raise ValueError(f"class_queries_logits, masks_queries_logits and pixel_mask must be on one device, got "
                         f"{class_queries_logits.device}, {masks_queries_logits.device} and "
                         f"{None if pixel_mask is None else pixel_mask.device}")
    for name, value in (("class_queries_logits", class_queries_logits), ("masks_queries_logits", masks_queries_logits)):
        if value.numel() and bool(torch.amax(value).isnan()):  # max propagates NaN; +-inf logits are legitimate
            raise ValueError(f"{name}: found NaN values (the model's output is not a number)")
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"target_sizes: expected one (height, width) per image ({batch}), got {len(target_sizes)}")
    if pixel_mask is not None and (pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch):
        raise ValueError(f"pixel_mask: expected (batch={batch}, height, width), got {tuple(pixel_mask.shape)}")
    mask_size = tuple(masks_queries_logits.shape[-2:])
    groups: dict[tuple, list[int]] = {}
    for i in range(batch):
        crop, extent = valid_region(mask_size, None if pixel_mask is None else pixel_mask[i])
        if target_sizes is None:
            target, extent = crop, (float(crop[0]), float(crop[1]))
        else:
            target = _target_size(target_sizes[i], i)
            if len(target) != 2 or min(target) < 1:
                raise ValueError(f"target_sizes[{i}]: expected (height, width) >= 1, got {target_sizes[i]}")
        groups.setdefault((crop, target, extent), []).append(i)
    device = masks_queries_logits.device
    plans = []
    for (crop, target, extent), members in groups.items():
        res = resampling(crop, target, extent, device)
        size = max(1, GROUP_BYTES // (4 * crop[0] * crop[1] * max(1, channels)))
        for start in range(0, len(members), size):
            plans.append((torch.tensor(members[start:start + size], device=device), crop, res))
    return plans


def _target_size(size: Any, index: int) -> tuple[int, ...]:
    """One entry of ``target_sizes`` as a tuple of ints; fractional or non-numeric values raise."""
    try:
        values = [float(v) for v in (size.tolist() if isinstance(size, Tensor) else size)]
    except (TypeError, ValueError):
        raise TypeError(f"target_sizes[{index}]: expected integer (height, width), got {size!r}") from None
    if isinstance(size, (str, bytes)) or not all(math.isfinite(v) and v == int(v) for v in values):
        raise TypeError(f"target_sizes[{index}]: expected integer (height, width), got {size!r}")
    return tuple(int(v) for v in values)


def semantic_inference(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                       target_sizes: Sequence[Sequence[int]] | Tensor | None = None) -> list[Tensor]:
    """``argmax_c sum_i p_i(c) m_i`` over the K real classes (SPEC §4).

    Args:
        class_queries_logits: `(B, Q, K + 1)`; the last class is "no object".
        masks_queries_logits: `(B, Q, h, w)` mask logits.
        pixel_mask: `(B, H, W)` padding mask of the input, or None (no padding).
        target_sizes: per image `(height, width)`; None: the valid region at mask resolution.
    Returns:
        per image a `(height, width)` int64 map of class ids.
    """
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    results: list[Tensor] = [None] * class_queries_logits.shape[0]  # type: ignore[list-item]
    num_classes = class_probs.shape[-1]
    for index, (n, m), res in _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes,
                                       num_classes):
        probs = masks_queries_logits[index, :, :n, :m].float().sigmoid()  # (G, Q, n, m)
        scores = (probs.flatten(2).transpose(1, 2) @ class_probs[index]).view(len(index), n, m, -1)  # channels-last
        scores = scores.permute(0, 3, 1, 2)  # (G, K, n, m)
        assignment = None if prefers_dense(len(index), num_classes, res) else resampled_argmax(
            CellMaps(scores), res, give_up=True)
        if assignment is None:  # noisy or small: every pixel, a chunk of classes at a time
            assignment = dense_argmax(scores, res)[0]
        maps = assignment.paint(res)  # (G, T_h, T_w)
        for j, i in enumerate(index.tolist()):
            results[i] = maps[j]
    return results


def semantic_scores(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                    target_sizes: Sequence[Sequence[int]] | Tensor | None = None) -> list[Tensor]:
    """Per image the `(K, height, width)` class scores ``sum_i p_i(c) m_i``, resampled (dense)."""
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1]
    results: list[Tensor] = [None] * class_queries_logits.shape[0]  # type: ignore[list-item]
    for index, (n, m), res in _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes,
                                       class_probs.shape[-1]):
        probs = masks_queries_logits[index, :, :n, :m].float().sigmoid()
        scores = torch.einsum("gqk,gqnm->gknm", class_probs[index], probs)
        for j, i in enumerate(index.tolist()):
            results[i] = resample_dense(scores[j], res)
    return results


def _gather_queries(masks_queries_logits: Tensor, index: Tensor, order: Tensor, count: Tensor,
                    crop: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Mask probabilities of the queries `order` `(G, k)` of images `index` `(G,)`, cropped; the
    columns past each image's `count` are padding, set to -1 (never above a threshold, never a
    winner). Returns `(probs (G, k, n, m), valid (G, k))`."""
    n, m = crop
    valid = torch.arange(order.shape[1], device=order.device) < count[:, None]
    probs = masks_queries_logits[index[:, None], order, :n, :m].float().sigmoid()
    return probs.masked_fill(~valid[:, :, None, None], -1.0), valid


def panoptic_inference(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                       target_sizes: Sequence[Sequence[int]] | Tensor | None = None, threshold: float = 0.5,
                       mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
                       label_ids_to_fuse: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """General inference, panoptic flavour (SPEC §4).

    Queries whose best class is a real class with probability > `threshold` compete for each
    pixel by ``p_i(c_i) * m_i``; a query keeps its pixels if they are at least
    `overlap_mask_area_threshold` of its own mask (``m_i >= mask_threshold``, unweighted); queries of a
    class in `label_ids_to_fuse` ("stuff") share one segment.

    Returns:
        per image ``{"segmentation": (height, width) int32 (0 = void, segments from 1),
        "segments_info": [{"id", "label_id", "was_fused", "score"}]}``, one entry per segment (a
        fused segment reports its best query's score).
    """
    _check_thresholds(threshold, mask_threshold, overlap_mask_area_threshold)
    fuse = {int(c) for c in (label_ids_to_fuse or ())}
    num_labels = class_queries_logits.shape[-1] - 1
    if any(not 0 <= c < num_labels for c in fuse):
        raise ValueError(f"label_ids_to_fuse: expected class ids in [0, {num_labels}), got {sorted(fuse)}")
    scores, labels = class_queries_logits.float().softmax(-1).max(-1)  # (B, Q)
    results: list[dict[str, Any]] = [None] * class_queries_logits.shape[0]  # type: ignore[list-item]
    for index, crop, res in _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes,
                                     TYPICAL_SEGMENTS):
        keep = (labels[index] != num_labels) & (scores[index] > threshold)  # (G, Q)
        count = keep.sum(1)
        for i in index[count == 0].tolist():  # nothing kept: all void
            results[i] = {"segmentation": torch.zeros(res.target_size, dtype=torch.int32, device=scores.device),
                          "segments_info": []}
        index, keep, count = index[count > 0], keep[count > 0], count[count > 0]
        if len(index) == 0:
            continue
        order = torch.argsort((~keep).int(), dim=1, stable=True)[:, : int(count.max())]  # kept queries first
        probs, valid = _gather_queries(masks_queries_logits, index, order, count, crop)
        kept_scores = scores[index].gather(1, order).masked_fill(~valid, 1.0)
        assignment, areas, keep = _compete(probs, res, kept_scores, None, mask_threshold,
                                           overlap_mask_area_threshold, strict=False)
        alive = (valid & (areas > 0) & keep).tolist()
        kept_labels, score_lists = labels[index].gather(1, order).tolist(), kept_scores.tolist()
        luts, infos = [], []
        for j in range(len(index)):
            segments: list[dict[str, Any]] = []
            segment_of_query = [0] * order.shape[1]  # 0 = void
            stuff: dict[int, dict[str, Any]] = {}
            for k, (label, score) in enumerate(zip(kept_labels[j], score_lists[j])):
                if not alive[j][k]:
                    continue
                score = round(score, 6)
                if label in stuff:
                    stuff[label]["score"] = max(stuff[label]["score"], score)
                    segment_of_query[k] = stuff[label]["id"]
                    continue
                segment = {"id": len(segments) + 1, "label_id": label, "was_fused": label in fuse, "score": score}
                segments.append(segment)
                segment_of_query[k] = segment["id"]
                if label in fuse:
                    stuff[label] = segment
            luts.append(segment_of_query)
            infos.append(segments)
        lut = torch.tensor(luts, dtype=torch.int32, device=probs.device)
        segmentation = assignment.paint(res, lut, fill=0)
        for j, i in enumerate(index.tolist()):
            results[i] = {"segmentation": segmentation[j], "segments_info": infos[j]}
    return results


def instance_inference(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                       target_sizes: Sequence[Sequence[int]] | Tensor | None = None, threshold: float = 0.5,
                       mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
                       return_binary_maps: bool = False) -> list[dict[str, Any]]:
    """General inference, instance flavour (SPEC §4).

    The `Q` best (query, class) pairs by class probability become candidates; a candidate's mask is
    ``m_i > mask_threshold`` and its score is class probability x mean mask probability inside its
    mask (at mask resolution); candidates scoring `>= threshold` are kept, best first.

    * The map (default): a pixel belongs to the kept instance maximising ``score_i * m_i`` among
      those whose mask covers it; an instance whose visible area is below
      `overlap_mask_area_threshold` of its own mask is dropped.
    * `return_binary_maps`: every kept candidate whose mask is non-empty at the target size, with
      its full mask; no overlap rule (masks may overlap, as mask AP wants them; transformers'
      convention), so `overlap_mask_area_threshold` plays no part.

    Returns:
        per image ``{"segmentation", "segments_info": [{"id", "label_id", "was_fused", "score"}]}``:
        ``segmentation`` is a `(height, width)` int32 map (-1 = background, instances from 0 in
        decreasing score), or with `return_binary_maps` a `(num_instances, height, width)` float
        stack of each instance's full mask (instances in decreasing score).
    """
    _check_thresholds(threshold, mask_threshold, overlap_mask_area_threshold)
    num_queries, num_labels = class_queries_logits.shape[1], class_queries_logits.shape[-1] - 1
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1].flatten(1)  # (B, Q*K)
    top_scores, top_index = class_probs.topk(min(num_queries, class_probs.shape[1]), dim=1)  # sorted, (B, Q)
    cut = math.log(mask_threshold / (1 - mask_threshold)) if 0 < mask_threshold < 1 else (
        -math.inf if mask_threshold <= 0 else math.inf)
    results: list[dict[str, Any]] = [None] * class_queries_logits.shape[0]  # type: ignore[list-item]
    for index, (n, m), res in _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes,
                                       TYPICAL_SEGMENTS):
        # The final score is at most the class probability: only those above threshold can pass.
        hopeful = (top_scores[index] >= threshold).sum(1)
        width = int(hopeful.max())
        candidates = torch.arange(width, device=hopeful.device) < hopeful[:, None]  # (G, width)
        query, label = top_index[index, :width] // num_labels, top_index[index, :width] % num_labels
        logits = masks_queries_logits[index[:, None], query, :n, :m].float()  # (G, width, n, m)
        binary = torch.gt(logits, cut, out=torch.empty_like(logits))  # float 0/1: sums 3x faster than bool
        probs = logits.sigmoid()
        mask_score = (probs * binary).flatten(2).sum(2) / (binary.flatten(2).sum(2) + 1e-6)
        score = (top_scores[index, :width] * mask_score).masked_fill(~candidates, -1.0)
        kept = (score >= threshold).sum(1)
        order = score.argsort(dim=1, descending=True, stable=True)[:, : int(kept.max()) if width else 0]
        if order.shape[1] == 0:
            for i in index.tolist():
                empty = (torch.zeros((0, *res.target_size)) if return_binary_maps
                         else torch.full(res.target_size, -1, dtype=torch.int32))
                results[i] = {"segmentation": empty.to(logits.device), "segments_info": []}
            continue
        valid = torch.arange(order.shape[1], device=order.device) < kept[:, None]
        probs = probs[torch.arange(len(index), device=order.device)[:, None], order]
        probs = probs.masked_fill(~valid[:, :, None, None], -1.0)  # padding: never on, never a winner
        score, label = score.gather(1, order).masked_fill(~valid, 1.0), label.gather(1, order)
        if return_binary_maps:  # each candidate's own mask, no competition
            binary_maps = (dense_above(probs, res, mask_threshold) if prefers_dense(*probs.shape[:2], res)
                           else resampled_above(CellMaps(probs), res, mask_threshold))  # (G, k, T_h, T_w) bool
            alive = valid & binary_maps.flatten(2).any(2)
        else:
            assignment, _, keep = _compete(probs, res, score, mask_threshold, mask_threshold,
                                           overlap_mask_area_threshold, strict=True)
            alive = valid & keep
            ids = torch.cumsum(alive.int(), 1) - 1
            segmentation = assignment.paint(res, torch.where(alive, ids, torch.full_like(ids, -1)).int(), fill=-1)
        for j, i in enumerate(index.tolist()):
            segments = [{"id": k, "label_id": c, "was_fused": False, "score": round(p, 6)}
                        for k, (c, p) in enumerate(zip(label[j][alive[j]].tolist(), score[j][alive[j]].tolist()))]
            result = binary_maps[j][alive[j]].float() if return_binary_maps else segmentation[j]
            results[i] = {"segmentation": result, "segments_info": segments}
    return results


def _compete(probs: Tensor, res: Resampling, weights: Tensor, on_threshold: float | None, mask_threshold: float,
             overlap: float, strict: bool) -> tuple[Assignment, Tensor, Tensor]:
    """Each pixel to the channel maximising `weights * probs` (only where `probs > on_threshold`
    when given), and which channels keep their segment by the overlap rule: per-cell bounds where
    they settle most pixels, else every pixel (chosen by the bounds' own count of what is left).

    Args:
        probs: `(G, k, n, m)` mask probabilities (padding channels -1); weights: `(G, k)`.
    Returns:
        `(assignment, areas (G, k) pixels won, keep (G, k) bool)`.
    """
    maps = assignment = None
    if not prefers_dense(probs.shape[0], probs.shape[1], res):
        maps = CellMaps(probs)
        assignment = resampled_argmax(maps, res, weights=weights, on_threshold=on_threshold, give_up=True)
    if assignment is None:
        assignment, own = dense_argmax(probs, res, weights=weights, on_threshold=on_threshold,
                                       count_threshold=mask_threshold, strict=strict)
        areas = assignment.areas(res, probs.shape[1])
        return assignment, areas, overlap_keep(areas, own, overlap)
    areas = assignment.areas(res, probs.shape[1])
    return assignment, areas, keep_by_overlap(maps, res, areas, mask_threshold, overlap, strict=strict)


def _check_thresholds(threshold: float, mask_threshold: float, overlap: float) -> None:
    for name, value in (("threshold", threshold), ("mask_threshold", mask_threshold),
                        ("overlap_mask_area_threshold", overlap)):
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")


# ---------------------------------------------------------------------------------------------
# Test-time augmentation (semantic)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def semantic_inference_tta(model: torch.nn.Module, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                           target_sizes: Sequence[Sequence[int]] | Tensor | None = None,
                           scales: Sequence[float] = TTA_SCALES, flip: bool = True, size_divisor: int = 32) -> list[Tensor]:
    """Multi-scale (+ horizontal flip) semantic inference: class scores averaged over all passes (SPEC §4).

    Args:
        model: returns ``class_queries_logits`` and ``masks_queries_logits`` for
            ``model(pixel_values=..., pixel_mask=...)``.
        pixel_values: `(B, 3, H, W)` processed images (the test size), padded bottom/right.
        pixel_mask: `(B, H, W)`, or None (no padding).
        target_sizes: per image `(height, width)`; None: each image's valid size.
        scales: multiples of each image's valid size; flip: also run mirrored images.
        size_divisor: each pass pads its batch to a multiple of this.
    Returns:
        per image a `(height, width)` int64 map of class ids.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values: expected (batch, 3, height, width), got {tuple(pixel_values.shape)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales: expected positive multiples of the test size, got {scales!r}")
    batch = pixel_values.shape[0]
    images, sizes = [], []
    for i in range(batch):
        h, w = pixel_values.shape[-2:]
        if pixel_mask is not None:
            h, w = int(pixel_mask[i].any(1).sum()), int(pixel_mask[i].any(0).sum())
        images.append(pixel_values[i, :, :h, :w])
        sizes.append((h, w))
    targets = [tuple(int(v) for v in t) for t in target_sizes] if target_sizes is not None else sizes
    totals: list[Tensor | None] = [None] * batch
    for scale in scales:
        scaled = [F.interpolate(x[None], size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                                align_corners=False, antialias=scale < 1)[0] for x, (h, w) in zip(images, sizes)]
        for mirrored in (False, True) if flip else (False,):
            inputs = [x.flip(-1) for x in scaled] if mirrored else scaled
            batch_values, batch_mask = pad_images(inputs, size_divisor)
            out = model(pixel_values=batch_values, pixel_mask=batch_mask)
            scores = semantic_scores(out.class_queries_logits, out.masks_queries_logits, batch_mask, targets)
            for i, s in enumerate(scores):
                s = s.flip(-1) if mirrored else s
                totals[i] = s if totals[i] is None else totals[i] + s
    return [total.argmax(0) for total in totals]


def pad_images(images: Sequence[Tensor], size_divisor: int = 0) -> tuple[Tensor, Tensor]:
    """Stack `(C, h_i, w_i)` images, zero-padded bottom/right to the largest (rounded up to
    `size_divisor`): `(B, C, H, W)` and the `(B, H, W)` int64 pixel mask."""
    height = max(x.shape[-2] for x in images)
    width = max(x.shape[-1] for x in images)
    if size_divisor:
        height, width = -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor
    out = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    mask = torch.zeros((len(images), height, width), dtype=torch.int64, device=images[0].device)
    for i, x in enumerate(images):
        out[i, :, : x.shape[-2], : x.shape[-1]] = x
        mask[i, : x.shape[-2], : x.shape[-1]] = 1
    return out, mask
