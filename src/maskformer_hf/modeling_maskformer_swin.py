"""MaskFormer's Swin Transformer backbone, in the parameter layout of ``maskformer-swin`` checkpoints.

The Hub's MaskFormer-Swin checkpoints (and ImageNet Swin checkpoints) load into this module
unchanged: every parameter has the name and shape it has in transformers' ``MaskFormerSwinBackbone``,
and the forward pass computes the same function (tested against it). What differs is how the work
is laid out, which matters for training on a CPU:

* every linear layer runs through :func:`maskformer_hf.ops.linear` (oneDNN on x86 CPUs, about twice
  the fp32 throughput of the BLAS product on a Zen 5 EPYC);
* queries, keys and values come from one matrix product (the three weights concatenated);
* tokens stay in `(batch, height, width, channels)` maps from the patch embedding to the outputs;
* scaling, relative-position bias and shift mask are added in place to the attention scores.

The first two hold while the layers are plain ``nn.Linear`` modules (:func:`maskformer_hf.ops.is_plain`):
a layer that a LoRA adapter (PEFT), a quantiser (``torch.ao``, bitsandbytes) or a hook has replaced
or wrapped is called as it is, so that adapters get their gradients and quantised layers compute.

Two behaviours follow the Swin paper rather than transformers: stochastic depth (``drop_path_rate``)
drops the MLP branch as well as the attention branch, and the unused classification LayerNorm is
absent (a parameter without gradient stalls DistributedDataParallel).

Geometry (as in MaskFormer): images are zero-padded bottom/right to a multiple of the patch size;
each block pads its normalised tokens to a multiple of the window size, shifted blocks roll the map
by half a window and mask attention across the roll's seams (score -100); patch merging pads odd
sizes and concatenates the 2x2 neighbours in the order (0,0), (1,0), (0,1), (1,1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn
from transformers.activations import ACT2FN

from .ops import is_plain, linear, linear_layer, tracing


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= `n`; floor divisions only, which a graph with symbolic
    sizes keeps simple (``-n % multiple`` nests modulo terms stage after stage)."""
    return (n + multiple - 1) // multiple * multiple


def window_partition(x: Tensor, window: int) -> Tensor:
    """`(B, H, W, C)` with H, W multiples of ``window`` -> `(B * H/window * W/window, window**2, C)`."""
    b, h, w, c = x.shape
    return x.view(b, h // window, window, w // window, window, c).transpose(2, 3).reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: `(B * nW, window**2, C)` -> `(B, height, width, C)`."""
    c = windows.shape[-1]
    grid = windows.view(-1, height // window, width // window, window, window, c)
    return grid.transpose(2, 3).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None, dtype=torch.float32) -> Tensor:
    """Additive attention mask of shifted windows on a `(height, width)` map (multiples of ``window``).

    After a cyclic shift by ``shift``, a window may hold tokens from up to four regions that were not
    neighbours; tokens of different regions must not attend to each other. Along each axis the
    regions are ``[0, n - window)``, ``[n - window, n - shift)`` and ``[n - shift, n)``.

    Returns:
        `(num_windows, window**2, window**2)`: 0 within a region, -100 across regions.
    """
    def regions(size: int) -> Tensor:  # 0, 1 or 2 for every index along one axis
        index = torch.arange(size, device=device)  # comparisons, not a tensor of sizes: graphs keep `size` symbolic
        return (index >= size - window).long() + (index >= size - shift).long()

    region = (regions(height)[:, None] * 3 + regions(width)[None, :])[None, :, :, None]  # (1, H, W, 1)
    windows = window_partition(region, window)[..., 0]  # (nW, T)
    same = windows[:, :, None] == windows[:, None, :]
    return torch.zeros(same.shape, device=device, dtype=dtype).masked_fill_(~same, -100.0)


def relative_position_index(window: int) -> Tensor:
    """`(window**2, window**2)` index into the `((2 window - 1)**2, heads)` relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, T, T), each in [0, 2 window - 2]
    return relative[0] * (2 * window - 1) + relative[1]


class SwinSelfAttention(nn.Module):
    """Window attention with a learnt relative-position bias (checkpoint names: query, key, value, ...)."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin: hidden size {dim} is not a multiple of the number of heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.dropout = nn.Dropout(dropout)
        self.window = window

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A zero bias table and the (deterministic) index; called for weights a checkpoint lacks."""
        nn.init.zeros_(self.relative_position_bias_table)
        self.relative_position_index.copy_(relative_position_index(self.window))

    def forward(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        """`(B * nW, T, C)` windows, `(nW, T, T)` additive mask or None -> `(B * nW, T, C)` (before the output projection)."""
        num_windows, tokens, channels = windows.shape
        layers = (self.query, self.key, self.value)
        if all(is_plain(layer, nn.Linear) for layer in layers) and len({layer.bias is None for layer in layers}) == 1:
            # One product over the concatenated weights: the same numbers as three, and ~1.4x faster than
            # three (forward + backward, Swin-T windows at 512 x 512, 2-core AVX2 EPYC).
            weight = torch.cat([layer.weight for layer in layers])
            bias = None if self.query.bias is None else torch.cat([layer.bias for layer in layers])
            qkv = linear(windows, weight, bias).view(num_windows, tokens, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * nW, heads, T, head_dim)
        else:  # an adapter, a quantised layer or a hook: each layer runs as it is
            query, key, value = (
                linear_layer(layer, windows).reshape(num_windows, tokens, self.num_heads, self.head_dim).transpose(1, 2)
                for layer in layers
            )
        scores = torch.matmul(query, key.transpose(-2, -1)).div_(math.sqrt(self.head_dim))
        position_bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        position_bias = position_bias.view(tokens, tokens, -1).permute(2, 0, 1)
        if scores.dtype == position_bias.dtype:  # in place; under autocast (bf16 scores) promote instead
            scores.add_(position_bias)
        else:
            scores = scores + position_bias
        if mask is not None:
            grouped = scores.view(-1, mask.shape[0], self.num_heads, tokens, tokens)
            scores = grouped.add_(mask[:, None]) if scores.dtype == mask.dtype else grouped + mask[:, None]
            scores = scores.view(num_windows, self.num_heads, tokens, tokens)
        probs = self.dropout(scores.softmax(dim=-1))
        return torch.matmul(probs, value).transpose(1, 2).reshape(num_windows, tokens, channels)


class SwinDense(nn.Module):
    """A linear layer (checkpoint name ``dense``) with an optional activation and dropout."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.activation = ACT2FN[activation] if isinstance(activation, str) else activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = linear_layer(self.dense, x)
        return self.dropout(x if self.activation is None else self.activation(x))


class SwinAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.self = SwinSelfAttention(dim, num_heads, window, qkv_bias, dropout)
        self.output = SwinDense(dim, dim, dropout=dropout)

    def forward(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(windows, mask))


class SwinLayer(nn.Module):
    """One Swin block: (shifted) window attention and an MLP, each pre-normalised and residual."""

    def __init__(self, config, dim: int, num_heads: int, shift: int, drop_path: float) -> None:
        super().__init__()
        hidden = int(config.mlp_ratio * dim)
        self.window, self.shift = config.window_size, shift
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = SwinAttention(dim, num_heads, config.window_size, config.qkv_bias,
                                       config.attention_probs_dropout_prob)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.intermediate = SwinDense(dim, hidden, activation=config.hidden_act)
        self.output = SwinDense(hidden, dim, dropout=config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, H, W, C)` -> `(B, H, W, C)`."""
        _, height, width, _ = x.shape
        window, shift = self.window, self.shift
        tokens = self.layernorm_before(x)
        pad_h, pad_w = round_up(height, window) - height, round_up(width, window) - width
        if tracing() or pad_h or pad_w:  # padded tokens are zero vectors after the norm
            tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
        mask = None
        if shift:
            tokens = torch.roll(tokens, (-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(height + pad_h, width + pad_w, window, shift, x.device, tokens.dtype)
        attended = window_merge(self.attention(window_partition(tokens, window), mask), window,
                                height + pad_h, width + pad_w)
        if shift:
            attended = torch.roll(attended, (shift, shift), dims=(1, 2))
        x = x + self.drop_path(attended[:, :height, :width])
        return x + self.drop_path(self.output(self.intermediate(self.layernorm_after(x))))


class SwinPatchMerging(nn.Module):
    """2x2 neighbours concatenated, normalised and projected: `(B, H, W, C)` -> `(B, ceil(H/2), ceil(W/2), 2C)`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        if tracing() or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, round_up(w, 2) - w, 0, round_up(h, 2) - h))
            h, w = round_up(h, 2), round_up(w, 2)
        # (B, H/2, row, W/2, col, C) -> neighbours ordered column-major: (0,0), (1,0), (0,1), (1,1).
        merged = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return linear_layer(self.reduction, self.norm(merged))


class SwinStage(nn.Module):
    def __init__(self, config, dim: int, depth: int, num_heads: int, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinLayer(config, dim, num_heads, 0 if i % 2 == 0 else config.window_size // 2, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = SwinPatchMerging(dim) if downsample else None


class SwinPatchEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        patch = config.patch_size
        self.patch_size = (patch, patch) if isinstance(patch, int) else tuple(patch)
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, kernel_size=self.patch_size,
                                    stride=self.patch_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """`(B, 3, H, W)` -> `(B, ceil(H/p), ceil(W/p), embed_dim)`; images zero-padded bottom/right."""
        height, width = pixel_values.shape[-2:]
        pad_h = round_up(height, self.patch_size[0]) - height
        pad_w = round_up(width, self.patch_size[1]) - width
        if tracing() or pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        return self.projection(pixel_values).permute(0, 2, 3, 1)


class SwinEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.patch_embeddings = SwinPatchEmbeddings(config)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.dropout(self.norm(self.patch_embeddings(pixel_values)))


class SwinEncoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        drop_paths = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()  # meta too
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            first = sum(config.depths[:i])
            self.layers.append(SwinStage(config, int(config.embed_dim * 2**i), depth, heads,
                                         drop_paths[first:first + depth], downsample=i < len(config.depths) - 1))


class SwinModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.embeddings = SwinEmbeddings(config)
        self.encoder = SwinEncoder(config)


class MaskFormerSwinBackbone(nn.Module):
    """Swin backbone for MaskFormer: ``forward(pixel_values) -> [maps]``, one `(B, C_i, H/s_i, W/s_i)` map per
    requested stage (each stage's last block output, before patch merging, through its own LayerNorm).

    Args:
        config: a transformers ``MaskFormerSwinConfig``. Absolute position embeddings are not
            supported (no MaskFormer checkpoint uses them; such configs keep transformers' module).
    """

    def __init__(self, config) -> None:
        super().__init__()
        if getattr(config, "use_absolute_embeddings", False):
            raise ValueError("MaskFormerSwinBackbone: use_absolute_embeddings=True is not supported")
        self.config = config
        self.model = SwinModel(config)
        widths = [int(config.embed_dim * 2**i) for i in range(len(config.depths))]
        self.hidden_states_norms = nn.ModuleList(nn.LayerNorm(width) for width in widths)
        stage_names = [f"stage{i + 1}" for i in range(len(config.depths))]
        out_features = list(getattr(config, "out_features", None) or stage_names)
        unknown = [name for name in out_features if name not in stage_names]
        if unknown:
            raise ValueError(f"MaskFormerSwinBackbone: out_features must name stages among {stage_names}, got {unknown}")
        self.out_indices = [stage_names.index(name) for name in out_features]
        self.channels = [widths[i] for i in self.out_indices]
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' Swin initialisation: normal(0, initializer_range) weights, zero biases, unit
        LayerNorms, a zero relative-position bias table."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SwinSelfAttention):
            nn.init.zeros_(module.relative_position_bias_table)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        x = self.model.embeddings(pixel_values)  # (B, H/4, W/4, C)
        maps = []
        for index, stage in enumerate(self.model.encoder.layers):
            for block in stage.blocks:
                x = block(x)
            if index in self.out_indices:
                maps.append(self.hidden_states_norms[index](x).permute(0, 3, 1, 2).contiguous())
            if index == max(self.out_indices):
                break
            x = stage.downsample(x)
        return maps
