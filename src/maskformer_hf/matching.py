"""Matching predictions to ground-truth segments (SPEC §3): pairwise costs, Hungarian, fixed.

Costs are computed in fp32 (autocast is switched off: fp16/bf16 logits are cast up) at the
mask-prediction resolution, ground-truth masks nearest-downsampled to it; the Hungarian step is
``scipy.optimize.linear_sum_assignment`` on a float64 copy. Non-finite costs (logits of ±inf or NaN,
or so large that a sum overflows) never reach the solver, so every image gets a full assignment.
Every function takes tensors and numbers and returns tensors: no config, no global state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .ops import maybe_compiled

Indices = tuple[Tensor, Tensor]  # (query indices, segment indices), both (num_matched,) int64


def pairwise_class_cost(class_logits: Tensor, labels: Tensor) -> Tensor:
    """``-p_i(c_j)``: `(..., Q, K+1)` logits, `(N,)` labels -> `(..., Q, N)`."""
    return -class_logits.float().softmax(-1)[..., labels]


def pairwise_sigmoid_focal_cost(mask_logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss of every prediction against every target, averaged over pixels.

    Args:
        mask_logits: `(Q, P)` logits over P pixels (or points).
        targets: `(N, P)` binary (or soft) targets.

    Returns:
        `(Q, N)`; computed with two matmuls: the loss of a pixel is ``t * f_pos + (1 - t) * f_neg``.
    """
    logits = mask_logits.float()
    prob = logits.sigmoid()
    focal_pos = alpha * (1 - prob).pow(gamma) * F.softplus(-logits)  # loss if the target is 1
    focal_neg = (1 - alpha) * prob.pow(gamma) * F.softplus(logits)  # loss if the target is 0
    targets = targets.float()
    return (focal_pos @ targets.T + focal_neg @ (1 - targets).T) / logits.shape[-1]


def pairwise_dice_cost(mask_logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` for every pair: `(Q, P)`, `(N, P)` -> `(Q, N)`."""
    prob = mask_logits.float().sigmoid()
    targets = targets.float()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@maybe_compiled
def focal_terms(logits: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pixel pieces of the pairwise costs of `(m, P)` logits (compiled into one loop).

    Returns:
        ``(f_pos - f_neg (m, P), sum_P f_neg (m,), p (m, P), sum_P p (m,))`` with p = sigmoid(x),
        f_pos = alpha (1 - p)^gamma softplus(-x) (the focal loss if the target is 1) and
        f_neg = (1 - alpha) p^gamma softplus(x) (if it is 0). ``logsigmoid(x) = log(max(p, 1 - p)) +
        min(x, 0)`` costs one fast ``log`` on [1/2, 1] (ATen's logsigmoid and softplus use an
        unvectorised log1p, ~10x slower on a CPU).
    """
    logits = logits.float()
    p = torch.sigmoid(logits)
    log_p = torch.log(torch.maximum(p, 1 - p)) + torch.clamp(logits, max=0)  # logsigmoid(x) = -softplus(-x)
    softplus = logits - log_p
    f_neg = (1 - alpha) * (p * p if gamma == 2 else p.pow(gamma)) * softplus
    one_minus_p = 1 - p
    f_pos = -alpha * (one_minus_p * one_minus_p if gamma == 2 else one_minus_p.pow(gamma)) * log_p
    return f_pos - f_neg, f_neg.sum(-1), p, p.sum(-1)


def pairwise_mask_costs(mask_logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                        rows: int = 16) -> tuple[Tensor, Tensor]:
    """:func:`pairwise_sigmoid_focal_cost` and :func:`pairwise_dice_cost` together, fused.

    The pixel work (:func:`focal_terms`, compiled) runs ``rows`` predictions at a time so that it
    stays in cache; the sums over each target's pixels are two matrix products:
    ``sum_P t f_pos + (1 - t) f_neg = (f_pos - f_neg) . t + sum_P f_neg``. Same numbers as the two
    functions up to float rounding, many times faster on a CPU.

    Args:
        mask_logits: `(M, P)` logits over P pixels (or points).
        targets: `(N, P)` binary (or soft) targets.

    Returns:
        ``(focal, dice)``, each `(M, N)`.
    """
    targets = targets.float()  # the logits go to fp32 inside focal_terms, a chunk at a time
    num_preds, num_pixels = mask_logits.shape
    targets_t = targets.T.contiguous()  # (P, N)
    focal = targets.new_empty(num_preds, targets.shape[0])
    overlap = torch.empty_like(focal)
    neg_sum = targets.new_empty(num_preds)
    prob_sum = targets.new_empty(num_preds)
    step = max(1, rows)
    for start in range(0, num_preds, step):
        part = slice(start, start + step)
        difference, neg_sum[part], prob, prob_sum[part] = focal_terms(mask_logits[part], alpha, gamma)
        torch.mm(difference, targets_t, out=focal[part])
        torch.mm(prob, targets_t, out=overlap[part])
    focal.add_(neg_sum[:, None]).div_(num_pixels)
    dice = 1 - (2 * overlap + 1) / (prob_sum[:, None] + targets.sum(-1)[None, :] + 1)
    return focal, dice


MAX_COST = 1e150  # |finite costs| are clamped to this (fp32 costs never get near): the solver's sums stay finite


def solve_assignment(cost: Tensor) -> Indices:
    """Hungarian assignment of a `(Q, N)` cost, N <= Q: always a full one (N pairs).

    Non-finite costs never reach the solver (scipy would call the matrix infeasible): with ``B = 2 *
    max |finite cost| + 1``, NaN and +inf become ``B`` (the worst pair: taken only when nothing else
    is left) and -inf ``-B``."""
    cost = cost.detach().to("cpu", torch.float64).clamp(-MAX_COST, MAX_COST)  # clamp keeps NaN and maps ±inf
    finite = torch.isfinite(cost) & (cost.abs() < MAX_COST)
    if not finite.all():
        big = cost[finite].abs().max().item() * 2 + 1 if finite.any() else 1.0
        cost = torch.where(finite, cost, torch.where(cost < 0, -big, big))  # NaN < 0 is False: NaN -> +big
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def check_num_segments(class_labels: list[Tensor], num_queries: int) -> None:
    for index, labels in enumerate(class_labels):
        if labels.numel() > num_queries:
            raise ValueError(
                f"class_labels[{index}]: {labels.numel()} ground-truth segments but the model predicts only "
                f"{num_queries} (num_queries); raise num_queries or merge segments"
            )


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor,
    mask_logits: Tensor,
    mask_labels: list[Tensor],
    class_labels: list[Tensor],
    cost_class: float = 1.0,
    cost_mask: float = 20.0,
    cost_dice: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    num_points: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[Indices]]:
    """Match every decoder layer's predictions to the ground truth, image by image.

    Args:
        class_logits: `(L, B, Q, K+1)`, L supervised decoder layers.
        mask_logits: `(L, B, Q, h, w)`.
        mask_labels: per image `(N_b, H, W)` binary masks; nearest-downsampled to `(h, w)`.
        class_labels: per image `(N_b,)`.
        num_points: 0 to compare full masks; else compare at this many uniformly random points
            (the same points for predictions and targets, drawn per image).

    Returns:
        ``matches[l][b] = (query_indices, segment_indices)``.
    """
    num_layers, batch_size, num_queries = class_logits.shape[:3]
    check_num_segments(class_labels, num_queries)
    matches: list[list[Indices]] = [[None] * batch_size for _ in range(num_layers)]  # type: ignore[list-item]
    with torch.autocast(class_logits.device.type, enabled=False):  # fp32 costs, whatever the logits' dtype
        for b in range(batch_size):
            labels = class_labels[b]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                for layer in range(num_layers):
                    matches[layer][b] = (empty, empty)
                continue
            preds = mask_logits[:, b]  # (L, Q, h, w); each layer's (Q, h, w) is contiguous
            targets = mask_labels[b].float()
            if num_points:
                coords = torch.rand(num_points, 2, generator=generator, device=preds.device)
                # Per-map sampling is ~3x faster than one many-channel grid_sample for the L*Q predictions
                # (channel-strided reads); the few targets share one call.
                preds = point_sample(preds.flatten(0, 1)[:, None].float(),
                                     coords.expand(num_layers * num_queries, -1, -1)).view(num_layers, num_queries, -1)
                targets = point_sample_shared(targets, coords)
            else:
                targets = F.interpolate(targets[:, None], size=preds.shape[-2:], mode="nearest")[:, 0].flatten(1)
                preds = preds.flatten(2)  # (L, Q, h*w), a view
            class_cost = pairwise_class_cost(class_logits[:, b], labels.to(class_logits.device))  # (L, Q, N)
            for layer in range(num_layers):
                focal, dice = pairwise_mask_costs(preds[layer], targets, alpha, gamma)
                cost = cost_mask * focal + cost_dice * dice + cost_class * class_cost[layer]
                matches[layer][b] = solve_assignment(cost)
    return matches


def fixed_match(class_labels: list[Tensor], num_queries: int, num_layers: int) -> list[list[Indices]]:
    """Fixed matching of the paper's ablation (N = K): query ``c`` predicts the segment of class ``c``.

    Each image may hold at most one segment per class (semantic supervision).
    """
    per_image = []
    for index, labels in enumerate(class_labels):
        labels = labels.to("cpu", torch.int64)
        if labels.numel() and int(labels.max()) >= num_queries:
            raise ValueError(f"fixed matching: class {int(labels.max())} needs num_queries > it, got {num_queries}")
        if labels.unique().numel() != labels.numel():
            raise ValueError(f"fixed matching: class_labels[{index}] repeats a class; it needs one segment per class")
        per_image.append((labels, torch.arange(labels.numel(), dtype=torch.int64)))
    return [list(per_image) for _ in range(num_layers)]


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of `(M, 1, H, W)` maps at `(M, P, 2)` points in [0, 1]^2 (x, y) -> `(M, P)`."""
    grid = 2.0 * coords[:, :, None, :] - 1.0  # (M, P, 1, 2) in [-1, 1]
    return F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False)[:, 0, :, 0]


def point_sample_shared(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of `(C, H, W)` maps at the same `(P, 2)` points in [0, 1]^2 (x, y) -> `(C, P)`.

    The maps are the channels of one image, so the interpolation weights are computed once for all
    of them; the numbers equal :func:`point_sample` with the points repeated per map. Fast for a few
    large maps (targets); for hundreds of small ones :func:`point_sample` with repeated points is faster.
    """
    grid = (2.0 * coords - 1.0)[None, :, None, :]  # (1, P, 1, 2)
    return F.grid_sample(maps[None], grid.to(maps.dtype), mode="bilinear", align_corners=False)[0, :, :, 0]


__all__ = [
    "fixed_match",
    "hungarian_match",
    "pairwise_class_cost",
    "pairwise_dice_cost",
    "pairwise_mask_costs",
    "pairwise_sigmoid_focal_cost",
    "point_sample",
    "point_sample_shared",
    "solve_assignment",
]

