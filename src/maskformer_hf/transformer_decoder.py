"""Transformer module (SPEC §2.3): sine positional encoding, optional DETR encoder, DETR decoder.

Post-norm layers as in DETR. Attention is :func:`attention`, the textbook rule, when its weights are
wanted (``output_attentions``) or ``attn_implementation="eager"``; otherwise the same function runs
through ``F.scaled_dot_product_attention`` (fused kernels, no weights kept). Padded positions of the
stride-32 map (``mask``) are removed from every attention over image tokens and from the positional
encoding's normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}  # FFN non-linearities by config name


def sine_position_encoding(
    mask: Tensor, num_features: int, temperature: float = 10000.0, scale: float = 2 * math.pi, dtype=torch.float32
) -> Tensor:
    """Normalised 2-D sine/cosine encoding of DETR.

    Args:
        mask: `(batch_size, height, width)` bool, True on valid positions.
        num_features: features per axis (half the model width); the output has ``2 * num_features``.

    Returns:
        `(batch_size, height * width, 2 * num_features)`: y features first, then x; each axis
        interleaves sin/cos over frequencies ``temperature ** (2 * (i // 2) / num_features)``.
        Coordinates run 1..n over valid positions and are divided by n (+1e-6), times ``scale``.
    """
    valid = mask.to(torch.float32)
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    eps = 1e-6
    # The totals (the cumsums' last entries, exact integers) as sums: a [-1:] slice has a size that a
    # graph with a dynamic height cannot prove to be 1.
    y_embed = y_embed / (valid.sum(1, keepdim=True) + eps) * scale
    x_embed = x_embed / (valid.sum(2, keepdim=True) + eps) * scale
    dim_t = torch.arange(num_features, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_features)
    pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2).to(dtype)


def attention(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None = None,
              dropout: float = 0.0, training: bool = False) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(d)) v``, keys outside ``key_mask`` excluded.

    Args:
        query: `(B, heads, Lq, d)`; key, value: `(B, heads, Lk, d)`.
        key_mask: `(B, Lk)` bool, True where a key may be attended; None: all.
        dropout: probability of dropping an attention weight (training only).

    Returns:
        The output `(B, heads, Lq, d)` and the weights applied to the values `(B, heads, Lq, Lk)`
        (softmax in float32, after dropout).
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype), dropout, training)
    return torch.matmul(weights, value), weights


@dataclass
class AttentionWeights:
    """The attention weights of one forward pass, layer by layer (filled when they are requested)."""

    encoder: list[Tensor] = field(default_factory=list)  # encoder self-attention, each (B, heads, h*w, h*w)
    decoder: list[Tensor] = field(default_factory=list)  # decoder self-attention, each (B, heads, Q, Q)
    cross: list[Tensor] = field(default_factory=list)  # decoder cross-attention, each (B, heads, Q, h*w)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections: :func:`attention` (``eager``) or SDPA."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None = None,
                eager: bool = False) -> tuple[Tensor, Tensor | None]:
        """query `(B, Lq, D)`, key/value `(B, Lk, D)`, key_mask `(B, Lk)` bool (True = attend) -> the output
        `(B, Lq, D)` and, when ``eager`` (:func:`attention`), the weights `(B, heads, Lq, Lk)`; else None (SDPA)."""
        batch_size, length, hidden = query.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(batch_size, -1, self.num_heads, hidden // self.num_heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        if eager:
            out, weights = attention(q, k, v, key_mask, self.dropout, self.training)
        else:
            attn_mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
            weights = None
        return self.out_proj(out.transpose(1, 2).reshape(batch_size, length, hidden)), weights


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, ffn_dim: int, activation: str, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, hidden_size)
        self.activation = ACTIVATIONS[activation]
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(x)


class EncoderLayer(nn.Module):
    """DETR encoder layer: self-attention over image tokens (+ positions on q and k), FFN; post-norm."""

    def __init__(self, hidden_size: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation: str, activation_dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(hidden_size, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, ffn_dim, activation, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        self.dropout = dropout

    def forward(self, x: Tensor, pos: Tensor, key_mask: Tensor | None,
                eager: bool = False) -> tuple[Tensor, Tensor | None]:
        """`(B, h*w, D)` tokens -> the same, and the self-attention weights when ``eager``."""
        q = x + pos
        attended, weights = self.self_attn(q, q, x, key_mask, eager)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + F.dropout(self.ffn(x), self.dropout, self.training)), weights


class DecoderLayer(nn.Module):
    """DETR decoder layer: self-attention over queries, cross-attention to image tokens, FFN; post-norm.

    Query positions are added to queries and keys of the self-attention and to the queries of the
    cross-attention; image positions to the keys of the cross-attention; never to values.
    """

    def __init__(self, hidden_size: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation: str, activation_dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(hidden_size, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = MultiHeadAttention(hidden_size, heads, attention_dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, ffn_dim, activation, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        self.dropout = dropout

    def forward(self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Tensor | None, eager: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`(B, Q, D)` queries -> the same, and (when ``eager``) the self- and cross-attention weights."""
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        q = x + query_pos
        attended, self_weights = self.self_attn(q, q, x, eager=eager)
        x = self.self_attn_layer_norm(x + drop(attended))
        attended, cross_weights = self.cross_attn(x + query_pos, memory + memory_pos, memory, memory_mask, eager)
        x = self.cross_attn_layer_norm(x + drop(attended))
        return self.final_layer_norm(x + drop(self.ffn(x))), self_weights, cross_weights


class MaskFormerTransformerModule(nn.Module):
    """1x1 input projection, sine positions, optional encoder, decoder with a shared final LayerNorm.

    Args:
        in_channels: channels of the map it reads (the stride-32 backbone map, or the FPN output).
        learned_query_features: start the decoder from a learned `(num_queries, hidden_size)`
            embedding instead of DETR's zeros.
        hidden_size, num_queries, encoder_layers, decoder_layers, ...: see :class:`MaskFormerConfig`.
    """

    def __init__(self, in_channels: int, hidden_size: int, num_queries: int, encoder_layers: int,
                 encoder_attention_heads: int, encoder_ffn_dim: int, decoder_layers: int,
                 decoder_attention_heads: int, decoder_ffn_dim: int, dropout: float, attention_dropout: float,
                 activation_function: str, activation_dropout: float, learned_query_features: bool = False) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        # A 1x1 projection to the model width; none needed when the backbone already has it.
        self.input_projection = (
            nn.Conv2d(in_channels, hidden_size, kernel_size=1) if in_channels != hidden_size else nn.Identity()
        )
        self.num_queries = num_queries
        self.query_embeddings = nn.Embedding(num_queries, hidden_size)
        # DETR's decoder starts from zeros, so queries differ only through where they attend; a learned
        # start gives each query its own content from step 0 (``learned_query_features``, not in the paper)
        self.query_features = nn.Embedding(num_queries, hidden_size) if learned_query_features else None
        common = dict(dropout=dropout, attention_dropout=attention_dropout, activation=activation_function,
                      activation_dropout=activation_dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(hidden_size, encoder_attention_heads, encoder_ffn_dim, **common) for _ in range(encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(hidden_size, decoder_attention_heads, decoder_ffn_dim, **common) for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_size)

    def encode(self, image_features: Tensor, mask: Tensor | None = None, eager: bool = False,
               attentions: AttentionWeights | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Project the stride-32 map and run the encoder layers (none by default).

        Args:
            image_features: `(batch_size, in_channels, h, w)`, the stride-32 backbone map.
            mask: `(batch_size, h, w)` bool, True on valid positions, or None (all valid).
            eager: attention by :func:`attention` rather than SDPA (implied by ``attentions``).
            attentions: if given, every encoder layer's weights are appended to ``attentions.encoder``.

        Returns:
            ``(memory, memory_pos, key_mask)``: `(B, h*w, D)` tokens, their `(B, h*w, D)` sine
            positions, and the `(B, h*w)` valid-token mask (None: all valid).
        """
        batch_size, _, height, width = image_features.shape
        memory = self.input_projection(image_features).flatten(2).transpose(1, 2)  # (B, h*w, D)
        position_mask = mask if mask is not None else memory.new_ones(batch_size, height, width, dtype=torch.bool)
        memory_pos = sine_position_encoding(position_mask, self.hidden_size // 2, dtype=memory.dtype)
        key_mask = None if mask is None else mask.flatten(1)  # (B, h*w)
        for layer in self.encoder_layers:
            memory, weights = layer(memory, memory_pos, key_mask, eager or attentions is not None)
            if attentions is not None:
                attentions.encoder.append(weights)
        return memory, memory_pos, key_mask

    def decode(self, memory: Tensor, memory_pos: Tensor, key_mask: Tensor | None = None, eager: bool = False,
               attentions: AttentionWeights | None = None) -> Tensor:
        """Decode the queries against the encoded tokens (see :meth:`encode`; ``eager`` and ``attentions``
        as there, the weights going to ``attentions.decoder`` and ``attentions.cross``).

        Returns:
            `(num_decoder_layers, batch_size, num_queries, hidden_size)`: every layer's output after
            the shared final LayerNorm; the last entry is the model's output.
        """
        # The embeddings are called, not read: a wrapper (a PEFT adapter) on them takes part.
        queries = torch.arange(self.num_queries, device=memory.device)
        query_pos = self.query_embeddings(queries).unsqueeze(0).repeat(memory.shape[0], 1, 1)  # (B, Q, D)
        x = (torch.zeros_like(query_pos) if self.query_features is None
             else self.query_features(queries).unsqueeze(0).repeat(memory.shape[0], 1, 1))
        outputs = []
        for layer in self.decoder_layers:
            x, self_weights, cross_weights = layer(x, query_pos, memory, memory_pos, key_mask,
                                                   eager or attentions is not None)
            if attentions is not None:
                attentions.decoder.append(self_weights)
                attentions.cross.append(cross_weights)
            outputs.append(self.decoder_norm(x))
        return torch.stack(outputs)

    def forward(self, image_features: Tensor, mask: Tensor | None = None, eager: bool = False,
                attentions: AttentionWeights | None = None) -> Tensor:
        """:meth:`encode` then :meth:`decode`: `(num_decoder_layers, batch_size, num_queries, hidden_size)`."""
        return self.decode(*self.encode(image_features, mask, eager, attentions), eager, attentions)
