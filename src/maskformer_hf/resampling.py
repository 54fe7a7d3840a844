"""Bilinear resampling of low-resolution maps to target pixels, and the argmax / threshold counts
that post-processing needs, computed per low-resolution cell where bounds allow (pure tensor math;
used by :mod:`maskformer_hf.inference`).

Geometry. Mask logits live at stride 4 of the padded input: `(h, w)` for an input of `(H, W)`. An
image whose valid region is `(h_v, w_v)` (its ``pixel_mask``) covers `h_v * h / H` rows of the
mask map, a fractional extent. The detectron2 recipe upsamples to `(H, W)`, crops `(h_v, w_v)`,
then resizes to the target size: two bilinear passes over every query at full resolution, and a
double blur. Here every target pixel samples the low-resolution map once, bilinearly (half-pixel
centres), at the position the crop-and-resize maps it to; rows and columns outside the valid
extent are never read (edge rows are replicated instead of blending in padding). Without a
``pixel_mask`` this is exactly ``F.interpolate(..., size=target, mode="bilinear")``.

Speed. Every post-processing rule is an argmax or a threshold of bilinearly resampled maps, and a
bilinear value lies between the four source values around it. So per low-resolution cell (the
target pixels that share four source neighbours) bounds decide most pixels without evaluating
them: a cell is settled when one candidate's lower bound beats every other upper bound (or a
mask is surely above / below its threshold). Only the remaining pixels - region boundaries - are
evaluated exactly, and only for their candidate channels, with the arithmetic of
:func:`resample_dense`; results equal evaluating every pixel. Maps come in batches `(B, C, n, m)`
of images that share one :class:`Resampling`.

Where the bounds do not pay (small work, noisy maps with many competitors), :func:`dense_argmax`
evaluates every pixel with the interpolation kernel, in bounded chunks; :func:`prefers_dense` and
``resampled_argmax(..., give_up=True)`` make the choice. The two agree up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# Geometry: where each target pixel samples the low-resolution map
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resampling:
    """Bilinear sampling of an `(n, m)` map at `(T_h, T_w)` target pixels.

    ``y0``/``y1`` `(T_h,)`: the two source rows of each target row, ``wy`` `(T_h,)` the weight of
    ``y1``; ``x0``/``x1``/``wx`` `(T_w,)` likewise for columns. ``row_start``/``row_count`` `(n,)`:
    the target rows whose ``y0`` is a given source row (contiguous); ``col_start``/``col_count``
    `(m,)` likewise; ``extent``: the rows/columns of the `(n, m)` source that map onto the target.
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
    extent: tuple[float, float]

    @property
    def target_size(self) -> tuple[int, int]:
        return self.y0.numel(), self.x0.numel()

    @property
    def source_size(self) -> tuple[int, int]:
        return self.row_count.numel(), self.col_count.numel()

    @property
    def pixels_per_cell(self) -> float:
        """Mean target pixels per low-resolution cell (the upsampling ratio)."""
        return self.y0.numel() * self.x0.numel() / max(1, self.source_size[0] * self.source_size[1])


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
    return Resampling(y0, y1, wy, x0, x1, wx, rs, rc, cs, cc, (float(eh), float(ew)))


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
    """`(B, C, n, m)` maps (a batch sharing one :class:`Resampling`), held channels-last
    `(B, n, m, C)`, with the max and min of the four source values around each cell (``high``,
    ``low``, `(B, n, m, C)`): every bilinear value sampled in a cell lies between them."""

    def __init__(self, values: Tensor) -> None:
        v = values.permute(0, 2, 3, 1).contiguous()  # free when `values` is a channels-last view
        self.values = v
        self.high, self.low = self._bound(v, torch.maximum), self._bound(v, torch.minimum)

    @staticmethod
    def _bound(v: Tensor, pick: Any) -> Tensor:
        rows = torch.empty_like(v)  # pairs of rows, then pairs of columns; the last row/column stays itself
        pick(v[:, :-1], v[:, 1:], out=rows[:, :-1])
        rows[:, -1] = v[:, -1]
        out = torch.empty_like(v)
        pick(rows[:, :, :-1], rows[:, :, 1:], out=out[:, :, :-1])
        out[:, :, -1] = rows[:, :, -1]
        return out

    @property
    def num_channels(self) -> int:
        return self.values.shape[-1]


def resample_dense(values: Tensor, res: Resampling) -> Tensor:
    """Every target pixel of `values` `(..., n, m)` -> `(..., T_h, T_w)` (separable bilinear)."""
    wy, wx = res.wy[:, None], res.wx
    rows = values[..., res.y0, :] * (1 - wy) + values[..., res.y1, :] * wy  # (..., T_h, m)
    return rows[..., res.x0] * (1 - wx) + rows[..., res.x1] * wx


def interpolate(values: Tensor, res: Resampling) -> Tensor:
    """Every target pixel of `values` `(B, C, n, m)` -> `(B, C, T_h, T_w)` with ``F.interpolate``
    (bilinear, half-pixel centres): the fast kernel, with the valid extent honoured through its
    scale factor. Equals :func:`resample_dense` up to float rounding (about 1e-7)."""
    (n, m), (eh, ew), (th, tw) = res.source_size, res.extent, res.target_size
    values = values[..., :n, :m]
    if (eh, ew) == (float(n), float(m)):
        return F.interpolate(values, size=(th, tw), mode="bilinear", align_corners=False)
    # The kernel makes floor(n * scale) rows; where that falls short of the target (an extent just
    # above the crop), one replicated source row/column supplies the last ones, as clamping does.
    scale_h, scale_w = th / eh, tw / ew
    short_h, short_w = math.floor(n * scale_h) < th, math.floor(m * scale_w) < tw  # the kernel's own rounding
    if short_h or short_w:
        values = F.pad(values, (0, int(short_w), 0, int(short_h)), mode="replicate")
    out = F.interpolate(values, scale_factor=(scale_h, scale_w), mode="bilinear", align_corners=False,
                        recompute_scale_factor=False)
    return out[..., :th, :tw]


@dataclass
class CellGrid:
    """The target pixels of `A` cells `(A, 3)` (image, row, column) as a padded `(A, R, W)` grid:
    ``rows`` `(A, R)` / ``cols`` `(A, W)` target indices, ``valid`` `(A, R, W)`, and the bilinear
    weights ``wy`` `(A, R)`, ``wx`` `(A, W)`."""

    cells: Tensor
    rows: Tensor
    cols: Tensor
    valid: Tensor
    wy: Tensor
    wx: Tensor

    @classmethod
    def of(cls, res: Resampling, cells: Tensor) -> "CellGrid":
        a, b = cells[:, 1], cells[:, 2]
        rc, cc = res.row_count[a], res.col_count[b]
        dr = torch.arange(int(rc.max()), device=a.device)
        dc = torch.arange(int(cc.max()), device=a.device)
        row_ok, col_ok = dr < rc[:, None], dc < cc[:, None]
        rows = (res.row_start[a, None] + dr).clamp(max=len(res.y0) - 1)
        cols = (res.col_start[b, None] + dc).clamp(max=len(res.x0) - 1)
        return cls(cells, rows, cols, row_ok[:, :, None] & col_ok[:, None, :], res.wy[rows], res.wx[cols])

    def sample(self, values: Tensor, channels: Tensor) -> Tensor:
        """Bilinear values of channels-last `values` `(B, n, m, C)` at the grid, for each cell's
        `channels` `(A, k)` -> `(A, R, W, k)`. Same arithmetic as :func:`resample_dense` (rows
        first, then columns), hence identical values."""
        n, m = values.shape[1:3]
        image, a, b = self.cells.unbind(1)
        a1, b1 = (a + 1).clamp(max=n - 1), (b + 1).clamp(max=m - 1)
        c00, c10, c01, c11 = (values[image, y, x].gather(1, channels)[:, None, :]
                              for y, x in ((a, b), (a1, b), (a, b1), (a1, b1)))
        wy = self.wy[:, :, None]  # (A, R, 1)
        left = (c00 * (1 - wy) + c10 * wy)[:, :, None]  # (A, R, 1, k)
        right = (c01 * (1 - wy) + c11 * wy)[:, :, None]
        wx = self.wx[:, None, :, None]  # (A, 1, W, 1)
        return left * (1 - wx) + right * wx

    def pixels(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`(cell, image, rows, cols)` of the valid grid entries, each `(P,)`, in grid order."""
        cell, r, c = self.valid.nonzero().unbind(1)
        return cell, self.cells[cell, 0], self.rows[cell, r], self.cols[cell, c]


def _pixels_per_cell(res: Resampling) -> Tensor:
    return res.row_count[:, None] * res.col_count[None, :]  # (n, m)


# ---------------------------------------------------------------------------------------------
# Argmax and threshold counts of resampled maps, settled per cell where the bounds allow
# ---------------------------------------------------------------------------------------------
@dataclass
class Assignment:
    """Per-pixel argmax over channels: settled cells `(B, n, m)` plus exactly evaluated pixels, or
    (from :func:`dense_argmax`) every pixel's winner.

    ``cell_label``: winning channel of each cell (-1 = no channel, meaningful where ``settled``);
    ``image``/``rows``/``cols``/``label`` `(P,)`: the pixels of unsettled cells and their winners;
    ``full``: `(B, T_h, T_w)` winners of every pixel (then the cell fields are unused).
    """

    cell_label: Tensor
    settled: Tensor
    image: Tensor
    rows: Tensor
    cols: Tensor
    label: Tensor
    full: Tensor | None = None

    @classmethod
    def dense(cls, labels: Tensor) -> "Assignment":
        empty = labels.new_zeros(0)
        return cls(empty, empty.bool(), empty, empty, empty, empty, full=labels)

    def areas(self, res: Resampling, num_channels: int) -> Tensor:
        """Pixels won by each channel: `(B, num_channels)` int64."""
        if self.full is not None:
            batch = self.full.shape[0]
            offset = torch.arange(0, batch * num_channels, num_channels, device=self.full.device)[:, None, None]
            flat = (self.full + offset).masked_fill_(self.full < 0, batch * num_channels)  # -1: a spare bin
            return torch.bincount(flat.view(-1), minlength=batch * num_channels + 1)[:-1].view(batch, num_channels)
        batch = self.cell_label.shape[0]
        npix = _pixels_per_cell(res).expand_as(self.cell_label)
        keep = self.settled & (self.cell_label >= 0)
        image = torch.arange(batch, device=npix.device)[:, None, None].expand_as(self.cell_label)
        areas = torch.zeros(batch * num_channels, dtype=torch.int64, device=npix.device)
        areas.index_add_(0, (image * num_channels + self.cell_label)[keep], npix[keep])
        won = self.label >= 0
        areas += torch.bincount((self.image * num_channels + self.label)[won], minlength=batch * num_channels)
        return areas.view(batch, num_channels)

    def paint(self, res: Resampling, lut: Tensor | None = None, fill: int = -1) -> Tensor:
        """The `(B, T_h, T_w)` maps of winners, through `lut` `(B, C)` when given (-1 -> `fill`)."""
        if lut is not None:
            width = lut.shape[1] + 1
            lut = torch.cat([lut, lut.new_full((lut.shape[0], 1), fill)], 1)  # column C: -1 -> fill
        if self.full is not None:
            if lut is None:
                return self.full.clone()
            return lut.gather(1, (self.full % width).flatten(1)).view(self.full.shape)
        cell, label = self.cell_label, self.label
        if lut is not None:
            cell = lut.gather(1, (cell % width).flatten(1)).view(cell.shape)
            label = lut[self.image, label % width]
        out = cell.index_select(1, res.y0).index_select(2, res.x0)
        out[self.image, self.rows, self.cols] = label.to(out.dtype)
        return out


# ---------------------------------------------------------------------------------------------
# Dense evaluation: every pixel of every channel, through the interpolation kernel, in chunks
# ---------------------------------------------------------------------------------------------
DENSE_CHUNK = 1 << 22  # interpolated floats held at once (16 MB): memory is bounded by it, not by C x H x W
EXACT_COST = 12  # one exactly evaluated (pixel, channel) of the cell path costs about this many dense ones


def _dense_chunk(batch: int, res: Resampling) -> int:
    """Channels per chunk of dense evaluation: at most ``DENSE_CHUNK`` interpolated values."""
    th, tw = res.target_size
    return max(1, DENSE_CHUNK // max(1, batch * th * tw))


def dense_argmax(values: Tensor, res: Resampling, weights: Tensor | None = None, on_threshold: float | None = None,
                 count_threshold: float | None = None, strict: bool = False) -> tuple[Assignment, Tensor | None]:
    """:func:`resampled_argmax` by evaluating every pixel of every channel (with :func:`interpolate`),
    a chunk of channels at a time (a running maximum; ties go to the lowest channel).

    Args:
        values: `(B, C, n, m)` maps; weights, on_threshold: as :func:`resampled_argmax`.
        count_threshold: also count, per channel, the target pixels `>= count_threshold`
            (`>` if `strict`), as :func:`resampled_count`, from the same interpolation.
    Returns:
        the dense :class:`Assignment` and the `(B, C)` int64 counts (None without `count_threshold`).

    The weights multiply the low-resolution maps before interpolating (bilinear sampling is linear),
    and the thresholds are compared with ``weights * threshold``: both agree with weighting after
    sampling up to float rounding. With `on_threshold`, a channel whose weight is 0 never competes.
    """
    batch, channels = values.shape[:2]
    th, tw = res.target_size
    chunk = _dense_chunk(batch, res)
    if weights is not None:
        values = values * weights[:, :, None, None]
    best = index = None
    counts = []
    for start in range(0, channels, chunk):
        stop = min(channels, start + chunk)
        # channels-last: the interpolation kernel is as fast, and the reduction over channels runs on
        # contiguous memory (2-3x faster than over a strided channel axis)
        part = values[:, start:stop].contiguous(memory_format=torch.channels_last)
        v = interpolate(part, res).permute(0, 2, 3, 1).contiguous()  # (B, T_h, T_w, c); a copy only after a crop

        def scaled(threshold: float) -> Tensor | float:
            return threshold if weights is None else weights[:, None, None, start:stop] * threshold

        hits = None
        if count_threshold is not None:
            hits = torch.empty_like(v)
            (torch.gt if strict else torch.ge)(v, scaled(count_threshold), out=hits)  # float 0/1: sums fast
            counts.append(hits.view(batch, th * tw, -1).sum(1).round().long())
        if on_threshold is not None:
            if hits is None or not strict or count_threshold != on_threshold:
                hits = torch.gt(v, scaled(on_threshold), out=torch.empty_like(v))
            v.mul_(hits)  # off: 0; on: the weighted value (> 0), untouched
        top, pick = v.max(-1)  # (B, T_h, T_w)
        if best is None:
            best, index = top, pick
        else:
            better = top > best  # strict: an earlier channel keeps a tie, as torch.argmax
            best = torch.where(better, top, best)
            index = torch.where(better, pick + start, index)
    if on_threshold is not None:
        index = index.masked_fill(best <= 0, -1)  # no channel on
    return Assignment.dense(index), (torch.cat(counts, 1) if counts else None)


def dense_above(values: Tensor, res: Resampling, threshold: float) -> Tensor:
    """:func:`resampled_above` by evaluating every pixel: `(B, C, T_h, T_w)` bool."""
    batch, channels = values.shape[:2]
    th, tw = res.target_size
    chunk = _dense_chunk(batch, res)
    return torch.cat([interpolate(values[:, s:s + chunk], res) > threshold for s in range(0, channels, chunk)]
                     or [values.new_zeros((batch, 0, th, tw), dtype=torch.bool)], 1)


DENSE_SMALL = 1 << 20  # below this many (pixel, channel) values, dense evaluation beats the bounds' overhead
DENSE_PIXELS_PER_CELL = 2.0  # at or below this upsampling ratio, the bounds settle too little to pay


def prefers_dense(batch: int, channels: int, res: Resampling) -> bool:
    """Dense evaluation without per-cell bounds: for small work, or where cells hold few target
    pixels (the bounds then settle little and cost as much as evaluating)."""
    th, tw = res.target_size
    return batch * channels * th * tw <= DENSE_SMALL or res.pixels_per_cell <= DENSE_PIXELS_PER_CELL


def overlap_keep(areas: Tensor, own: Tensor, overlap: float) -> Tensor:
    """Channels whose own mask `own` `(B, C)` is non-empty and whose won `areas` are at least
    `overlap` of it: `(B, C)` bool."""
    return (own > 0) & (areas / own.clamp(min=1) >= overlap)


def resampled_argmax(maps: CellMaps, res: Resampling, weights: Tensor | None = None,
                     on_threshold: float | None = None, give_up: bool = False) -> Assignment | None:
    """Per target pixel, the channel maximising `weights[c] * v_c`, `v_c` resampled from `maps`.

    Args:
        maps: `B x C` maps (probabilities or scores, finite).
        weights: `(B, C)` non-negative factors (default 1).
        on_threshold: if given, channel `c` only competes where `v_c > on_threshold`; pixels where
            no channel does get -1.
        give_up: return None when the bounds leave so many (pixel, candidate) pairs to evaluate
            that :func:`dense_argmax` is cheaper (noisy maps, many competing channels).
    Ties go to the lowest channel index, as ``torch.argmax``.
    """
    high, low = maps.high, maps.low  # (B, n, m, C)
    if weights is not None:
        high, low = high * weights[:, None, None, :], low * weights[:, None, None, :]
    margin = 1e-6 * max(1.0, float(high.max()), -float(low.min()))
    if on_threshold is None:
        best_lower, best = low.max(-1)  # (B, n, m)
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
    npix = _pixels_per_cell(res)
    settled |= npix == 0
    if give_up:
        exact = int((npix * ncand).masked_fill(settled, 0).sum())
        if exact * EXACT_COST > maps.num_channels * npix.sum() * ncand.shape[0]:
            return None
    # Unsettled cells, evaluated pixel by pixel for their candidates only: most have two, so those
    # are done apart from the few with more (k = the group's largest count, padded with -inf).
    parts = []
    for group in (~settled & (ncand <= 2), ~settled & (ncand > 2)):
        cells = group.nonzero()  # (A, 3): image, row, column
        if len(cells):
            parts.append(_evaluate_cells(maps, res, cells, candidate, high, ncand, weights, on_threshold))
    if not parts:
        empty = cell_label.new_zeros(0)
        return Assignment(cell_label, settled, empty, empty, empty, empty)
    image, rows, cols, label = (torch.cat(t) for t in zip(*parts))
    return Assignment(cell_label, settled, image, rows, cols, label)


def _evaluate_cells(maps: CellMaps, res: Resampling, cells: Tensor, candidate: Tensor, high: Tensor, ncand: Tensor,
                    weights: Tensor | None, on_threshold: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact winners at the pixels of `cells` `(A, 3)`: `(image, rows, cols, label)`, each `(P,)`."""
    grid = CellGrid.of(res, cells)
    image, a, b = cells.unbind(1)
    k = int(ncand[image, a, b].max())
    cell_candidate = candidate[image, a, b]  # (A, C)
    bound = high[image, a, b].masked_fill(~cell_candidate, -math.inf)
    channels = bound.topk(k, dim=1).indices.sort(dim=1).values  # (A, k): ascending = argmax's tie order
    ok = cell_candidate.gather(1, channels)[:, None, None, :]
    v = grid.sample(maps.values, channels)  # (A, R, W, k)
    score = v if weights is None else v * weights[image].gather(1, channels)[:, None, None, :]
    if on_threshold is not None:
        score = torch.where(v > on_threshold, score, torch.full_like(score, -1.0))
    best_score, pick = score.masked_fill(~ok, -math.inf).max(-1)  # (A, R, W)
    label = channels.gather(1, pick.flatten(1)).view(pick.shape)
    if on_threshold is not None:
        label = torch.where(best_score < 0, torch.full_like(label, -1), label)
    _, image, rows, cols = grid.pixels()
    return image, rows, cols, label[grid.valid]


def resampled_count(maps: CellMaps, res: Resampling, threshold: float, strict: bool = False,
                    channels: Tensor | None = None, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Target pixels where each resampled map is `>= threshold` (`>` if `strict`): `(B, C)` int64.
    With `channels` `(B, C)` bool, only those are counted exactly (the others get their lower bound);
    `bounds`: :func:`_count_bounds`'s result for this threshold, when already computed."""
    lower, straddle = bounds if bounds is not None else _count_bounds(maps, res, threshold)
    if channels is not None:
        straddle = straddle & channels[:, None, None, :]
    pairs = straddle.nonzero()  # (S, 4): image, row, column, channel
    if len(pairs):
        grid = CellGrid.of(res, pairs[:, :3])
        v = grid.sample(maps.values, pairs[:, 3:])[..., 0]  # (S, R, W)
        hits = ((v > threshold) if strict else (v >= threshold)) & grid.valid
        lower = lower.view(-1).index_add(0, pairs[:, 0] * maps.num_channels + pairs[:, 3], hits.sum((1, 2)))
    return lower.view(-1, maps.num_channels)


def _count_bounds(maps: CellMaps, res: Resampling, threshold: float) -> tuple[Tensor, Tensor]:
    """Pixels surely above `threshold` `(B, C)`, and the cells that straddle it `(B, n, m, C)`."""
    npix = _pixels_per_cell(res)
    above = maps.low > threshold + 1e-6
    straddle = ~above & (maps.high >= threshold - 1e-6) & (npix > 0)[..., None]
    return _cells_total(above, npix), straddle


def _cells_total(cells: Tensor, npix: Tensor) -> Tensor:
    """Target pixels of the flagged cells `(B, n, m, C)` bool, per image and channel: `(B, C)`."""
    batch, num = cells.shape[0], cells.shape[-1]
    dtype = torch.float32 if int(npix.sum()) < 1 << 24 else torch.float64  # integer sums stay exact
    total = npix.view(1, 1, -1).to(dtype) @ cells.view(batch, -1, num).to(dtype)  # (B, 1, C)
    return total[:, 0].round().long()


def keep_by_overlap(maps: CellMaps, res: Resampling, areas: Tensor, threshold: float, overlap: float,
                    strict: bool = False) -> Tensor:
    """Channels whose own mask (resampled map `>= threshold`, `>` if `strict`) is non-empty and
    whose won `areas` `(B, C)` are at least `overlap` of it: `(B, C)` bool. Own masks are counted
    exactly only for channels that the per-cell bounds on their size leave undecided."""
    bounds = lower, straddle = _count_bounds(maps, res, threshold)
    upper = lower + _cells_total(straddle, _pixels_per_cell(res))
    surely = (lower > 0) & (areas / upper.clamp(min=1) >= overlap)  # own <= upper
    surely_not = (upper == 0) | ((lower > 0) & (areas / lower.clamp(min=1) < overlap))  # own >= lower
    undecided = ~surely & ~surely_not
    if not bool(undecided.any()):
        return surely
    own = resampled_count(maps, res, threshold, strict, channels=undecided, bounds=bounds)
    return surely | (undecided & overlap_keep(areas, own, overlap))


def resampled_above(maps: CellMaps, res: Resampling, threshold: float) -> Tensor:
    """Binary maps `v > threshold` of every channel at every target pixel: `(B, C, T_h, T_w)` bool."""
    state = (maps.low > threshold + 1e-6).permute(0, 3, 1, 2)
    out = state.index_select(2, res.y0).index_select(3, res.x0)
    straddle = (maps.low <= threshold + 1e-6) & (maps.high > threshold - 1e-6) & (_pixels_per_cell(res) > 0)[..., None]
    pairs = straddle.nonzero()
    if len(pairs):
        grid = CellGrid.of(res, pairs[:, :3])
        cell, image, rows, cols = grid.pixels()
        v = grid.sample(maps.values, pairs[:, 3:])[..., 0][grid.valid]
        out[image, pairs[cell, 3], rows, cols] = v > threshold
    return out
