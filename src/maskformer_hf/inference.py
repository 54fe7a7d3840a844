"""MaskFormer inference (SPEC §4): class and mask logits in, semantic / panoptic / instance maps out.

Pure tensor functions: nothing here reads a config or a processor; the processor's
``post_process_*`` methods are thin wrappers over :func:`semantic_inference`,
:func:`panoptic_inference` and :func:`instance_inference`.

Geometry. Mask logits live at stride 4 of the padded input: `(h, w)` for an input of `(H, W)`. An
image whose valid region is `(h_v, w_v)` (its ``pixel_mask``) covers `h_v * h / H` rows of the
mask map, a fractional extent. The detectron2 recipe upsamples to `(H, W)`, crops `(h_v, w_v)`,
then resizes to the target size: two bilinear passes over every query at full resolution, and a
double blur. Here every target pixel samples the low-resolution map once, bilinearly (half-pixel
centres), at the position the crop-and-resize maps it to; rows and columns outside the valid
extent are never read (edge rows are replicated instead of blending in padding). Without a
``pixel_mask`` this is exactly ``F.interpolate(..., size=target, mode="bilinear")``.

Speed. The result of every rule is an argmax or a threshold of bilinearly resampled maps, and a
bilinear value lies between the four source values around it. So per low-resolution cell (the
target pixels that share four source neighbours) bounds decide most pixels without evaluating
them: a cell is settled when one candidate's lower bound beats every other upper bound (or a
mask is surely above / below its threshold). Only the remaining pixels - region boundaries - are
evaluated exactly, and only for their candidate channels. Results equal evaluating every pixel,
up to float rounding on exact ties.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # SPEC §4, multiples of the test size


# ---------------------------------------------------------------------------------------------
# Geometry: where each target pixel samples the low-resolution map
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resampling:
    """Bilinear sampling of an `(n, m)` map at `(T_h, T_w)` target pixels.

    ``y0``/``y1`` `(T_h,)`: the two source rows of each target row, ``wy`` `(T_h,)` the weight of
    ``y1``; ``x0``/``x1``/``wx`` `(T_w,)` likewise for columns. ``row_start``/``row_count`` `(n,)`:
    the target rows whose ``y0`` is a given source row (contiguous); ``col_start``/``col_count``
    `(m,)` likewise.
    """

    y0: Tensor
    y1: Tensor
    wy: Tensor
    x0: Tensor
    x1: Tensor
    wx: Tensor
    row_start: Tensor
    row_count: Tensor
    col_start: Tensor
    col_count: Tensor

    @property
    def target_size(self) -> tuple[int, int]:
        return self.y0.numel(), self.x0.numel()


def _axis(n: int, extent: float, size: int, device: torch.device) -> tuple[Tensor, ...]:
    if size == n and extent == n:  # identity: sample the source pixels themselves
        i0 = torch.arange(n, device=device)
        weight = torch.zeros(n, device=device)
    else:  # half-pixel centres, as F.interpolate(align_corners=False), in float32 like its kernel
        scale = torch.tensor(extent, dtype=torch.float32, device=device) / size
        src = ((torch.arange(size, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n - 1)
        weight = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    count = torch.bincount(i0, minlength=n)
    start = torch.cumsum(count, 0) - count
    return i0, i1, weight, start, count


def resampling(source_size: tuple[int, int], target_size: tuple[int, int], extent: tuple[float, float] | None = None,
               device: torch.device | str = "cpu") -> Resampling:
    """Sampling of an `(n, m)` map whose first `extent` rows/columns (default all) are resized to `target_size`."""
    n, m = source_size
    eh, ew = extent if extent is not None else (float(n), float(m))
    y0, y1, wy, rs, rc = _axis(n, eh, int(target_size[0]), torch.device(device))
    x0, x1, wx, cs, cc = _axis(m, ew, int(target_size[1]), torch.device(device))
    return Resampling(y0, y1, wy, x0, x1, wx, rs, rc, cs, cc)


def valid_region(mask_size: tuple[int, int], pixel_mask: Tensor | None) -> tuple[tuple[int, int], tuple[float, float]]:
    """Rows/columns of the mask map that hold the valid image, and its exact (fractional) extent.

    Args:
        mask_size: `(h, w)` of the mask logits.
        pixel_mask: `(H, W)` of one image (1 = real pixel, top-left anchored), or None (all valid).
    Returns:
        `(n, m)` integer crop and `(h_v * h / H, w_v * w / W)` extent.
    """
    h, w = mask_size
    if pixel_mask is None:
        return (h, w), (float(h), float(w))
    height, width = pixel_mask.shape
    rows = int(pixel_mask.any(dim=1).sum())
    cols = int(pixel_mask.any(dim=0).sum())
    if rows == 0 or cols == 0:
        raise ValueError("pixel_mask: an image has no valid pixel (all zeros)")
    extent = (rows * h / height, cols * w / width)
    crop = (min(h, math.ceil(extent[0] - 1e-6)), min(w, math.ceil(extent[1] - 1e-6)))
    return crop, extent


# ---------------------------------------------------------------------------------------------
# Per-cell bounds, exact sampling at chosen pixels, dense resampling
# ---------------------------------------------------------------------------------------------
class CellMaps:
    """`(C, n, m)` maps, held channels-last `(n, m, C)`, with the max and min of the four source
    values around each cell (``high``, ``low``, `(n, m, C)`): every bilinear value sampled in a
    cell lies between them."""

    def __init__(self, values: Tensor) -> None:
        v = values.permute(1, 2, 0).contiguous()  # (n, m, C); free when `values` is a channels-last view
        self.values = v
        self.high, self.low = self._bound(v, torch.maximum), self._bound(v, torch.minimum)

    @staticmethod
    def _bound(v: Tensor, pick: Any) -> Tensor:
        rows = torch.empty_like(v)  # pairs of rows, then pairs of columns; the last row/column stays itself
        pick(v[:-1], v[1:], out=rows[:-1])
        rows[-1] = v[-1]
        out = torch.empty_like(v)
        pick(rows[:, :-1], rows[:, 1:], out=out[:, :-1])
        out[:, -1] = rows[:, -1]
        return out

    @property
    def num_channels(self) -> int:
        return self.values.shape[-1]


def resample_dense(values: Tensor, res: Resampling) -> Tensor:
    """Every target pixel of `values` `(C, n, m)` -> `(C, T_h, T_w)` (separable bilinear)."""
    wy, wx = res.wy[None, :, None], res.wx[None, None, :]
    rows = values[:, res.y0] * (1 - wy) + values[:, res.y1] * wy  # (C, T_h, m)
    return rows[:, :, res.x0] * (1 - wx) + rows[:, :, res.x1] * wx


@dataclass
class CellGrid:
    """The target pixels of `A` cells as a padded `(A, R, W)` grid: ``rows`` `(A, R)` / ``cols``
    `(A, W)` target indices, ``valid`` `(A, R, W)`, and the bilinear weights ``wy`` `(A, R)`, ``wx`` `(A, W)`."""

    cells: Tensor
    rows: Tensor
    cols: Tensor
    valid: Tensor
    wy: Tensor
    wx: Tensor

    @classmethod
    def of(cls, res: Resampling, cells: Tensor) -> "CellGrid":
        a, b = cells[:, 0], cells[:, 1]
        rc, cc = res.row_count[a], res.col_count[b]
        dr = torch.arange(int(rc.max()) if len(a) else 0, device=a.device)
        dc = torch.arange(int(cc.max()) if len(a) else 0, device=a.device)
        row_ok, col_ok = dr < rc[:, None], dc < cc[:, None]
        rows = (res.row_start[a, None] + dr).clamp(max=len(res.y0) - 1)
        cols = (res.col_start[b, None] + dc).clamp(max=len(res.x0) - 1)
        return cls(cells, rows, cols, row_ok[:, :, None] & col_ok[:, None, :], res.wy[rows], res.wx[cols])

    def sample(self, values: Tensor, channels: Tensor) -> Tensor:
        """Bilinear values of channels-last `values` `(n, m, C)` at the grid, for each cell's
        `channels` `(A, k)` -> `(A, R, W, k)`. Same arithmetic as :func:`resample_dense` (rows
        first, then columns), hence identical values."""
        n, m = values.shape[:2]
        a, b = self.cells[:, 0], self.cells[:, 1]
        a1, b1 = (a + 1).clamp(max=n - 1), (b + 1).clamp(max=m - 1)
        c00, c10, c01, c11 = (values[y, x].gather(1, channels)[:, None, :] for y, x in ((a, b), (a1, b), (a, b1), (a1, b1)))
        wy = self.wy[:, :, None]  # (A, R, 1)
        left = (c00 * (1 - wy) + c10 * wy)[:, :, None]  # (A, R, 1, k)
        right = (c01 * (1 - wy) + c11 * wy)[:, :, None]
        wx = self.wx[:, None, :, None]  # (A, 1, W, 1)
        return left * (1 - wx) + right * wx

    def pixels(self) -> tuple[Tensor, Tensor, Tensor]:
        """`(cell, rows, cols)` of the valid grid entries, each `(P,)`, in grid order."""
        cell, r, c = self.valid.nonzero().unbind(1)
        return cell, self.rows[cell, r], self.cols[cell, c]


def _pixels_per_cell(res: Resampling) -> Tensor:
    return res.row_count[:, None] * res.col_count[None, :]  # (n, m)


# ---------------------------------------------------------------------------------------------
# Argmax and threshold counts of resampled maps, settled per cell where the bounds allow
# ---------------------------------------------------------------------------------------------
@dataclass
class Assignment:
    """Per-pixel argmax over channels: settled cells `(n, m)` plus exactly evaluated pixels.

    ``cell_label``: winning channel of each cell (-1 = no channel, meaningful where ``settled``);
    ``rows``/``cols``/``label`` `(P,)`: the pixels of unsettled cells and their winners.
    """

    cell_label: Tensor
    settled: Tensor
    rows: Tensor
    cols: Tensor
    label: Tensor

    def areas(self, res: Resampling, num_channels: int) -> Tensor:
        """Pixels won by each channel: `(num_channels,)` int64."""
        npix = _pixels_per_cell(res)
        keep = self.settled & (self.cell_label >= 0)
        areas = torch.zeros(num_channels, dtype=torch.int64, device=npix.device)
        areas.index_add_(0, self.cell_label[keep], npix[keep])
        won = self.label >= 0
        return areas + torch.bincount(self.label[won], minlength=num_channels)

    def paint(self, res: Resampling, lut: Tensor | None = None, fill: int = -1) -> Tensor:
        """The `(T_h, T_w)` map of winners, through `lut` `(C,)` when given (-1 -> `fill`)."""
        cell, label = self.cell_label, self.label
        if lut is not None:
            lut = torch.cat([lut, lut.new_full((1,), fill)])  # index -1 -> fill
            cell, label = lut[cell], lut[label]
        out = cell.index_select(0, res.y0).index_select(1, res.x0)
        out[self.rows, self.cols] = label.to(out.dtype)
        return out


def resampled_argmax(maps: CellMaps, res: Resampling, weights: Tensor | None = None,
                     on_threshold: float | None = None) -> Assignment:
    """Per target pixel, the channel maximising `weights[c] * v_c`, `v_c` resampled from `maps`.

    Args:
        maps: `C` maps (probabilities or scores, finite).
        weights: `(C,)` non-negative factors (default 1).
        on_threshold: if given, channel `c` only competes where `v_c > on_threshold`; pixels where
            no channel does get -1.
    Ties go to the lowest channel index, as ``torch.argmax``.
    """
    high, low = maps.high, maps.low  # (n, m, C)
    if weights is not None:
        high, low = high * weights, low * weights
    margin = 1e-6 * max(1.0, float(high.max()), -float(low.min()))
    if on_threshold is None:
        best_lower, best = low.max(-1)  # (n, m)
        candidate = high >= (best_lower - margin)[..., None]
        ncand = candidate.sum(-1)
        settled = ncand == 1
        cell_label = best
    else:
        sure_off = maps.high <= on_threshold - 1e-6
        lower = torch.where(maps.low > on_threshold + 1e-6, low, torch.full_like(low, -1.0))
        best_lower, best = lower.max(-1)
        candidate = ~sure_off & (high >= (best_lower - margin)[..., None])
        ncand = candidate.sum(-1)
        settled = (ncand == 0) | ((ncand == 1) & (best_lower >= 0))  # nobody, or one that is surely on
        cell_label = torch.where(ncand == 0, torch.full_like(best, -1), best)
    settled |= _pixels_per_cell(res) == 0
    # Unsettled cells, evaluated pixel by pixel for their candidates only: most have two, so those
    # are done apart from the few with more (k = the group's largest count, padded with -inf).
    parts = []
    for group in (~settled & (ncand <= 2), ~settled & (ncand > 2)):
        cells = group.nonzero()
        if len(cells):
            parts.append(_evaluate_cells(maps, res, cells, candidate, high, ncand, weights, on_threshold))
    if not parts:
        empty = cell_label.new_zeros(0)
        return Assignment(cell_label, settled, empty, empty, empty)
    rows, cols, label = (torch.cat(t) for t in zip(*parts))
    return Assignment(cell_label, settled, rows, cols, label)


def _evaluate_cells(maps: CellMaps, res: Resampling, cells: Tensor, candidate: Tensor, high: Tensor, ncand: Tensor,
                    weights: Tensor | None, on_threshold: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """Exact winners at the pixels of `cells` `(A, 2)`: `(rows, cols, label)`, each `(P,)`."""
    grid = CellGrid.of(res, cells)
    k = int(ncand[cells[:, 0], cells[:, 1]].max())
    cell_candidate = candidate[cells[:, 0], cells[:, 1]]  # (A, C)
    bound = high[cells[:, 0], cells[:, 1]].masked_fill(~cell_candidate, -math.inf)
    channels = bound.topk(k, dim=1).indices.sort(dim=1).values  # (A, k): ascending = argmax's tie order
    ok = cell_candidate.gather(1, channels)[:, None, None, :]
    v = grid.sample(maps.values, channels)  # (A, R, W, k)
    score = v if weights is None else v * weights[channels][:, None, None, :]
    if on_threshold is not None:
        score = torch.where(v > on_threshold, score, torch.full_like(score, -1.0))
    best_score, pick = score.masked_fill(~ok, -math.inf).max(-1)  # (A, R, W)
    label = channels.gather(1, pick.flatten(1)).view(pick.shape)
    if on_threshold is not None:
        label = torch.where(best_score < 0, torch.full_like(label, -1), label)
    cell, rows, cols = grid.pixels()
    return rows, cols, label[grid.valid]


def resampled_count(maps: CellMaps, res: Resampling, threshold: float, strict: bool = False,
                    channels: Tensor | None = None) -> Tensor:
    """Target pixels where each resampled map is `>= threshold` (`>` if `strict`): `(C,)` int64.
    With `channels` `(C,)` bool, only those are counted exactly (the others get their lower bound)."""
    lower, straddle = _count_bounds(maps, res, threshold)
    if channels is not None:
        straddle = straddle & channels
    pairs = straddle.nonzero()  # (S, 3): row, col, channel
    if len(pairs):
        grid = CellGrid.of(res, pairs[:, :2])
        v = grid.sample(maps.values, pairs[:, 2:])[..., 0]  # (S, R, W)
        hits = ((v > threshold) if strict else (v >= threshold)) & grid.valid
        lower = lower.index_add(0, pairs[:, 2], hits.sum((1, 2)))
    return lower


def _count_bounds(maps: CellMaps, res: Resampling, threshold: float) -> tuple[Tensor, Tensor]:
    """Pixels surely above `threshold` per channel `(C,)`, and the cells that straddle it `(n, m, C)`."""
    npix = _pixels_per_cell(res)
    above = maps.low > threshold + 1e-6
    straddle = ~above & (maps.high >= threshold - 1e-6) & (npix > 0)[..., None]
    flat_npix = npix.view(1, -1).double()
    lower = (flat_npix @ above.view(-1, maps.num_channels).double()).round().long()[0]
    return lower, straddle


def keep_by_overlap(maps: CellMaps, res: Resampling, areas: Tensor, threshold: float, overlap: float,
                    strict: bool = False) -> Tensor:
    """Channels whose own mask (resampled map `>= threshold`, `>` if `strict`) is non-empty and
    whose won `areas` `(C,)` are at least `overlap` of it: `(C,)` bool. Own masks are counted exactly
    only for channels that the per-cell bounds on their size leave undecided."""
    lower, straddle = _count_bounds(maps, res, threshold)
    npix = _pixels_per_cell(res).view(1, -1).double()
    upper = lower + (npix @ straddle.view(-1, maps.num_channels).double()).round().long()[0]
    surely = (lower > 0) & (areas / upper.clamp(min=1) >= overlap)  # own <= upper
    surely_not = (upper == 0) | ((lower > 0) & (areas / lower.clamp(min=1) < overlap))  # own >= lower
    undecided = ~surely & ~surely_not
    if not bool(undecided.any()):
        return surely
    own = resampled_count(maps, res, threshold, strict, channels=undecided)
    return surely | (undecided & (own > 0) & (areas / own.clamp(min=1) >= overlap))


def resampled_above(maps: CellMaps, res: Resampling, threshold: float) -> Tensor:
    """Binary maps `v > threshold` of every channel at every target pixel: `(C, T_h, T_w)` bool."""
    state = (maps.low > threshold + 1e-6).permute(2, 0, 1)
    out = state.index_select(1, res.y0).index_select(2, res.x0)
    straddle = (maps.low <= threshold + 1e-6) & (maps.high > threshold - 1e-6) & (_pixels_per_cell(res) > 0)[..., None]
    pairs = straddle.nonzero()
    if len(pairs):
        grid = CellGrid.of(res, pairs[:, :2])
        cell, rows, cols = grid.pixels()
        out[pairs[cell, 2], rows, cols] = grid.sample(maps.values, pairs[:, 2:])[..., 0][grid.valid] > threshold
    return out


# ---------------------------------------------------------------------------------------------
# The three inference rules
# ---------------------------------------------------------------------------------------------
def _prepare(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None,
             target_sizes: Sequence[Sequence[int]] | Tensor | None) -> list[tuple[int, tuple[int, int], Resampling]]:
    """Validate shapes; per image: index, mask crop `(n, m)`, and its resampling to the target size."""
    if class_queries_logits.ndim != 3 or masks_queries_logits.ndim != 4:
        raise ValueError(
            "expected class_queries_logits (batch, queries, classes + 1) and masks_queries_logits "
            f"(batch, queries, height, width), got {tuple(class_queries_logits.shape)} and {tuple(masks_queries_logits.shape)}"
        )
    batch = class_queries_logits.shape[0]
    if masks_queries_logits.shape[:2] != class_queries_logits.shape[:2]:
        raise ValueError(f"batch and query dimensions differ: {tuple(class_queries_logits.shape[:2])} "
                         f"vs {tuple(masks_queries_logits.shape[:2])}")
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"target_sizes: expected one (height, width) per image ({batch}), got {len(target_sizes)}")
    if pixel_mask is not None and (pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch):
        raise ValueError(f"pixel_mask: expected (batch={batch}, height, width), got {tuple(pixel_mask.shape)}")
    mask_size = tuple(masks_queries_logits.shape[-2:])
    plans, cache = [], {}
    for i in range(batch):
        crop, extent = valid_region(mask_size, None if pixel_mask is None else pixel_mask[i])
        if target_sizes is None:
            target, extent = crop, (float(crop[0]), float(crop[1]))
        else:
            target = tuple(int(v) for v in target_sizes[i])
            if len(target) != 2 or min(target) < 1:
                raise ValueError(f"target_sizes[{i}]: expected (height, width) >= 1, got {target_sizes[i]}")
        key = (crop, target, extent)
        if key not in cache:  # images of one size share their sampling plan
            cache[key] = resampling(crop, target, extent, masks_queries_logits.device)
        plans.append((i, crop, cache[key]))
    return plans


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
    plans = _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes)
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    results = []
    for i, (n, m), res in plans:
        probs = masks_queries_logits[i, :, :n, :m].float().sigmoid()  # (Q, n, m)
        scores = (probs.flatten(1).T @ class_probs[i]).view(n, m, -1)  # (n, m, K), channels-last
        results.append(resampled_argmax(CellMaps(scores.permute(2, 0, 1)), res).paint(res))
    return results


def semantic_scores(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                    target_sizes: Sequence[Sequence[int]] | Tensor | None = None) -> list[Tensor]:
    """Per image the `(K, height, width)` class scores ``sum_i p_i(c) m_i``, resampled (dense)."""
    plans = _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes)
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1]
    results = []
    for i, (n, m), res in plans:
        probs = masks_queries_logits[i, :, :n, :m].float().sigmoid()
        results.append(resample_dense((class_probs[i].T @ probs.flatten(1)).view(-1, n, m), res))
    return results


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
    plans = _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes)
    num_labels = class_queries_logits.shape[-1] - 1
    scores, labels = class_queries_logits.float().softmax(-1).max(-1)  # (B, Q)
    results = []
    for i, (n, m), res in plans:
        keep = (labels[i] != num_labels) & (scores[i] > threshold)
        probs = masks_queries_logits[i, keep, :n, :m].float().sigmoid()  # (Qk, n, m)
        kept_scores, kept_labels = scores[i, keep], labels[i, keep].tolist()
        segments: list[dict[str, Any]] = []
        if kept_labels:
            maps = CellMaps(probs)
            assignment = resampled_argmax(maps, res, weights=kept_scores)
            areas = assignment.areas(res, len(kept_labels))
            valid = ((areas > 0) & keep_by_overlap(maps, res, areas, mask_threshold, overlap_mask_area_threshold)).tolist()
            segment_of_query = [0] * len(kept_labels)  # 0 = void
            stuff: dict[int, dict[str, Any]] = {}
            for k, (label, score) in enumerate(zip(kept_labels, kept_scores.tolist())):
                if not valid[k]:
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
            lut = torch.tensor(segment_of_query, dtype=torch.int32, device=probs.device)
            segmentation = assignment.paint(res, lut, fill=0)
        else:
            segmentation = torch.zeros(res.target_size, dtype=torch.int32, device=probs.device)
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


def instance_inference(class_queries_logits: Tensor, masks_queries_logits: Tensor, pixel_mask: Tensor | None = None,
                       target_sizes: Sequence[Sequence[int]] | Tensor | None = None, threshold: float = 0.5,
                       mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
                       return_binary_maps: bool = False) -> list[dict[str, Any]]:
    """General inference, instance flavour (SPEC §4).

    The `Q` best (query, class) pairs by class probability become candidates; a candidate's mask is
    ``m_i > mask_threshold`` and its score is class probability x mean mask probability inside its
    mask (at mask resolution); candidates scoring `>= threshold` are kept, best first. A pixel
    belongs to the kept instance maximising ``score_i * m_i`` among those whose mask covers it; an
    instance whose visible area is below `overlap_mask_area_threshold` of its own mask is dropped.

    Returns:
        per image ``{"segmentation", "segments_info": [{"id", "label_id", "was_fused", "score"}]}``:
        ``segmentation`` is a `(height, width)` int32 map (-1 = background, instances from 0 in
        decreasing score), or with `return_binary_maps` a `(num_instances, height, width)` float
        stack of each instance's full mask.
    """
    _check_thresholds(threshold, mask_threshold, overlap_mask_area_threshold)
    plans = _prepare(class_queries_logits, masks_queries_logits, pixel_mask, target_sizes)
    num_queries, num_labels = class_queries_logits.shape[1], class_queries_logits.shape[-1] - 1
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1].flatten(1)  # (B, Q*K)
    cut = math.log(mask_threshold / (1 - mask_threshold)) if 0 < mask_threshold < 1 else (
        -math.inf if mask_threshold <= 0 else math.inf)
    results = []
    for i, (n, m), res in plans:
        top_scores, top_index = class_probs[i].topk(min(num_queries, class_probs.shape[1]))
        hopeful = top_scores >= threshold  # the final score is at most the class probability
        top_scores, top_index = top_scores[hopeful], top_index[hopeful]
        query, label = top_index // num_labels, top_index % num_labels
        logits = masks_queries_logits[i, query, :n, :m].float()  # (Q, n, m)
        probs = logits.sigmoid()
        binary = logits > cut
        mask_score = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        score = top_scores * mask_score
        order = score.argsort(descending=True, stable=True)
        order = order[score[order] >= threshold]
        probs, score, label = probs[order], score[order], label[order]
        if len(order) == 0:
            empty = (torch.zeros((0, *res.target_size)) if return_binary_maps
                     else torch.full(res.target_size, -1, dtype=torch.int32))
            results.append({"segmentation": empty.to(probs.device), "segments_info": []})
            continue
        maps = CellMaps(probs)
        assignment = resampled_argmax(maps, res, weights=score, on_threshold=mask_threshold)
        visible = assignment.areas(res, len(order))
        valid = keep_by_overlap(maps, res, visible, mask_threshold, overlap_mask_area_threshold, strict=True)
        ids = torch.cumsum(valid.int(), 0) - 1
        lut = torch.where(valid, ids, torch.full_like(ids, -1)).int()
        segments = [{"id": j, "label_id": c, "was_fused": False, "score": round(p, 6)}
                    for j, (c, p) in enumerate(zip(label[valid].tolist(), score[valid].tolist()))]
        if return_binary_maps:
            segmentation = resampled_above(maps, res, mask_threshold)[valid].float()
        else:
            segmentation = assignment.paint(res, lut, fill=-1)
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


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
