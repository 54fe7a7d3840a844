"""The set loss of MaskFormer (SPEC §3): cross-entropy over all queries + focal and dice on matches.

``L = sum_j [ -log p_sigma(j)(c_j) + 1[c_j != no-object] (20 focal + 1 dice)(m_sigma(j), m_j) ]``,
on the final decoder layer and, with deep supervision, on every earlier one (each layer matched on
its own). Mask terms compare predictions bilinearly upsampled to the label resolution and are
divided by ``num_masks``, the number of ground-truth segments (pass the global count, summed over
processes and divided by the world size, when training on several).

The mask terms on binary targets run through :class:`BinaryMaskLoss`, a fused autograd function
that walks the matched masks a few at a time, computes loss and gradient together and keeps only
the low-resolution gradient: the same numbers as the plain functions below, without the
full-resolution activations autograd would otherwise hold for backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matching import (Indices, check_num_segments, fixed_match, hungarian_match, point_sample,
                       point_sample_shared)
from .ops import linear, maybe_compiled


# --- plain reference functions (any targets, autograd) -------------------------------------------
def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-mask sigmoid focal loss averaged over pixels: `(M, P)`, `(M, P)` -> `(M,)`."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t).pow(gamma)).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-mask dice loss with +1 smoothing: `(M, P)`, `(M, P)` -> `(M,)`."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


# --- the fused path for binary targets --------------------------------------------------------------
def linear_upsampling_matrix(size: int, out_size: int, like: Tensor) -> Tensor:
    """The `(out_size, size)` matrix of 1-D linear interpolation (align_corners=False, borders
    clamped), i.e. what ``F.interpolate(..., mode="bilinear")`` does along one axis."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)[None]  # (1, size, size)
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].T  # (out_size, size)


def upsample_bilinear_adjoint(grad: Tensor, size: tuple[int, int]) -> Tensor:
    """Gradient w.r.t. the input of ``F.interpolate(x, size=grad.shape[-2:], mode="bilinear",
    align_corners=False)`` for x of spatial `size`: `(M, H, W)` -> `(M, h, w)`.

    Bilinear upsampling is separable, ``up(x) = A_h x A_w^T``, so its adjoint is ``A_h^T g A_w``: two
    matrix products, several times faster than ATen's CPU kernel for this backward.
    """
    (height, width), (h, w) = grad.shape[-2:], size
    rows = linear_upsampling_matrix(h, height, grad)  # (H, h)
    cols = linear_upsampling_matrix(w, width, grad)  # (W, w)
    narrow = linear(grad, cols.T)  # grad @ cols: (M, H, w); both products through oneDNN on x86 CPUs
    return linear(narrow.transpose(-1, -2), rows.T).transpose(-1, -2)  # rows^T @ narrow: (M, h, w)


def fused_binary_mask_terms(logits: Tensor, targets: Tensor, target_index: Tensor, alpha: float, gamma: float,
                            focal_weight: Tensor, dice_weight: Tensor, chunk: int = 4,
                            need_grad: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-mask focal (mean over pixels) and dice of upsampled logits against binary targets, and the
    low-resolution gradient of ``sum_i focal_weight[i] focal[i] + dice_weight[i] dice[i]``.

    Args:
        logits: `(M, h, w)` mask logits; mask i is upsampled bilinearly (align_corners=False) to `(H, W)`
            and compared with ``targets[target_index[i]]``.
        targets: `(T, H, W)` binary masks.
        target_index: `(M,)` int64.
        focal_weight, dice_weight: `(M,)` weights of the gradient (not of the returned losses).
        chunk: masks per step; the masks of one target are processed together, sharing its maps.

    Returns:
        ``(focal (M,), dice (M,), grad (M, h, w) or None)``, all float32.

    With sign ``n = 1 - 2t`` (+1 where t = 0), ``u = n x`` and ``q = sigmoid(u) = 1 - p_t``:
    focal = alpha_t q^gamma softplus(u), d focal / dx = n alpha_t q^gamma (gamma (1 - q) softplus(u) + q);
    dice = 1 - N / D with N = 2 sum(p t) + 1, D = sum(p) + sum(t) + 1, d dice / dx = (N / D^2 - 2t / D) q (1 - q).
    ``softplus(u) = max(u, 0) - log(max(q, 1 - q))``: one fast ``log`` on [1/2, 1] (absolute error below
    1e-7) instead of ATen's unvectorised ``log1p``. The pixel work (:func:`binary_mask_chunk_terms`) is
    compiled by TorchInductor into two fused loops per chunk (sums, then gradient), about 3x faster
    than the same steps in eager PyTorch on a CPU; the upsampling and its adjoint stay matrix products.
    """
    num_masks, height, width = logits.shape[0], targets.shape[-2], targets.shape[-1]
    num_pixels = height * width
    focal = logits.new_empty(num_masks, dtype=torch.float32)
    dice = logits.new_empty(num_masks, dtype=torch.float32)
    grad = logits.new_empty(num_masks, *logits.shape[-2:], dtype=torch.float32) if need_grad else None
    with torch.autocast(logits.device.type, enabled=False):  # fp32 throughout, also under autocast
        for target, rows in rows_by_target(target_index):
            t = (targets[target] > 0.5).float()  # (H, W)
            sum_t = t.sum()
            for part in rows.split(chunk):
                upsampled = F.interpolate(logits[part, None].float(), size=(height, width), mode="bilinear",
                                          align_corners=False)[:, 0]
                focal_sum, dice[part], full = binary_mask_chunk_terms(
                    upsampled, t, sum_t, alpha, gamma, focal_weight[part] / num_pixels, dice_weight[part], need_grad)
                focal[part] = focal_sum / num_pixels
                if need_grad:
                    grad[part] = upsample_bilinear_adjoint(full, logits.shape[-2:])
    return focal, dice, grad


def rows_by_target(target_index: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(target, rows)`` for every target that `(M,)` ``target_index`` names: the masks compared with it."""
    for target in target_index.unique().tolist():
        yield target, (target_index == target).nonzero()[:, 0]


@maybe_compiled
def binary_mask_chunk_terms(upsampled: Tensor, target: Tensor, sum_t: Tensor, alpha: float, gamma: float,
                            focal_scale: Tensor, dice_weight: Tensor, need_grad: bool):
    """The pixel work of :func:`fused_binary_mask_terms` for masks sharing one target (compiled).

    Args:
        upsampled: `(m, H, W)` float32 upsampled logits x.
        target: `(H, W)` float32 binary target t; sum_t: its sum (0-d).
        focal_scale, dice_weight: `(m,)` gradient weights (the focal one divided by H * W).

    Returns:
        ``(focal_sum (m,), dice (m,), grad (m, H, W) or None)``, the focal loss summed (not averaged)
        over pixels and the full-resolution gradient of ``focal_scale * focal_sum + dice_weight * dice``.
    """
    neg_sign = 1 - 2 * target  # n
    u = upsampled * neg_sign
    q = torch.sigmoid(u)
    one_minus_q = 1 - q
    softplus = torch.clamp(u, min=0) - torch.log(torch.maximum(q, one_minus_q))
    alpha_t = neg_sign * (0.5 - alpha) + 0.5  # alpha where t = 1, 1 - alpha where t = 0
    weighted = (q * q if gamma == 2 else q.pow(gamma)) * alpha_t  # alpha_t q^gamma
    focal_sum = (weighted * softplus).sum((1, 2))
    sum_q = q.sum((1, 2))
    sum_tq = (q * target).sum((1, 2))  # sum over t = 1 of (1 - p)
    numerator = 2 * (sum_t - sum_tq) + 1
    denominator = sum_q - 2 * sum_tq + 2 * sum_t + 1
    dice = 1 - numerator / denominator
    if not need_grad:
        return focal_sum, dice, None
    # focal: n alpha_t q^gamma (gamma (1 - q) softplus + q); dice: q (1 - q) (A + B t), A = N / D^2, B = -2 / D
    coef_a = (dice_weight * numerator / denominator**2)[:, None, None]
    coef_b = (-2 * dice_weight / denominator)[:, None, None]
    grad = ((q + gamma * one_minus_q * softplus) * weighted * neg_sign * focal_scale[:, None, None]
            + q * one_minus_q * (coef_a + coef_b * target))
    return focal_sum, dice, grad


class BinaryMaskLoss(torch.autograd.Function):
    """Per-mask focal (mean over pixels) and dice of upsampled logits against binary targets
    (:func:`fused_binary_mask_terms`), with a gradient that never holds full-resolution activations.

    ``forward(logits (M, h, w), targets (T, H, W), target_index (M,), alpha, gamma, chunk, weights)``
    returns ``(focal (M,), dice (M,))``. ``weights = (w_focal, w_dice)`` announces how the two will be
    combined (MaskFormer: 20 and 1): forward then computes the gradient of that combination alongside
    the loss and keeps only its low-resolution adjoint. Backward uses it whenever the incoming
    gradients are in that ratio (per mask); any other combination (e.g. only one term used) is
    recomputed exactly.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, target_index: Tensor, alpha: float, gamma: float,
                chunk: int, weights: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
        weights = (1.0, 1.0) if weights is None else (float(weights[0]), float(weights[1]))
        need_grad = ctx.needs_input_grad[0]
        ones = torch.ones(logits.shape[0], device=logits.device)
        focal, dice, grad = fused_binary_mask_terms(logits, targets, target_index, alpha, gamma, weights[0] * ones,
                                                    weights[1] * ones, chunk, need_grad)
        ctx.save_for_backward(logits, targets, target_index, grad)
        ctx.options = (alpha, gamma, chunk, weights)
        return focal, dice

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor):
        logits, targets, target_index, grad = ctx.saved_tensors
        alpha, gamma, chunk, (w_focal, w_dice) = ctx.options
        scale = grad_focal / w_focal if w_focal != 0 else grad_dice / w_dice
        if (grad is not None and torch.allclose(scale * w_focal, grad_focal, rtol=1e-6, atol=0)
                and torch.allclose(scale * w_dice, grad_dice, rtol=1e-6, atol=0)):
            result = grad * scale[:, None, None]
        else:  # another combination of the two terms: recompute its gradient exactly
            result = fused_binary_mask_terms(logits, targets, target_index, alpha, gamma, grad_focal.float(),
                                             grad_dice.float(), chunk)[2]
        return result.to(logits.dtype), None, None, None, None, None, None


def _is_binary(masks: Tensor) -> bool:
    return masks.dtype == torch.bool or bool(((masks == 0) | (masks == 1)).all())


def pad_masks(masks: list[Tensor]) -> Tensor:
    """Stack per-image `(N_b, H_b, W_b)` masks into `(sum N_b, H, W)`, zero-padded bottom/right."""
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    return torch.cat([F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks])


def uncertain_points(logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Points for the loss in point mode: the most uncertain (|logit| smallest) of an oversampled
    random set, plus uniform random ones. `(M, h, w)` -> `(M, num_points, 2)` in [0, 1]."""
    num_masks = logits.shape[0]
    candidates = torch.rand(num_masks, int(num_points * oversample_ratio), 2, generator=generator,
                            device=logits.device)
    uncertainty = -point_sample(logits[:, None].detach().float(), candidates).abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices  # the set matters, not its order
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    rest = torch.rand(num_masks, num_points - num_uncertain, 2, generator=generator, device=logits.device)
    return torch.cat([chosen, rest], dim=1)


def sample_targets(targets: Tensor, target_index: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of ``targets[target_index[i]]`` at mask i's points, without gathering full maps.

    Args:
        targets: `(T, H, W)`; target_index: `(M,)`; coords: `(M, P, 2)` in [0, 1]^2 (x, y).

    Returns:
        `(M, P)` float32; the masks of one target are sampled together from its single map.
    """
    samples = coords.new_empty(coords.shape[:2], dtype=torch.float32)
    for target, rows in rows_by_target(target_index):
        points = coords[rows].reshape(-1, 2)  # every point of these masks, on one map
        samples[rows] = point_sample_shared(targets[target][None].float(), points).view(rows.numel(), -1)
    return samples


class MaskFormerLoss(nn.Module):
    """Matching + set loss over the supervised decoder layers.

    Args:
        num_labels: K, the number of real classes (logits have K + 1).
        no_object_weight, cross_entropy_weight, mask_weight, dice_weight: SPEC §3 (0.1, 1, 20, 1);
            the matching costs use the same weights (class cost 1).
        focal_alpha, focal_gamma: 0.25, 2.
        fixed_matching: query c predicts class c (the paper's ablation, N = K).
        num_points: 0 for full masks; else the memory-saving point mode with this many points per
            mask (uniform for matching, importance-sampled for the loss).
        oversample_ratio, importance_sample_ratio: of the importance sampling (3, 0.75).
        chunk: masks per step of the fused mask loss.
        semantic_weight: weight of an extra per-pixel term (not in the paper; 0 disables it): the
            cross-entropy of the semantic inference scores ``S_c = sum_q p_q(c) m_q``, normalised over
            classes, bilinearly upsampled to the label resolution as the mask terms are
            (:func:`semantic_inference_loss`).
    """

    def __init__(self, num_labels: int, no_object_weight: float = 0.1, cross_entropy_weight: float = 1.0,
                 mask_weight: float = 20.0, dice_weight: float = 1.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, fixed_matching: bool = False, num_points: int = 0,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, chunk: int = 4,
                 semantic_weight: float = 0.0) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.no_object_weight = no_object_weight
        self.weights = {"loss_cross_entropy": cross_entropy_weight, "loss_mask": mask_weight,
                        "loss_dice": dice_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.fixed_matching = fixed_matching
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.chunk = chunk
        self.semantic_weight = semantic_weight

    def match(self, class_logits: Tensor, mask_logits: Tensor, mask_labels: list[Tensor],
              class_labels: list[Tensor]) -> list[list[Indices]]:
        """``matches[layer][image] = (query_indices, segment_indices)``; see :mod:`maskformer_hf.matching`."""
        if self.fixed_matching:
            return fixed_match(class_labels, class_logits.shape[2], class_logits.shape[0])
        return hungarian_match(class_logits, mask_logits, mask_labels, class_labels, cost_class=1.0,
                               cost_mask=self.weights["loss_mask"], cost_dice=self.weights["loss_dice"],
                               alpha=self.focal_alpha, gamma=self.focal_gamma, num_points=self.num_points)

    def forward(self, class_logits: Tensor, mask_logits: Tensor, mask_labels: list[Tensor],
                class_labels: list[Tensor], num_masks: float | Tensor | None = None,
                mask_logits_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of L supervised layers; the last one is the model's output.

        Args:
            class_logits: `(L, B, Q, K+1)`.
            mask_logits: `(L, B, Q, h, w)`.
            mask_labels: per image `(N_b, H, W)` binary masks at label resolution.
            class_labels: per image `(N_b,)` int64 in [0, K).
            num_masks: the normaliser of the mask terms; default: the segments of this batch.
            mask_logits_fn: optional ``fn(layer_index, image_index, query_index) -> (M, h, w)`` giving
                the matched masks' logits with their gradient (cheaper than back-propagating through
                all of ``mask_logits``, see :func:`maskformer_hf.pixel_decoder.matched_mask_logits`);
                ``mask_logits`` is then used for matching only.

        Returns:
            The total loss and the weighted terms: ``loss_cross_entropy``, ``loss_mask``,
            ``loss_dice`` for the last layer, the same with ``_{l}`` for earlier layer l.
        """
        num_layers, batch_size, num_queries = class_logits.shape[:3]
        _check_labels(mask_labels, class_labels, batch_size, self.num_labels)
        check_num_segments(class_labels, num_queries)
        class_labels = [c.to(class_logits.device, torch.int64) for c in class_labels]
        mask_labels = [m.to(mask_logits.device) for m in mask_labels]
        matches = self.match(class_logits, mask_logits, mask_labels, class_labels)
        if num_masks is None:
            num_masks = float(sum(c.numel() for c in class_labels))
        num_masks = torch.as_tensor(num_masks, dtype=torch.float32, device=mask_logits.device).clamp(min=1)

        class_weight = torch.ones(self.num_labels + 1, device=class_logits.device)
        class_weight[-1] = self.no_object_weight
        terms: dict[str, Tensor] = {}
        focal, dice = self._mask_terms(mask_logits, mask_labels, matches, mask_logits_fn)  # (L,), (L,)
        for layer in range(num_layers):
            target = torch.full((batch_size, num_queries), self.num_labels, dtype=torch.int64,
                                device=class_logits.device)
            for b, (queries, segments) in enumerate(matches[layer]):
                target[b, queries.to(target.device)] = class_labels[b][segments.to(target.device)]
            ce = F.cross_entropy(class_logits[layer].float().transpose(1, 2), target, weight=class_weight)
            suffix = "" if layer == num_layers - 1 else f"_{layer}"
            terms[f"loss_cross_entropy{suffix}"] = ce * self.weights["loss_cross_entropy"]
            terms[f"loss_mask{suffix}"] = focal[layer] / num_masks * self.weights["loss_mask"]
            terms[f"loss_dice{suffix}"] = dice[layer] / num_masks * self.weights["loss_dice"]
            if self.semantic_weight:
                if layer == 0:
                    pixel_target = semantic_targets(mask_labels, class_labels)
                terms[f"loss_semantic{suffix}"] = self.semantic_weight * semantic_inference_loss(
                    class_logits[layer], mask_logits[layer], pixel_target)
        return sum(terms.values()), terms

    def _mask_terms(self, mask_logits: Tensor, mask_labels: list[Tensor], matches: list[list[Indices]],
                    mask_logits_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None) -> tuple[Tensor, Tensor]:
        """Summed focal and dice of the matched masks, per layer: `(L,)` each."""
        num_layers = mask_logits.shape[0]
        targets = pad_masks(mask_labels)  # (sum N_b, H, W)
        offsets = torch.tensor([0] + [m.shape[0] for m in mask_labels]).cumsum(0)
        layer_of, image_of, query_of, target_of = [], [], [], []
        for layer in range(num_layers):
            for b, (queries, segments) in enumerate(matches[layer]):
                layer_of.append(torch.full_like(queries, layer))
                image_of.append(torch.full_like(queries, b))
                query_of.append(queries)
                target_of.append(segments + offsets[b])
        device = mask_logits.device
        layer_index = torch.cat(layer_of).to(device)
        image_index, query_index = torch.cat(image_of).to(device), torch.cat(query_of).to(device)
        if mask_logits_fn is not None:
            preds_t = mask_logits_fn(layer_index, image_index, query_index)
        else:  # one gather (one gradient scatter in backward) for every matched mask of every layer
            preds_t = mask_logits[layer_index, image_index, query_index]
        target_index_t = torch.cat(target_of).to(targets.device)
        if preds_t.shape[0] == 0:
            zero = mask_logits.sum() * 0.0  # keeps the graph connected
            return zero.expand(num_layers), zero.expand(num_layers)
        if self.num_points:
            coords = uncertain_points(preds_t, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            point_logits = point_sample(preds_t[:, None].float(), coords)
            point_targets = sample_targets(targets, target_index_t, coords)
            focal = sigmoid_focal_loss(point_logits, point_targets, self.focal_alpha, self.focal_gamma)
            dice = dice_loss(point_logits, point_targets)
        elif _is_binary(targets):
            focal, dice = BinaryMaskLoss.apply(preds_t, targets, target_index_t, self.focal_alpha, self.focal_gamma,
                                               self.chunk, (self.weights["loss_mask"], self.weights["loss_dice"]))
        else:  # soft targets: the plain functions, through autograd
            upsampled = F.interpolate(preds_t[:, None].float(), size=targets.shape[-2:], mode="bilinear",
                                      align_corners=False).flatten(1)
            soft = targets[target_index_t].float().flatten(1)
            focal = sigmoid_focal_loss(upsampled, soft, self.focal_alpha, self.focal_gamma)
            dice = dice_loss(upsampled, soft)
        per_layer = lambda values: torch.zeros(num_layers, device=values.device).index_add(0, layer_index, values)  # noqa: E731
        return per_layer(focal), per_layer(dice)


def semantic_targets(mask_labels: list[Tensor], class_labels: list[Tensor], ignore_index: int = -100) -> Tensor:
    """Per-pixel class targets from per-segment masks: `(B, H, W)` int64, ``ignore_index`` where no
    mask covers the pixel (void, padding). Masks of one image must not overlap (where they do, the
    first segment wins); soft masks count where they exceed 0.5.

    Args:
        mask_labels: per image `(N_b, H, W)` masks, all of one size.
        class_labels: per image `(N_b,)` class ids.
    """
    targets = []
    for masks, labels in zip(mask_labels, class_labels):
        if masks.shape[0] == 0:
            targets.append(torch.full(masks.shape[1:], ignore_index, dtype=torch.int64, device=masks.device))
            continue
        covered = masks > 0.5  # (N, H, W)
        first = covered.to(torch.uint8).argmax(0)  # the first covering segment (0 where none)
        targets.append(torch.where(covered.any(0), labels.to(masks.device, torch.int64)[first], ignore_index))
    return torch.stack(targets)


def semantic_inference_loss(class_logits: Tensor, mask_logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of MaskFormer's semantic inference at every labelled pixel.

    ``S_c[h, w] = sum_q softmax(class_logits[q])[c] * sigmoid(mask_logits[q, h, w])`` over the K real
    classes, bilinearly upsampled to the target's resolution when it differs (the per-pixel
    baseline's logits and the mask terms' predictions are upsampled the same way); the mean of
    ``-log S_y / sum_c S_c`` over pixels whose target ``y`` is not -100 (0 when none is labelled).

    Args:
        class_logits: `(B, Q, K + 1)`.
        mask_logits: `(B, Q, h, w)`.
        target: `(B, H, W)` int64 class ids, -100 ignored.
    """
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    scores = torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.float().sigmoid())
    if scores.shape[-2:] != target.shape[-2:]:
        scores = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
    log_scores = torch.log(scores.clamp(min=1e-8)) - torch.log(scores.sum(1, keepdim=True).clamp(min=1e-8))
    labelled = (target >= 0).sum().clamp(min=1)
    return F.nll_loss(log_scores, target, ignore_index=-100, reduction="sum") / labelled


class PerPixelLoss(nn.Module):
    """The per-pixel baselines' loss (SPEC §6, Table 4): cross-entropy of K class logits at every
    labelled pixel, logits bilinearly upsampled to the label resolution, averaged over labelled
    pixels; one term per supervised layer (deep supervision for PerPixelBaseline+)."""

    def __init__(self, num_labels: int, cross_entropy_weight: float = 1.0) -> None:
        super().__init__()
        self.num_labels, self.weight = num_labels, cross_entropy_weight

    def forward(self, logits: Tensor, mask_labels: list[Tensor], class_labels: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``logits`` `(L, B, K, h, w)`; labels as :class:`MaskFormerLoss`. Returns the total and
        ``loss_cross_entropy`` (last layer) / ``loss_cross_entropy_{l}`` terms."""
        num_layers, batch_size, num_classes = logits.shape[:3]
        _check_labels(mask_labels, class_labels, batch_size, self.num_labels)
        if num_classes != self.num_labels:
            raise ValueError(f"logits: expected {self.num_labels} class maps, got {num_classes}")
        target = semantic_targets([m.to(logits.device) for m in mask_labels], class_labels)  # (B, H, W)
        labelled = (target >= 0).sum().clamp(min=1)
        terms = {}
        for layer in range(num_layers):
            upsampled = F.interpolate(logits[layer].float(), size=target.shape[-2:], mode="bilinear",
                                      align_corners=False)
            ce = F.cross_entropy(upsampled, target, ignore_index=-100, reduction="sum") / labelled
            terms["loss_cross_entropy" + ("" if layer == num_layers - 1 else f"_{layer}")] = ce * self.weight
        return sum(terms.values()), terms


def _check_labels(mask_labels, class_labels, batch_size: int, num_labels: int) -> None:
    if not isinstance(mask_labels, (list, tuple)) or not isinstance(class_labels, (list, tuple)):
        raise TypeError("mask_labels and class_labels: expected lists with one tensor per image, got "
                        f"{type(mask_labels).__name__} and {type(class_labels).__name__}")
    if len(mask_labels) != batch_size or len(class_labels) != batch_size:
        raise ValueError(f"mask_labels/class_labels: expected {batch_size} entries (one per image), "
                         f"got {len(mask_labels)} and {len(class_labels)}")
    for b, (masks, labels) in enumerate(zip(mask_labels, class_labels)):
        if not isinstance(masks, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"image {b}: expected mask_labels and class_labels entries to be tensors, got "
                            f"{type(masks).__name__} and {type(labels).__name__}")
        if masks.dim() != 3 or labels.dim() != 1 or masks.shape[0] != labels.shape[0]:
            raise ValueError(f"image {b}: expected mask_labels (N, H, W) and class_labels (N,), got "
                             f"{tuple(masks.shape)} and {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"class_labels[{b}]: expected integer class ids, got {labels.dtype}")
        if masks.device != labels.device:
            raise ValueError(f"image {b}: mask_labels on {masks.device}, class_labels on {labels.device}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
            raise ValueError(f"class_labels[{b}]: expected classes in [0, {num_labels}), got "
                             f"{labels.min().item()}..{labels.max().item()}")
