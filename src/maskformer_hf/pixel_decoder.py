"""Pixel decoder (SPEC §2.2): a light FPN from stride 32 to stride 4, then the mask projection.

Padding-aware: when the backbone reports each image's valid region (``masks``), GroupNorm
statistics are taken over valid positions only and padded positions are zeroed before every
convolution, so a padded image gives the same maps on its valid region as the image alone (a
convolution at an image border sees zeros either way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import is_plain


def masked_group_norm(x: Tensor, norm: nn.GroupNorm, mask: Tensor | None) -> Tensor:
    """GroupNorm whose statistics ignore padded positions.

    Args:
        x: `(batch_size, channels, height, width)`.
        norm: the ``nn.GroupNorm`` holding ``num_groups``, ``eps`` and the affine parameters.
        mask: `(batch_size, height, width)` bool, True on valid positions, or None (all valid).

    Returns:
        `(batch_size, channels, height, width)`; padded positions are zero.
    """
    batch_size, channels, height, width = x.shape
    if (channels // norm.num_groups) * height * width < 2:
        raise ValueError(f"pixel_values: too small for this model: a {height}x{width} feature map with "
                         f"{channels // norm.num_groups} channel(s) per GroupNorm group leaves one value per group; "
                         "use larger images")
    if mask is None:
        return norm(x)
    groups = norm.num_groups
    valid = mask.to(x.dtype).view(batch_size, 1, 1, height * width)
    grouped = x.view(batch_size, groups, channels // groups, height * width)
    count = valid.sum(dim=-1, keepdim=True) * (channels // groups)  # (B, 1, 1, 1)
    mean = (grouped * valid).sum(dim=(2, 3), keepdim=True) / count
    centred = (grouped - mean) * valid
    var = centred.pow(2).sum(dim=(2, 3), keepdim=True) / count
    out = (centred * torch.rsqrt(var + norm.eps)).view(batch_size, channels, height, width)
    if norm.affine:
        out = out * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return out * mask[:, None].to(x.dtype)


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded positions of `(batch_size, channels, height, width)` (no-op without a mask)."""
    return x if mask is None else x * mask[:, None].to(x.dtype)


class ConvNorm(nn.Module):
    """Conv (no bias) + GroupNorm(32) [+ ReLU]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.activation = activation

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = masked_group_norm(self.conv(x), self.norm, mask)
        return F.relu(x, inplace=True) if self.activation else x


class MaskFormerPixelDecoder(nn.Module):
    """FPN over the four backbone maps, then a 3x3 "mask projection" to per-pixel embeddings.

    Args:
        in_channels: channels of the backbone maps at strides 4, 8, 16, 32.
        feature_size: channels of every FPN map (256).
        mask_feature_size: channels C_E of the per-pixel embeddings (256).
    """

    def __init__(self, in_channels: list[int], feature_size: int = 256, mask_feature_size: int = 256) -> None:
        super().__init__()
        self.stem = ConvNorm(in_channels[-1], feature_size, 3, activation=True)
        # Coarse to fine: index 0 merges the stride-16 map, index 2 the stride-4 map.
        self.lateral_convs = nn.ModuleList(ConvNorm(c, feature_size, 1, activation=False) for c in in_channels[-2::-1])
        self.output_convs = nn.ModuleList(ConvNorm(feature_size, feature_size, 3, activation=True) for _ in in_channels[:-1])
        self.mask_projection = nn.Conv2d(feature_size, mask_feature_size, kernel_size=3, padding=1)

    def forward(self, features: list[Tensor], masks: list[Tensor] | None = None) -> list[Tensor]:
        """Run the FPN.

        Args:
            features: four maps `(batch_size, C_i, H_i, W_i)` at strides 4, 8, 16, 32.
            masks: None, or four bool maps `(batch_size, H_i, W_i)` of valid positions.

        Returns:
            The FPN maps at strides 16, 8 and 4, each `(batch_size, feature_size, H_i, W_i)`, padded
            positions zeroed; the last one is the input of :attr:`mask_projection`.
        """
        masks = masks if masks is not None else [None] * len(features)
        output = zero_padding(self.stem(features[-1], masks[-1]), masks[-1])
        fpn_maps = []
        for lateral, block, feature, mask in zip(self.lateral_convs, self.output_convs, features[-2::-1], masks[-2::-1]):
            output = lateral(feature, mask) + F.interpolate(output, size=feature.shape[-2:], mode="nearest")
            output = zero_padding(block(zero_padding(output, mask), mask), mask)
            fpn_maps.append(output)
        return fpn_maps


def foldable(projection: nn.Module) -> bool:
    """Whether ``projection(x)`` is exactly ``F.conv2d(x, projection.weight, projection.bias,
    padding=projection.padding)``, so that its weights may be folded into mask embeddings: a plain
    ``nn.Conv2d`` (:func:`maskformer_hf.ops.is_plain`: no LoRA adapter, hook or quantiser on it) with
    stride 1, no dilation, one group and zero padding given as numbers. Otherwise the callers call it."""
    return (is_plain(projection, nn.Conv2d) and projection.stride == (1, 1) and projection.dilation == (1, 1)
            and projection.groups == 1 and projection.padding_mode == "zeros" and isinstance(projection.padding, tuple))


def projected_mask_logits(mask_embeddings: Tensor, fpn_map: Tensor, projection: nn.Module) -> Tensor:
    """The textbook rule, ``einsum(E_mask, projection(fpn_map))``: `(batch_size, num_layers, num_queries, C_E)`,
    `(batch_size, feature_size, H, W)` -> `(batch_size, num_layers, num_queries, H, W)`."""
    return torch.einsum("blqc,bchw->blqhw", mask_embeddings, projection(fpn_map))


def mask_logits(mask_embeddings: Tensor, fpn_map: Tensor, projection: nn.Conv2d) -> Tensor:
    """Mask logits ``m[b, q] = E_mask[b, q] . E_pixel[b]`` with ``E_pixel = projection(fpn_map)``.

    When fewer masks than embedding channels are wanted (``L * Q < C_E``) and the projection is a plain
    convolution (:func:`foldable`), it is folded into the per-mask embeddings: a 3x3 convolution with
    ``Q`` outputs per image instead of ``C_E``, the same numbers (up to float rounding) for a fraction of
    the compute. A projection carrying a LoRA adapter or a hook is called (:func:`projected_mask_logits`).

    Args:
        mask_embeddings: `(batch_size, num_layers, num_queries, C_E)`.
        fpn_map: `(batch_size, feature_size, H, W)` at stride 4.
        projection: the 3x3 ``Conv2d(feature_size, C_E)``.

    Returns:
        `(batch_size, num_layers, num_queries, H, W)`.
    """
    batch_size, num_layers, num_queries, channels = mask_embeddings.shape
    height, width = fpn_map.shape[-2:]
    if num_layers * num_queries >= channels or not foldable(projection):
        return projected_mask_logits(mask_embeddings, fpn_map, projection)
    embeddings = mask_embeddings.reshape(batch_size, num_layers * num_queries, channels)
    weight = torch.einsum("bnc,cdij->bndij", embeddings, projection.weight)  # (B, L*Q, C_in, 3, 3)
    bias = None if projection.bias is None else embeddings @ projection.bias  # (B, L*Q)
    logits = F.conv2d(
        fpn_map.reshape(1, batch_size * fpn_map.shape[1], height, width),
        weight.reshape(batch_size * num_layers * num_queries, *weight.shape[2:]),
        None if bias is None else bias.reshape(-1),
        padding=projection.padding,
        groups=batch_size,
    )
    return logits.view(batch_size, num_layers, num_queries, height, width)


def mask_logits_by_taps(mask_embeddings: Tensor, fpn_map: Tensor, projection: nn.Conv2d) -> Tensor:
    """:func:`mask_logits` with the projection folded into every image's embeddings and applied as one
    batched matrix product per kernel tap, over shifted views of the padded map: no grouped
    convolution whose group count is the batch size, so the graph stays valid for any batch size
    (ONNX, TorchScript and ``torch.export`` with a dynamic batch). Same numbers up to float rounding.
    A projection that is not a plain "same" convolution (:func:`foldable`: a LoRA adapter, a hook) is
    called instead (:func:`projected_mask_logits`, also valid for any batch size).

    Args:
        mask_embeddings: `(batch_size, num_layers, num_queries, C_E)`.
        fpn_map: `(batch_size, feature_size, H, W)`.
        projection: a ``Conv2d(feature_size, C_E)`` with stride 1 and "same" padding (odd kernel).

    Returns:
        `(batch_size, num_layers, num_queries, H, W)`.
    """
    batch_size, num_layers, num_queries, channels = mask_embeddings.shape
    height, width = fpn_map.shape[-2:]
    if not (foldable(projection) and projection.padding == tuple(k // 2 for k in projection.kernel_size)
            and all(k % 2 for k in projection.kernel_size)):
        return projected_mask_logits(mask_embeddings, fpn_map, projection)
    kernel_h, kernel_w = projection.kernel_size
    pad_h, pad_w = projection.padding
    embeddings = mask_embeddings.reshape(batch_size, num_layers * num_queries, channels)
    weight = torch.einsum("bnc,cdij->ijbnd", embeddings, projection.weight)  # (k_h, k_w, B, N, C_in)
    bias = embeddings @ projection.bias if projection.bias is not None else embeddings.new_zeros(embeddings.shape[:2])
    # On the padded grid flattened row by row, tap (i, j) of output position p reads input p + i * row + j:
    # each tap is one contiguous slice; the output carries 2 * pad_w junk columns per row, cut at the end.
    row = width + 2 * pad_w
    padded = F.pad(fpn_map, (pad_w, pad_w, pad_h, pad_h + 1)).flatten(2)  # (B, C_in, (H + 2 p_h + 1) * row)
    length = height * row
    logits = bias[..., None]
    for i in range(kernel_h):
        for j in range(kernel_w):
            start = i * row + j
            logits = logits + weight[i, j] @ padded[..., start:start + length]
    logits = logits.view(batch_size, num_layers * num_queries, height, row)[..., :width]
    return logits.reshape(batch_size, num_layers, num_queries, height, width)


def matched_mask_logits(mask_embeddings: Tensor, fpn_map: Tensor, projection: nn.Conv2d, image_index: Tensor,
                        layer_index: Tensor, query_index: Tensor) -> Tensor:
    """The mask logits of a few selected (image, layer, query) triples, for the loss.

    Only matched masks receive a gradient, so the loss recomputes just those: per image, the
    projection is folded into the selected embeddings (a 3x3 convolution with ``M_b`` outputs) when
    that is cheaper than back-propagating through the full `C_E`-channel projection and the projection
    is a plain convolution (:func:`foldable`); otherwise the projection is called (so a LoRA adapter on
    it gets its gradient). Same numbers as indexing :func:`mask_logits` (up to float rounding); much
    less backward work, since the full logits need no gradient.

    Args:
        mask_embeddings: `(batch_size, num_layers, num_queries, C_E)`.
        fpn_map: `(batch_size, feature_size, H, W)` at stride 4.
        projection: the 3x3 ``Conv2d(feature_size, C_E)``.
        image_index, layer_index, query_index: `(M,)` int64 each.

    Returns:
        `(M, H, W)`, row i for the i-th triple.
    """
    channels = mask_embeddings.shape[-1]
    fold = foldable(projection)
    parts, order = [], []
    for b in image_index.unique().tolist():
        rows = (image_index == b).nonzero()[:, 0]
        embeddings = mask_embeddings[b, layer_index[rows], query_index[rows]]  # (M_b, C_E)
        # Folded: ~3 M_b convolution channels forward + backward; unfolded: backward of C_E channels x 2.
        if fold and 3 * rows.numel() < 2 * channels:
            weight = torch.einsum("mc,cdij->mdij", embeddings, projection.weight)  # (M_b, C_in, 3, 3)
            bias = None if projection.bias is None else embeddings @ projection.bias  # (M_b,)
            logits = F.conv2d(fpn_map[b : b + 1], weight, bias, padding=projection.padding)[0]
        else:
            logits = torch.einsum("mc,chw->mhw", embeddings, projection(fpn_map[b : b + 1])[0])
        parts.append(logits)
        order.append(rows)
    if not parts:
        return fpn_map.new_zeros(0, *fpn_map.shape[-2:])
    return torch.cat(parts)[torch.cat(order).argsort()]
