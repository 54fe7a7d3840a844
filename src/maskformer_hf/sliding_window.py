"""Sliding-window inference for images larger than the training crop (SPEC §4 rules, per window).

The model runs on overlapping `crop` windows, `stride` apart, laid over each image's valid region
(its ``pixel_mask``) as mmsegmentation lays them: ``ceil((L - crop) / stride) + 1`` windows per
axis, the last one flush with the image's edge. An image no larger than the crop along an axis is
one window there, zero-padded (with a padding mask) to a multiple of `size_divisor`, as the
processor pads it; padding never votes. Every window samples its own mask logits at the target
pixels whose centres it covers, with the geometry of :mod:`maskformer_hf.resampling` (half-pixel
centres, one bilinear sampling per target pixel), so a window votes at full resolution.

Rules (when one window covers the whole image, the whole-image rules of
:mod:`maskformer_hf.inference` run on its output: the results are those of whole-image inference):

* **semantic**: per pixel, the class scores ``sum_i p_i(c) m_i`` of every window covering it,
  averaged, then the argmax (mmsegmentation's ``slide`` mode, with MaskFormer's scores).
* **panoptic / instance**: every window's kept queries (the whole-image selection: best class
  above `threshold` for panoptic; score = class prob x mean mask prob for instance) become
  candidates whose masks live in their window. Each pixel goes to the candidate maximising
  ``score_i * m_i`` among all candidates of all windows covering it (instance: only where
  ``m_i > mask_threshold``); ties go to the earlier window. A candidate's own mask is counted
  over its window (``m_i >= mask_threshold``; instance ``>``) and the overlap-area rule keeps it
  if it won at least `overlap_mask_area_threshold` of it; panoptic "stuff" classes fuse into one
  segment per class over the whole image. Why this rule: averaging mask logits across windows is
  meaningless (query ``i`` of one window is unrelated to query ``i`` of another), while the
  candidates' ``p * m`` scores are comparable; the overlap rule then removes the duplicate of an
  object seen whole by two windows (the loser keeps less than 80 % of its mask). A *thing* cut
  by a window edge is seen partly by each window and can come out as two segments: keep the
  overlap (`crop - stride`) above the size of the objects that matter.

Memory. The target is cut into tiles covered by one fixed set of windows; a tile is decided as soon
as its last window has run, so the image is streamed window row by window row. Held at once:

* the outputs: a `(T_h, T_w)` int64 class map (semantic) and an int32 winner map (panoptic /
  instance);
* the low-resolution results of at most ``ceil(crop_h / stride_h)`` window rows,
  ``ceil(W / stride_w)`` windows each: `(K, n, m)` class scores (semantic) and `(k, n, m)`
  candidate masks (panoptic), float32, with `(n, m)` the mask size of a window (crop / 4);
* one tile's sampled values, at most ``TILE_VALUES`` floats per window, and the model's
  activations for `batch_size` windows.

Nothing of size `K x H x W` (or `Q x H x W`) exists; see docs/inference.md for measured figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .inference import _check_thresholds, _target_size, instance_inference, panoptic_inference, semantic_inference
from .resampling import Resampling, resample_dense

TASKS = ("semantic", "panoptic", "instance")
TILE_VALUES = 1 << 22  # sampled floats held at once per window and tile chunk (16 MB)


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name}: expected an int or (height, width) ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name}: expected sizes >= 1, got {value!r}")
    return pair  # type: ignore[return-value]


def check_slide(crop: Any, stride: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """`(crop, stride)` as `(h, w)` pairs; raises ``ValueError`` unless ``1 <= stride <= crop``."""
    crop, stride = _pair(crop, "crop"), _pair(stride, "stride")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(f"stride: expected at most the crop {crop} (windows must overlap or touch), got {stride}")
    return crop, stride


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window starts along an axis of `length` valid pixels (the last window flush with the end)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(0, min(i * stride, length - crop)) for i in range(count)]


@dataclass(frozen=True)
class _Axis:
    """The windows along one axis: ``starts``, input ``size`` (pixels), ``valid`` pixels of each,
    and for every target index the first and last window covering its centre (`(T,)` int64)."""

    length: int
    target: int
    starts: list[int]
    size: int
    valid: list[int]
    first: Tensor
    last: Tensor

    @classmethod
    def of(cls, length: int, target: int, crop: int, stride: int, size_divisor: int, device: torch.device) -> "_Axis":
        starts = window_starts(length, crop, stride)
        size = crop if length >= crop else min(crop, -(-length // max(1, size_divisor)) * max(1, size_divisor))
        valid = [min(size, length - s) for s in starts]
        # target pixel t has its centre at (t + 0.5) * length / target; exact in integers
        centre2 = (2 * torch.arange(target, device=device) + 1) * length  # (T,), times 2 * target
        begin = torch.tensor(starts, device=device) * 2 * target
        end = (torch.tensor(starts, device=device) + torch.tensor(valid, device=device)) * 2 * target
        first = (end[None, :] <= centre2[:, None]).sum(1)  # windows ending before the centre
        last = (begin[None, :] <= centre2[:, None]).sum(1) - 1
        return cls(length, target, starts, size, valid, first, last)

    def runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Maximal `[a, b)` in `[lo, hi)` of target indices covered by one set of windows."""
        if hi <= lo:
            return []
        key = self.first[lo:hi] * (len(self.starts) + 1) + self.last[lo:hi]
        cuts = (torch.nonzero(key[1:] != key[:-1])[:, 0] + 1 + lo).tolist()
        bounds = [lo, *cuts, hi]
        return list(zip(bounds[:-1], bounds[1:]))

    def sampling(self, k: int, mask_size: int, lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """Source rows `(i0, i1)` and weight of `i1` for target indices `[lo, hi)` in window `k`'s mask
        map of `mask_size` rows, and the rows it holds of the image (``resampling._axis``' arithmetic)."""
        device = self.first.device
        scale = torch.tensor(self.length * mask_size / self.size, dtype=torch.float32, device=device) / self.target
        offset = self.starts[k] * mask_size / self.size
        src = (torch.arange(lo, hi, device=device, dtype=torch.float32) + 0.5) * scale - 0.5
        src = (src - offset).clamp(min=0)
        rows = min(mask_size, math.ceil(self.valid[k] * mask_size / self.size - 1e-6))
        i0 = src.floor().long().clamp(max=rows - 1)
        return i0, (i0 + 1).clamp(max=rows - 1), (src - i0).clamp(0, 1), rows


def _plan(rows: tuple[Tensor, Tensor, Tensor, int], cols: tuple[Tensor, Tensor, Tensor, int]) -> Resampling:
    """A :class:`Resampling` of a window's cropped `(n, m)` map at one tile's target pixels."""
    (y0, y1, wy, n), (x0, x1, wx, m) = rows, cols
    rc, cc = torch.bincount(y0, minlength=n), torch.bincount(x0, minlength=m)
    return Resampling(y0, y1, wy, x0, x1, wx, torch.cumsum(rc, 0) - rc, rc, torch.cumsum(cc, 0) - cc, cc,
                      (float(n), float(m)))


# ---------------------------------------------------------------------------------------------
# What each window keeps of its output (low resolution, cropped to its valid region)
# ---------------------------------------------------------------------------------------------
def _window_results(class_logits: Tensor, mask_logits: Tensor, crop: tuple[int, int], tasks: Sequence[str],
                    settings: dict[str, Any]) -> dict[str, Any]:
    """One window's `(Q, K + 1)` class and `(Q, h, w)` mask logits -> per task what its tiles need:
    semantic `(K, n, m)` scores; panoptic / instance ``(probs (k, n, m), weights (k,), labels (k,))``
    of its candidates, selected as the whole-image rules select them."""
    n, m = crop
    class_logits, mask_logits = class_logits.float(), mask_logits[:, :n, :m].float()
    num_labels = class_logits.shape[-1] - 1
    out: dict[str, Any] = {}
    if "semantic" in tasks:
        class_probs = class_logits.softmax(-1)[:, :-1]  # (Q, K)
        scores = mask_logits.sigmoid().flatten(1).transpose(0, 1) @ class_probs  # (n*m, K), as semantic_inference
        out["semantic"] = scores.view(n, m, -1).permute(2, 0, 1).contiguous()
    if "panoptic" in tasks:
        scores, labels = class_logits.softmax(-1).max(-1)  # (Q,)
        kept = torch.nonzero((labels != num_labels) & (scores > settings["panoptic"]["threshold"]))[:, 0]  # query order
        out["panoptic"] = (mask_logits[kept].sigmoid(), scores[kept], labels[kept])
    if "instance" in tasks:
        threshold, mask_threshold = settings["instance"]["threshold"], settings["instance"]["mask_threshold"]
        class_probs = class_logits.softmax(-1)[:, :-1].flatten()  # (Q*K,)
        top_scores, top_index = class_probs.topk(min(class_logits.shape[0], class_probs.numel()))
        width = int((top_scores >= threshold).sum())
        query, label = top_index[:width] // num_labels, top_index[:width] % num_labels
        cut = math.log(mask_threshold / (1 - mask_threshold)) if 0 < mask_threshold < 1 else (
            -math.inf if mask_threshold <= 0 else math.inf)
        logits = mask_logits[query]
        binary = (logits > cut).float()
        probs = logits.sigmoid()
        score = top_scores[:width] * (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        order = score.argsort(descending=True, stable=True)[: int((score >= threshold).sum())]
        out["instance"] = (probs[order], score[order], label[order])
    return out


# ---------------------------------------------------------------------------------------------
# Tiles: every target pixel covered by one set of windows, decided once they have all run
# ---------------------------------------------------------------------------------------------
class _Stream:
    """The running state of one image: its outputs, and the candidates met so far."""

    def __init__(self, target: tuple[int, int], tasks: Sequence[str], device: torch.device) -> None:
        self.tasks = tasks
        self.semantic = torch.zeros(target, dtype=torch.int64, device=device) if "semantic" in tasks else None
        self.winner = {t: torch.full(target, -1, dtype=torch.int32, device=device)
                       for t in tasks if t != "semantic"}
        self.candidates: dict[str, list[tuple[Tensor, Tensor]]] = {t: [] for t in self.winner}  # (weights, labels)
        self.count = {t: 0 for t in self.winner}
        self.areas: dict[str, list[Tensor]] = {t: [] for t in self.winner}
        self.own: dict[str, list[Tensor]] = {t: [] for t in self.winner}

    def add_window(self, results: dict[str, Any]) -> dict[str, Any]:
        """Register a window's candidates; returns its results with their global ids added."""
        for task in self.winner:
            probs, weights, labels = results[task]
            k = probs.shape[0]
            ids = torch.arange(self.count[task], self.count[task] + k, device=probs.device)
            self.count[task] += k
            self.candidates[task].append((weights, labels))
            self.areas[task].append(torch.zeros(k, dtype=torch.int64, device=probs.device))
            self.own[task].append(torch.zeros(k, dtype=torch.int64, device=probs.device))
            results[task] = (probs, weights, ids, len(self.areas[task]) - 1)
        return results

    def decide(self, windows: list[tuple[dict[str, Any], Resampling]], rows: tuple[int, int], cols: tuple[int, int],
               settings: dict[str, Any]) -> None:
        """Decide the tile `rows x cols` (target index ranges) from its covering windows' results,
        each with its sampling plan of the tile, in window order."""
        (r0, r1), (c0, c1) = rows, cols
        if self.semantic is not None:
            total = None
            for results, plan in windows:  # every pixel of a tile has the same windows: the sum's argmax is the mean's
                v = resample_dense(results["semantic"], plan)  # (K, R, C)
                total = v if total is None else total.add_(v)
            self.semantic[r0:r1, c0:c1] = total.argmax(0)
        for task in self.winner:
            strict, threshold = task == "instance", settings[task]["mask_threshold"]
            best = torch.full((r1 - r0, c1 - c0), -math.inf, device=self.winner[task].device)
            winner = torch.full_like(best, -1, dtype=torch.int64)
            for results, plan in windows:
                probs, weights, ids, slot = results[task]
                if probs.shape[0] == 0:
                    continue
                v = resample_dense(probs, plan)  # (k, R, C)
                on = v > threshold if strict else v >= threshold
                self.own[task][slot] += on.flatten(1).sum(1)
                score = v * weights[:, None, None]
                if strict:  # instance: a candidate competes only inside its mask
                    score = torch.where(on, score, torch.full_like(score, -1.0))
                top, pick = score.max(0)
                better = top > best  # strict: an earlier window keeps a tie
                best, winner = torch.where(better, top, best), torch.where(better, ids[pick], winner)
            winner = winner.masked_fill(best < 0, -1)
            self.winner[task][r0:r1, c0:c1] = winner.int()
            won = torch.bincount(winner.flatten() + 1, minlength=self.count[task] + 1)[1:]
            for results, _ in windows:
                _, _, ids, index = results[task]
                if len(ids):
                    self.areas[task][index] += won[ids]

    def finish(self, task: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The overlap-area rule, then stuff fusion (panoptic) or ranking by score (instance)."""
        winner = self.winner[task]
        if self.count[task] == 0:
            return {"segmentation": winner.fill_(0 if task == "panoptic" else -1), "segments_info": []}
        areas, own = torch.cat(self.areas[task]), torch.cat(self.own[task])
        weights = torch.cat([w for w, _ in self.candidates[task]]).tolist()
        labels = torch.cat([c for _, c in self.candidates[task]]).tolist()
        keep = (own > 0) & (areas / own.clamp(min=1) >= settings[task]["overlap_mask_area_threshold"])
        if task == "panoptic":
            keep &= areas > 0
        lut = [0 if task == "panoptic" else -1] * self.count[task]  # candidate -> segment id
        segments: list[dict[str, Any]] = []
        if task == "panoptic":
            stuff: dict[int, dict[str, Any]] = {}
            fuse = settings[task]["label_ids_to_fuse"]
            for k in torch.nonzero(keep)[:, 0].tolist():
                label, score = labels[k], round(weights[k], 6)
                if label in stuff:
                    stuff[label]["score"] = max(stuff[label]["score"], score)
                    lut[k] = stuff[label]["id"]
                    continue
                segment = {"id": len(segments) + 1, "label_id": label, "was_fused": label in fuse,
                           "score": score}
                segments.append(segment)
                lut[k] = segment["id"]
                if label in fuse:
                    stuff[label] = segment
        else:
            alive = torch.nonzero(keep)[:, 0]
            order = alive[torch.tensor([weights[k] for k in alive.tolist()]).argsort(descending=True, stable=True)]
            for rank, k in enumerate(order.tolist()):
                lut[k] = rank
                segments.append({"id": rank, "label_id": labels[k], "was_fused": False, "score": round(weights[k], 6)})
        fill = 0 if task == "panoptic" else -1  # void / background
        table = torch.tensor([fill, *lut], dtype=torch.int32, device=winner.device)  # winner -1 -> fill
        step = max(1, TILE_VALUES // max(1, winner.shape[1]))
        for r in range(0, winner.shape[0], step):  # in place, a band at a time: no (H, W) int64 copy
            winner[r:r + step] = table[(winner[r:r + step] + 1).long()]
        return {"segmentation": winner, "segments_info": segments}


# ---------------------------------------------------------------------------------------------
# The window pass
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sliding_window_inference(model: Any, pixel_values: Tensor, pixel_mask: Tensor | None = None, *,
                             crop: int | Sequence[int], stride: int | Sequence[int],
                             task: str | Sequence[str] = "semantic",
                             target_sizes: Sequence[Sequence[int]] | Tensor | None = None,
                             threshold: float | Mapping[str, float] = 0.5, mask_threshold: float = 0.5,
                             overlap_mask_area_threshold: float | Mapping[str, float] = 0.8,
                             label_ids_to_fuse: Iterable[int] | None = None, batch_size: int = 4,
                             size_divisor: int = 32) -> list[Any] | dict[str, list[Any]]:
    """Semantic / panoptic / instance results of `model` run on overlapping windows (module docstring).

    Args:
        model: returns ``class_queries_logits`` `(b, Q, K + 1)` and ``masks_queries_logits``
            `(b, Q, h, w)` for ``model(pixel_values=..., pixel_mask=...)``.
        pixel_values: `(B, 3, H, W)` processed images (padded bottom/right); pixel_mask: `(B, H, W)` or None.
        crop, stride: window size and step, an int or `(height, width)`; ``1 <= stride <= crop``.
        task: one of ``"semantic"``, ``"panoptic"``, ``"instance"``, or several (one window pass).
        target_sizes: per image `(height, width)` of the results; None: its valid size in `pixel_values`.
        threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse: as the
            processor's ``post_process_*``; `threshold` and `overlap_mask_area_threshold` may also map
            ``"panoptic"`` / ``"instance"`` to their own values (several tasks from one window pass).
        batch_size: windows per forward pass; size_divisor: an image smaller than the crop is padded
            to a multiple of it (as the processor pads).
    Returns:
        per image what the processor's ``post_process_*`` returns (semantic `(height, width)` int64
        maps; ``{"segmentation", "segments_info"}`` dicts); for several tasks, a dict task -> list.
    """
    tasks = (task,) if isinstance(task, str) else tuple(task)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"task: expected one or more of {TASKS}, got {task!r}")
    (crop_h, crop_w), (stride_h, stride_w) = check_slide(crop, stride)
    if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values: expected (batch, 3, height, width), got "
                         f"{tuple(getattr(pixel_values, 'shape', ()))}")
    batch, device = pixel_values.shape[0], pixel_values.device
    if pixel_mask is not None and tuple(pixel_mask.shape) != (batch, *pixel_values.shape[2:]):
        raise ValueError(f"pixel_mask: expected {(batch, *pixel_values.shape[2:])}, got {tuple(pixel_mask.shape)}")
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"target_sizes: expected one (height, width) per image ({batch}), got {len(target_sizes)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    fuse = {int(c) for c in (label_ids_to_fuse or ())}
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if isinstance(num_labels, int) and any(not 0 <= c < num_labels for c in fuse):
        raise ValueError(f"label_ids_to_fuse: expected class ids in [0, {num_labels}), got {sorted(fuse)}")
    def per_task(value: Any, name: str) -> dict[str, Any]:
        values = dict(value) if isinstance(value, Mapping) else {t: value for t in TASKS}
        if set(values) - set(TASKS):
            raise ValueError(f"{name}: expected a number or a mapping of {TASKS} to numbers, got {value!r}")
        return values

    thresholds, overlaps = per_task(threshold, "threshold"), per_task(overlap_mask_area_threshold,
                                                                      "overlap_mask_area_threshold")
    settings: dict[str, dict[str, Any]] = {}  # task -> the keywords of its whole-image post-processing
    for t in ("panoptic", "instance"):
        settings[t] = {"threshold": thresholds.get(t, 0.5), "mask_threshold": mask_threshold,
                       "overlap_mask_area_threshold": overlaps.get(t, 0.8)}
        _check_thresholds(settings[t]["threshold"], mask_threshold, settings[t]["overlap_mask_area_threshold"])
    settings["panoptic"]["label_ids_to_fuse"] = fuse
    results: dict[str, list[Any]] = {t: [] for t in tasks}
    for i in range(batch):
        if pixel_mask is None:
            valid = tuple(pixel_values.shape[2:])
        else:
            valid = int(pixel_mask[i].any(1).sum()), int(pixel_mask[i].any(0).sum())
            if min(valid) == 0:
                raise ValueError(f"pixel_mask[{i}]: the image has no valid pixel (all zeros)")
        target = valid if target_sizes is None else _target_size(target_sizes[i], i)
        if len(target) != 2 or min(target) < 1:
            raise ValueError(f"target_sizes[{i}]: expected (height, width) >= 1, got {target_sizes[i]}")
        rows = _Axis.of(valid[0], target[0], crop_h, stride_h, size_divisor, device)
        cols = _Axis.of(valid[1], target[1], crop_w, stride_w, size_divisor, device)
        image = _slide_one(model, pixel_values[i], rows, cols, tasks, settings, batch_size)
        for t in tasks:
            results[t].append(image[t])
    return results[tasks[0]] if isinstance(task, str) else results


def _windows(pixel_values: Tensor, rows: _Axis, cols: _Axis, r: int) -> tuple[Tensor, Tensor]:
    """Window row `r` of one image: `(C, 3, rows.size, cols.size)` inputs and their padding masks."""
    y, vh = rows.starts[r], rows.valid[r]
    values = pixel_values.new_zeros((len(cols.starts), 3, rows.size, cols.size))
    mask = torch.zeros((len(cols.starts), rows.size, cols.size), dtype=torch.int64, device=pixel_values.device)
    for c, (x, vw) in enumerate(zip(cols.starts, cols.valid)):
        values[c, :, :vh, :vw] = pixel_values[:, y:y + vh, x:x + vw]
        mask[c, :vh, :vw] = 1
    return values, mask


def _run(model: Any, values: Tensor, mask: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    outputs = []
    for s in range(0, values.shape[0], batch_size):
        out = model(pixel_values=values[s:s + batch_size], pixel_mask=mask[s:s + batch_size])
        outputs += list(zip(out.class_queries_logits, out.masks_queries_logits))
    return outputs


def _one_window(rows: _Axis, cols: _Axis) -> bool:
    return len(rows.starts) == 1 and len(cols.starts) == 1


def _slide_one(model: Any, pixel_values: Tensor, rows: _Axis, cols: _Axis, tasks: Sequence[str],
               settings: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """All tasks' results of one image `(3, H, W)`, streamed window row by window row."""
    target = (rows.target, cols.target)
    if _one_window(rows, cols):  # the whole-image rules, unchanged
        values, mask = _windows(pixel_values, rows, cols, 0)
        (class_logits, mask_logits), = _run(model, values, mask, 1)
        args = (class_logits[None], mask_logits[None], mask, [target])
        with torch.autocast(pixel_values.device.type, enabled=False):
            out: dict[str, Any] = {}
            if "semantic" in tasks:
                out["semantic"] = semantic_inference(*args)[0]
            if "panoptic" in tasks:
                out["panoptic"] = panoptic_inference(*args, **settings["panoptic"])[0]
            if "instance" in tasks:
                out["instance"] = instance_inference(*args, **settings["instance"])[0]
        return out
    stream = _Stream(target, tasks, pixel_values.device)
    done: dict[tuple[int, int], dict[str, Any]] = {}  # (window row, column) -> its results
    mask_sizes: dict[tuple[int, int], tuple[int, int]] = {}
    row_end = 0  # target rows before it are decided
    for r in range(len(rows.starts)):
        values, mask = _windows(pixel_values, rows, cols, r)
        outputs = _run(model, values, mask, batch_size)
        del values, mask
        with torch.autocast(pixel_values.device.type, enabled=False):
            for c, (class_logits, mask_logits) in enumerate(outputs):
                h, w = mask_logits.shape[-2:]
                crop = (min(h, math.ceil(rows.valid[r] * h / rows.size - 1e-6)),
                        min(w, math.ceil(cols.valid[c] * w / cols.size - 1e-6)))
                done[r, c] = stream.add_window(_window_results(class_logits, mask_logits, crop, tasks, settings))
                mask_sizes[r, c] = (h, w)
            del outputs
            stop = int((rows.last <= r).sum())  # target rows whose last window row is r (or earlier)
            for r0, r1 in rows.runs(row_end, stop):
                for c0, c1 in cols.runs(0, cols.target):
                    _decide(stream, done, mask_sizes, rows, cols, (r0, r1), (c0, c1), settings)
            row_end = stop
            needed = int(rows.first[row_end]) if row_end < rows.target else len(rows.starts)
            for key in [k for k in done if k[0] < needed]:
                del done[key]
    out = {"semantic": stream.semantic} if stream.semantic is not None else {}
    for task in stream.winner:
        out[task] = stream.finish(task, settings)
    return out


def _decide(stream: _Stream, done: dict, mask_sizes: dict, rows: _Axis, cols: _Axis, row_range: tuple[int, int],
            col_range: tuple[int, int], settings: dict[str, Any]) -> None:
    """One tile, in chunks of rows that keep each window's sampled values under ``TILE_VALUES``."""
    (r0, r1), (c0, c1) = row_range, col_range
    window_rows = range(int(rows.first[r0]), int(rows.last[r0]) + 1)
    window_cols = range(int(cols.first[c0]), int(cols.last[c0]) + 1)
    keys = [(a, b) for a in window_rows for b in window_cols]
    channels = max([1] + [v.shape[0] if not isinstance(v, tuple) else v[0].shape[0]
                          for k in keys for v in done[k].values()])
    step = max(1, TILE_VALUES // (channels * (c1 - c0)))
    for a0 in range(r0, r1, step):
        a1 = min(r1, a0 + step)
        windows = []
        for a, b in keys:
            h, w = mask_sizes[a, b]
            plan = _plan(rows.sampling(a, h, a0, a1), cols.sampling(b, w, c0, c1))
            windows.append((done[a, b], plan))
        stream.decide(windows, (a0, a1), (c0, c1), settings)


__all__ = ["check_slide", "sliding_window_inference", "window_starts"]
