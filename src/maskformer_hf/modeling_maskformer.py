"""MaskFormer: backbone -> pixel decoder -> transformer module -> class and mask heads (SPEC §2).

Read top to bottom: the output dataclasses, the pre-trained base class (initialisation, loading of
transformers checkpoints), :class:`MaskFormerModel` and :class:`MaskFormerForUniversalSegmentation`.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.initialization import guard_torch_init_functions
from transformers.utils import ModelOutput

from .backbones import MaskFormerBackbone
from .configuration_maskformer import MaskFormerConfig, MaskFormerHfConfig
from .loss_maskformer import MaskFormerLoss, PerPixelLoss
from .pixel_decoder import MaskFormerPixelDecoder, matched_mask_logits, zero_padding
from .transformer_decoder import (AttentionWeights, MaskFormerTransformerModule)


@dataclass
class MaskFormerModelOutput(ModelOutput):
    """Outputs of :class:`MaskFormerModel`.

    Args:
        encoder_last_hidden_state: `(batch_size, C_32, H/32, W/32)`, the backbone's stride-32 map.
        pixel_decoder_last_hidden_state: `(batch_size, mask_feature_size, H/4, W/4)`, per-pixel embeddings.
        transformer_decoder_last_hidden_state: `(batch_size, num_queries, hidden_size)`.
        encoder_hidden_states: on request, the four backbone maps (strides 4, 8, 16, 32).
        pixel_decoder_hidden_states: on request, the FPN maps (strides 16, 8, 4).
        transformer_decoder_hidden_states: on request, every decoder layer's normalised output,
            each `(batch_size, num_queries, hidden_size)`.
        hidden_states: on request, the three tuples above concatenated.
        attentions: with ``output_attentions``, every decoder layer's self-attention weights (as in
            transformers), each `(batch_size, decoder_attention_heads, num_queries, num_queries)`.
        cross_attentions: with ``output_attentions``, every decoder layer's attention weights over the
            image tokens, each `(batch_size, decoder_attention_heads, num_queries, h * w)` (the
            stride-32 map's tokens, row by row; padded tokens get 0).
        encoder_attentions: with ``output_attentions``, every encoder layer's self-attention weights,
            each `(batch_size, encoder_attention_heads, h * w, h * w)` (empty without encoder layers).
    """

    encoder_last_hidden_state: Tensor | None = None
    pixel_decoder_last_hidden_state: Tensor | None = None
    transformer_decoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None


@dataclass
class MaskFormerForUniversalSegmentationOutput(ModelOutput):
    """Outputs of :class:`MaskFormerForUniversalSegmentation` (field names as in transformers).

    Args:
        loss: scalar training loss, when labels are given.
        class_queries_logits: `(batch_size, num_queries, num_labels + 1)`; the last class is "no object".
        masks_queries_logits: `(batch_size, num_queries, H/4, W/4)` mask logits (sigmoid -> probability).
        auxiliary_logits: one dict per earlier decoder layer (``decoder_layers - 1`` of them) with
            ``class_queries_logits`` and ``masks_queries_logits`` of the shapes above.
        encoder_last_hidden_state, pixel_decoder_last_hidden_state, transformer_decoder_last_hidden_state,
        encoder_hidden_states, pixel_decoder_hidden_states, transformer_decoder_hidden_states,
        hidden_states, attentions, cross_attentions, encoder_attentions: as in :class:`MaskFormerModelOutput`.
        pixel_mask: the input's `(batch_size, H, W)` padding mask, when one was given, so that
            post-processing can crop each image's padding away before resizing.
        loss_dict: every weighted loss term per supervised layer, for logging (the last field, so that
            ``return_dict=False`` tuples begin ``(loss, class_queries_logits, masks_queries_logits)`` as
            in transformers).
    """

    loss: Tensor | None = None
    class_queries_logits: Tensor | None = None
    masks_queries_logits: Tensor | None = None
    auxiliary_logits: list[dict[str, Tensor]] | None = None
    encoder_last_hidden_state: Tensor | None = None
    pixel_decoder_last_hidden_state: Tensor | None = None
    transformer_decoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    pixel_mask: Tensor | None = None
    loss_dict: dict[str, Tensor] | None = None  # last, so that tuples start like transformers' (loss, logits, ...)


@dataclass
class MaskFormerFeatures:
    """Everything one pass through the body computes, before any head (internal hand-over)."""

    backbone_maps: list[Tensor]  # four (B, C_i, H/s_i, W/s_i)
    fpn_maps: list[Tensor]  # strides 16, 8, 4, each (B, fpn_feature_size, h, w)
    decoder_states: Tensor | None  # (num_decoder_layers, B, num_queries, hidden_size), normalised; None: no transformer
    valid_masks: list[Tensor] | None = None  # the backbone levels' (B, h_i, w_i) valid positions; None: no padding
    attentions: AttentionWeights | None = None  # when requested (output_attentions)

    def unstack_decoder_states(self) -> tuple[Tensor, ...]:
        """``decoder_states`` as one tensor per layer, re-stacked from those very tensors: what reads the
        stack back-propagates into the returned tensors (hidden states whose gradient a user keeps)."""
        layers = () if self.decoder_states is None else self.decoder_states.unbind(0)
        if layers:
            self.decoder_states = torch.stack(layers)
        return layers


class MaskFormerHfPreTrainedModel(PreTrainedModel):
    config_class = MaskFormerConfig
    config: MaskFormerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    # Attention runs through F.scaled_dot_product_attention ("sdpa", the default) or, with "eager", the
    # textbook softmax(q k^T / sqrt(d)) v, which also serves output_attentions. No other backend.
    _supports_sdpa = True
    _supports_attention_backend = False
    ATTN_IMPLEMENTATIONS = ("eager", "sdpa")

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        implementation = super().get_correct_attn_implementation(requested_attention, is_init_check)
        if implementation not in self.ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation: MaskFormer supports {self.ATTN_IMPLEMENTATIONS}, got "
                             f"{implementation!r}")
        return implementation

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False) -> None:
        """transformers' method (``"eager"`` or ``"sdpa"``), handed to the backbone's config too; a
        transformers backbone that lacks the implementation (a ResNet has no attention) keeps its own."""
        body = getattr(getattr(getattr(self, "model", self), "backbone", None), "body", None)
        backbone_config = self.config.backbone_config
        if isinstance(attn_implementation, str) and isinstance(body, PreTrainedModel):
            try:
                body.get_correct_attn_implementation(attn_implementation)
            except (ValueError, ImportError):
                attn_implementation = {"": attn_implementation, "backbone_config": body.config._attn_implementation}
        elif isinstance(attn_implementation, str) and backbone_config is not None:
            # Our MaskFormer-Swin (not a PreTrainedModel, so transformers cannot check it) runs its
            # window attention by the same explicit rule under either name: record the name only.
            backbone_config._attn_implementation_internal = self.get_correct_attn_implementation(attn_implementation)
        super().set_attn_implementation(attn_implementation, allow_all_kernels)

    def post_init(self) -> None:
        # A new model keeps what its constructors drew: transformers' pass of _init_weights here is a no-op.
        self._constructed = False
        super().post_init()
        self._constructed = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise ``module`` again as its constructor does: ``reset_parameters``, PyTorch's default for
        every layer (:meth:`initialize_weights` then gives the backbone's modules their library's scheme).

        transformers calls this for the modules whose weights a checkpoint lacked or resized
        (``ignore_mismatched_sizes``) and from ``init_weights()`` (a model built on the meta device, then
        ``to_empty``); tensors it has loaded are kept. Never while the model is constructed
        (``post_init``), so that a seed gives the same new model as the constructors alone. ``init_std`` /
        ``init_xavier_std`` are kept for config compatibility with transformers and not used."""
        if getattr(self, "_constructed", False) and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()

    def initialize_weights(self) -> None:
        """transformers' pass of :meth:`_init_weights` over the modules not yet initialised; then those
        of them inside a backbone take the backbone library's own initialisation (timm's, Swin's), as
        a new model's would (:meth:`MaskFormerBackbone.init_body`)."""
        pending = [m for m in self.modules() if not getattr(m, "_is_hf_initialized", False)]
        super().initialize_weights()
        if not getattr(self, "_constructed", False):
            return
        pending_ids = {id(m) for m in pending}
        with torch.no_grad(), guard_torch_init_functions():  # loaded tensors keep their values
            for backbone in (m for m in self.modules() if isinstance(m, MaskFormerBackbone)):
                backbone.init_body([m for m in backbone.body.modules() if id(m) in pending_ids])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any):
        """Load our checkpoint, or a transformers MaskFormer checkpoint (``model_type: "maskformer"``),
        converted on the fly. ImageNet backbone weights are never fetched again when loading."""
        from .conversion import is_transformers_checkpoint

        # None: transformers' "no checkpoint" (config= and state_dict= given), nothing to look up.
        if pretrained_model_name_or_path is not None and is_transformers_checkpoint(
                pretrained_model_name_or_path, **_hub_kwargs(kwargs)):
            if cls is not MaskFormerForUniversalSegmentation:
                raise ValueError(
                    f"{cls.__name__}.from_pretrained: {pretrained_model_name_or_path} is a transformers MaskFormer "
                    "checkpoint; load it with MaskFormerForUniversalSegmentation.from_pretrained"
                )
            from .conversion import convert_from_transformers

            hub_kwargs = _hub_kwargs(kwargs)
            model = convert_from_transformers(pretrained_model_name_or_path, **hub_kwargs)
            loading_kwargs = {k: v for k, v in kwargs.items() if k not in hub_kwargs}
            if not args and not loading_kwargs:
                return model
            # Config overrides (num_labels, id2label, ...), ignore_mismatched_sizes, dtype,
            # output_loading_info, device_map: transformers' own loading, from the converted weights.
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                del model
                return super().from_pretrained(folder, *args, **loading_kwargs)
        config = kwargs.get("config")
        if config is None:
            kwargs["use_pretrained_backbone"] = False
        elif isinstance(config, MaskFormerConfig) and config.use_pretrained_backbone:  # e.g. via AutoModel
            kwargs["config"] = config = copy.deepcopy(config)
            config.use_pretrained_backbone = False
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``save_pretrained``; ``config.json``'s ``auto_map`` names our classes for every
        Auto class a transformers user reaches for (:func:`auto_map`), so that the saved code loads as
        ours through any of them with ``trust_remote_code=True`` where this package is not installed."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map()}
        return super().save_pretrained(save_directory, *args, **kwargs)


def auto_map() -> dict[str, str]:
    """``{Auto class: "module.Class"}`` of the config and models (module names as in a saved folder)."""
    def reference(cls: type) -> str:
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    task_model = reference(MaskFormerHfForUniversalSegmentation)
    return {"AutoConfig": reference(MaskFormerHfConfig), "AutoModel": reference(MaskFormerHfModel),
            **{name: task_model for name in TASK_AUTO_CLASSES}}


# The Auto classes that build MaskFormerForUniversalSegmentation: transformers' pipeline and example
# scripts reach for each of them (its own MaskFormer answers to the last two).
TASK_AUTO_CLASSES = ("AutoModelForUniversalSegmentation", "AutoModelForImageSegmentation",
                     "AutoModelForInstanceSegmentation")


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")
    return {k: kwargs[k] for k in keys if k in kwargs}


class MaskFormerHfModel(MaskFormerHfPreTrainedModel):
    """Backbone, pixel decoder and transformer module; no heads.

    ``pixel_mask`` `(batch_size, H, W)` (1 = real pixel, 0 = padding) is honoured: each image of a
    padded batch gives the same result as the image alone (see :mod:`maskformer_hf.backbones`).
    """

    def __init__(self, config: MaskFormerConfig) -> None:
        super().__init__(config)
        self.backbone = MaskFormerBackbone(config)
        # The original "R50 + 6 Enc" layout: the FPN starts from the encoder's output (hidden_size wide).
        self.encoder_feeds_pixel_decoder = config.encoder_feeds_pixel_decoder
        fpn_inputs = self.backbone.channels[:-1] + [config.hidden_size] if self.encoder_feeds_pixel_decoder \
            else self.backbone.channels
        self.pixel_decoder = MaskFormerPixelDecoder(fpn_inputs, config.fpn_feature_size, config.mask_feature_size)
        self.transformer_in_feature = config.transformer_in_feature
        self.transformer_module = None if config.segmentation_type == "per_pixel" else MaskFormerTransformerModule(
            in_channels=config.fpn_feature_size if self.transformer_in_feature == "pixel_decoder"
            else self.backbone.channels[-1],
            hidden_size=config.hidden_size,
            num_queries=config.num_queries,
            encoder_layers=config.encoder_layers,
            encoder_attention_heads=config.encoder_attention_heads,
            encoder_ffn_dim=config.encoder_ffn_dim,
            decoder_layers=config.decoder_layers,
            decoder_attention_heads=config.decoder_attention_heads,
            decoder_ffn_dim=config.decoder_ffn_dim,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_function=config.activation_function,
            activation_dropout=config.activation_dropout,
            learned_query_features=config.learned_query_features,
        )
        self.post_init()

    def compute_features(self, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                         output_attentions: bool = False) -> MaskFormerFeatures:
        """Run backbone, FPN and transformer; the heads (and the mask projection) are left to the caller."""
        check_pixel_values(pixel_values, pixel_mask, next(self.parameters()))
        return self.decode_features(*self.backbone(pixel_values, pixel_mask), output_attentions=output_attentions)

    def decode_features(self, backbone_maps: list[Tensor], masks: list[Tensor] | None,
                        output_attentions: bool = False) -> MaskFormerFeatures:
        """Transformer module and FPN over the four backbone maps (and their valid-position masks,
        None when nothing is padded): the part of :meth:`compute_features` after the backbone.
        ``output_attentions`` keeps the attention weights (computed by the textbook rule)."""
        if self.transformer_module is None:  # the per-pixel baseline: the FPN only
            return MaskFormerFeatures(backbone_maps, self.pixel_decoder(backbone_maps, masks), None, masks,
                                      AttentionWeights() if output_attentions else None)
        eager = self.config._attn_implementation == "eager"
        attentions = AttentionWeights() if output_attentions else None
        if self.transformer_in_feature == "pixel_decoder":  # the decoder reads the FPN's stride-4 map
            fpn_maps = self.pixel_decoder(backbone_maps, masks)
            states = self.transformer_module(fpn_maps[-1], None if masks is None else masks[0], eager, attentions)
            return MaskFormerFeatures(backbone_maps, fpn_maps, states, masks, attentions)
        top_mask = None if masks is None else masks[-1]
        memory, memory_pos, key_mask = self.transformer_module.encode(backbone_maps[-1], top_mask, eager, attentions)
        fpn_inputs = backbone_maps
        if self.encoder_feeds_pixel_decoder:  # (B, h*w, D) tokens -> (B, D, h, w) map, zero on padding as the others
            top = memory.transpose(1, 2).reshape(memory.shape[0], -1, *backbone_maps[-1].shape[-2:])
            fpn_inputs = backbone_maps[:-1] + [zero_padding(top, top_mask)]
        fpn_maps = self.pixel_decoder(fpn_inputs, masks)
        decoder_states = self.transformer_module.decode(memory, memory_pos, key_mask, eager, attentions)
        return MaskFormerFeatures(backbone_maps, fpn_maps, decoder_states, masks, attentions)

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MaskFormerModelOutput | tuple:
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        return_dict = _flag(return_dict, self.config.return_dict)
        features = self.compute_features(pixel_values, pixel_mask, output_attentions)
        output = MaskFormerModelOutput(
            encoder_last_hidden_state=features.backbone_maps[-1],
            pixel_decoder_last_hidden_state=self.pixel_decoder.mask_projection(features.fpn_maps[-1]),
            transformer_decoder_last_hidden_state=_last(features.decoder_states),
            **_hidden_states(features, output_hidden_states),
            **_attentions(features),
        )
        return output if return_dict else output.to_tuple()


MIN_IMAGE_SIZE = 32  # the backbone's output stride: smaller images leave no stride-32 feature


def check_pixel_values(pixel_values: Any, pixel_mask: Any, parameter: Tensor) -> None:
    """Raise a ``TypeError``/``ValueError`` naming the argument unless `pixel_values` is a
    `(batch_size, 3, H, W)` float tensor of at least 32x32 finite values on the model's device (in
    its dtype, unless autocast is on) and `pixel_mask` None or `(batch_size, H, W)` on that device.
    The finiteness scan is skipped while tracing or compiling (it is data-dependent)."""
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        got = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values: expected a (batch_size, channels, height, width) tensor, got {got}")
    if pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values: expected 3 (RGB) channels, got shape {tuple(pixel_values.shape)}; "
                         "MaskFormerImageProcessor converts grey and RGBA images")
    if min(pixel_values.shape[-2:]) < MIN_IMAGE_SIZE or pixel_values.shape[0] < 1:
        raise ValueError(f"pixel_values: expected at least one image of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
                         f"pixels (the backbone's output stride), got shape {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values: expected normalised floating point values, got {pixel_values.dtype}; "
                        "MaskFormerImageProcessor makes them from images")
    if pixel_values.device != parameter.device:
        raise ValueError(f"pixel_values: on {pixel_values.device}, but the model is on {parameter.device}; "
                         "move one of them (inputs.to(model.device))")
    if pixel_values.dtype != parameter.dtype and not torch.is_autocast_enabled(pixel_values.device.type):
        raise TypeError(f"pixel_values: {pixel_values.dtype}, but the model's weights are {parameter.dtype}; cast the "
                        "input (pixel_values.to(model.dtype)) or run under torch.autocast")
    if pixel_mask is not None:
        if not isinstance(pixel_mask, Tensor):
            raise TypeError(f"pixel_mask: expected a tensor or None, got {type(pixel_mask).__name__}")
        if pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[2:]):
            raise ValueError(f"pixel_mask: expected shape {(pixel_values.shape[0], *pixel_values.shape[2:])} "
                             f"(batch_size, height, width), got {tuple(pixel_mask.shape)}")
        if pixel_mask.device != pixel_values.device:
            raise ValueError(f"pixel_mask: on {pixel_mask.device}, but pixel_values are on {pixel_values.device}")
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values: found NaN or infinite values")


def check_mask_label_sizes(mask_labels: Any, pixel_values: Tensor) -> None:
    """The masks of a batch share one size covering the same extent as `pixel_values` (their padded
    size, as the processor makes them; a lower resolution of the same aspect is accepted) and its
    device. Entries that are not `(N, H, W)` tensors are left to the loss's own checks."""
    height, width = pixel_values.shape[-2:]
    sizes = {tuple(m.shape[-2:]) for m in mask_labels if isinstance(m, Tensor) and m.dim() == 3} \
        if isinstance(mask_labels, (list, tuple)) else set()
    if len(sizes) > 1:
        raise ValueError(f"mask_labels: the images' masks differ in size {sorted(sizes)}; pad them to the batch's "
                         f"size {(height, width)} as MaskFormerImageProcessor does")
    for h, w in sizes:
        if h < 1 or w < 1 or abs(h / height - w / width) > 1.0 / min(h, w):
            raise ValueError(f"mask_labels: masks of size {(h, w)} do not cover pixel_values of size "
                             f"{(height, width)}; expected masks of the padded image size")
    for b, masks in enumerate(mask_labels if isinstance(mask_labels, (list, tuple)) else ()):
        if isinstance(masks, Tensor) and masks.device != pixel_values.device:
            raise ValueError(f"mask_labels[{b}]: on {masks.device}, but pixel_values are on {pixel_values.device}")


def _flag(value: bool | None, default: bool | None) -> bool:
    return bool(default) if value is None else bool(value)


def _last(states: Tensor | None) -> Tensor | None:
    return None if states is None else states[-1]


def _attentions(features: MaskFormerFeatures) -> dict[str, Any]:
    weights = features.attentions
    if weights is None:
        return {}
    return dict(attentions=tuple(weights.decoder), cross_attentions=tuple(weights.cross),
                encoder_attentions=tuple(weights.encoder))


def labels_as_lists(mask_labels: Any, class_labels: Any) -> tuple[Any, Any]:
    """transformers' batch-tensor form of the labels, ``mask_labels`` `(batch_size, N, H, W)` and
    ``class_labels`` `(batch_size, N)` (the same N segments per image), as the per-image lists the loss
    takes; lists pass unchanged (their entries are checked by the loss)."""
    if isinstance(mask_labels, Tensor):
        if mask_labels.dim() != 4:
            raise ValueError("mask_labels: expected a list of (N_i, H, W) tensors or a (batch_size, N, H, W) tensor, "
                             f"got a tensor of shape {tuple(mask_labels.shape)}")
        mask_labels = list(mask_labels.unbind(0))
    if isinstance(class_labels, Tensor):
        if class_labels.dim() != 2:
            raise ValueError("class_labels: expected a list of (N_i,) tensors or a (batch_size, N) tensor, got a "
                             f"tensor of shape {tuple(class_labels.shape)}")
        class_labels = list(class_labels.unbind(0))
    return mask_labels, class_labels


def _hidden_states(features: MaskFormerFeatures, wanted: bool) -> dict[str, Any]:
    """The hidden-state fields; call before the heads read ``features.decoder_states`` (gradients)."""
    if not wanted:
        return {}
    encoder, fpn = tuple(features.backbone_maps), tuple(features.fpn_maps)
    decoder = features.unstack_decoder_states()
    return dict(encoder_hidden_states=encoder, pixel_decoder_hidden_states=fpn,
                transformer_decoder_hidden_states=decoder, hidden_states=encoder + fpn + decoder)


class MaskEmbedder(nn.Module):
    """The mask head: an MLP with two hidden layers, ReLU between (SPEC §2.4)."""

    def __init__(self, hidden_size: int, mask_feature_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(hidden_size, hidden_size), nn.Linear(hidden_size, hidden_size),
             nn.Linear(hidden_size, mask_feature_size)]
        )

    def forward(self, x: Tensor) -> Tensor:
        """`(..., hidden_size)` -> `(..., mask_feature_size)`."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


NO_CLASS_LOGIT = -1e4  # exp() of it is 0 in float32: a one-hot class distribution from finite logits
MAX_MASK_LOGIT = 80.0  # sigmoid(-80) ~ 1.8e-35 is still a normal float32


def mask_pooled_embeddings(mask_logits: Tensor, pixel_embeddings: Tensor, valid: Tensor | None = None) -> Tensor:
    """Each query's per-pixel embeddings averaged under its mask probability (detached: the class
    loss does not move the masks), over valid pixels only.

    Args:
        mask_logits: `(L, B, Q, h, w)`.
        pixel_embeddings: `(B, C_E, h, w)`.
        valid: `(B, h, w)` bool, False on padding; None: all valid.

    Returns:
        `(L, B, Q, C_E)`: ``sum_hw w * e / (sum_hw w + 1)`` with ``w = sigmoid(m)`` on valid pixels, 0 elsewhere
        (the +1 keeps an empty mask's average near 0 rather than dividing by 0).
    """
    weights = mask_logits.detach().float().sigmoid()
    if valid is not None:
        weights = weights * valid[:, None].to(weights.dtype)
    pooled = torch.einsum("lbqhw,bchw->lbqc", weights, pixel_embeddings.float())
    return (pooled / (weights.sum((-2, -1))[..., None] + 1.0)).to(pixel_embeddings.dtype)


def probability_logits(logits: Tensor, dim: int = -3) -> Tensor:
    """``logit(softmax(logits, dim))`` computed stably, clamped to ±80: sigmoid of the result is each
    class's softmax probability, without the ties that saturated sigmoids of raw logits would make.

    For every class but the top one p <= 1/2, so ``log(1 - p) = log1p(-p)`` is exact; for the top one
    ``log(1 - p)`` is the log-sum-exp of the other classes minus that of all.
    """
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim)
    top = logits.argmax(dim, keepdim=True)
    others = torch.logsumexp(logits.scatter(dim, top, float("-inf")), dim, keepdim=True) \
        - torch.logsumexp(logits, dim, keepdim=True)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=0.5)).scatter(dim, top, others)
    return (log_p - log_not_p).clamp(-MAX_MASK_LOGIT, MAX_MASK_LOGIT)


def class_maps_as_queries(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The per-pixel baselines' K class logit maps in MaskFormer's output form, so that every
    ``post_process_*`` method, the pipeline and the evaluation read them unchanged: query c is
    class c with certainty, its mask the class's per-pixel probability. Semantic inference
    (``argmax_c sum_q p_q(c) m_q``) then gives exactly the per-pixel argmax.

    Args:
        logits: `(..., K, h, w)` class logits.

    Returns:
        ``class_queries_logits`` `(..., K, K + 1)` (0 on the diagonal, -1e4 elsewhere) and
        ``masks_queries_logits`` `(..., K, h, w)` = :func:`probability_logits`.
    """
    num_classes = logits.shape[-3]
    eye = torch.eye(num_classes, num_classes + 1, device=logits.device)
    class_logits = ((1.0 - eye) * NO_CLASS_LOGIT).expand(*logits.shape[:-3], num_classes, num_classes + 1)
    return class_logits, probability_logits(logits, dim=-3)


class MaskFormerHfForUniversalSegmentation(MaskFormerHfPreTrainedModel):
    """MaskFormer with its class head (K + 1 classes) and mask head; semantic, instance and panoptic
    segmentation all come from these two outputs (post-processing in :mod:`maskformer_hf.inference`).

    ``config.segmentation_type`` selects the paper's per-pixel baselines instead (Table 4):
    ``"per_pixel"`` (a 1x1 convolution to K classes on the per-pixel embeddings) and
    ``"per_pixel_plus"`` (N = K queries, query c's mask logits read as class c's logit map), both
    trained with per-pixel cross-entropy and returned in the same output form
    (:func:`class_maps_as_queries`)."""

    def __init__(self, config: MaskFormerConfig) -> None:
        super().__init__(config)
        self.model = MaskFormerModel(config)
        kind = config.segmentation_type
        if kind == "mask_classification":  # created first: a seed gives the same weights as before the baselines
            self.class_predictor = nn.Linear(config.hidden_size, config.num_labels + 1)
        if config.mask_pooled_classification and kind == "mask_classification":
            self.pooled_class_predictor = nn.Linear(config.mask_feature_size, config.num_labels + 1)
        if kind == "per_pixel":
            self.pixel_classifier = nn.Conv2d(config.mask_feature_size, config.num_labels, kernel_size=1)
        else:
            self.mask_embedder = MaskEmbedder(config.hidden_size, config.mask_feature_size)
        if kind != "mask_classification":
            self.criterion = PerPixelLoss(config.num_labels, cross_entropy_weight=config.cross_entropy_weight)
            self.post_init()
            return
        self.criterion = MaskFormerLoss(
            config.num_labels,
            no_object_weight=config.no_object_weight,
            cross_entropy_weight=config.cross_entropy_weight,
            mask_weight=config.mask_weight,
            dice_weight=config.dice_weight,
            fixed_matching=config.fixed_matching,
            num_points=config.train_num_points,
            oversample_ratio=config.oversample_ratio,
            importance_sample_ratio=config.importance_sample_ratio,
            semantic_weight=config.semantic_loss_weight,
        )
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        mask_labels: list[Tensor] | Tensor | None = None,
        class_labels: list[Tensor] | Tensor | None = None,
        pixel_mask: Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        num_masks: float | Tensor | None = None,
        **kwargs: Any,
    ) -> MaskFormerForUniversalSegmentationOutput | tuple:
        r"""Predict N (class, mask) pairs per image (arguments in transformers' order).

        Args:
            pixel_values: `(batch_size, 3, H, W)` normalised images.
            mask_labels: per image, `(num_segments_i, H, W)` binary masks (training); or one
                `(batch_size, N, H, W)` tensor when every image has N segments.
            class_labels: per image, `(num_segments_i,)` class indices (training); or `(batch_size, N)`.
            pixel_mask: `(batch_size, H, W)`, 1 on real pixels, 0 on padding; honoured.
            output_auxiliary_logits: return the earlier decoder layers' predictions (default: the
                config's ``output_auxiliary_logits``, else ``use_auxiliary_loss``).
            output_hidden_states: also return backbone, FPN and decoder states.
            output_attentions: also return the transformer's attention weights (computed by the
                textbook rule for this call, whatever ``attn_implementation``).
            num_masks: normaliser of the mask loss terms; default the number of segments in this
                batch. Under data parallelism pass the global count divided by the world size.
        """
        config = self.config
        output_hidden_states = _flag(output_hidden_states, config.output_hidden_states)
        output_attentions = _flag(output_attentions, config.output_attentions)
        return_dict = _flag(return_dict, config.return_dict)
        if output_auxiliary_logits is None:
            output_auxiliary_logits = _flag(config.output_auxiliary_logits, config.use_auxiliary_loss)

        if (mask_labels is None) != (class_labels is None):
            raise ValueError("mask_labels and class_labels: pass both (training) or neither (inference)")
        compute_loss = mask_labels is not None
        features = self.model.compute_features(pixel_values, pixel_mask, output_attentions)
        if compute_loss:
            mask_labels, class_labels = labels_as_lists(mask_labels, class_labels)
            check_mask_label_sizes(mask_labels, pixel_values)
        hidden_states = _hidden_states(features, output_hidden_states)  # before the heads: see unstack_decoder_states
        if config.segmentation_type != "mask_classification":
            output = self._per_pixel_forward(features, mask_labels, class_labels, hidden_states,
                                             output_auxiliary_logits, pixel_mask)
            return output if return_dict else output.to_tuple()
        states = features.decoder_states  # (L, B, Q, D)
        if not (output_auxiliary_logits or (compute_loss and config.use_auxiliary_loss)):
            states = states[-1:]
        class_logits = self.class_predictor(states)  # (L', B, Q, K+1)
        mask_embeddings = self.mask_embedder(states).transpose(0, 1)  # (B, L', Q, C_E)
        fpn_map = features.fpn_maps[-1]
        # The per-pixel embeddings are part of the output (as in transformers), so the masks read them.
        pixel_embeddings = self.model.pixel_decoder.mask_projection(fpn_map)  # (B, C_E, H/4, W/4)
        masks = torch.einsum("blqc,bchw->lbqhw", mask_embeddings, pixel_embeddings)
        if config.mask_pooled_classification:
            class_logits = self.add_mask_pooled_logits(class_logits, masks, pixel_embeddings, fpn_map,
                                                       features.valid_masks)
        auxiliary_logits = [
            {"class_queries_logits": c, "masks_queries_logits": m} for c, m in zip(class_logits[:-1], masks[:-1])
        ]
        loss = loss_dict = None
        if compute_loss:
            supervised = slice(None) if config.use_auxiliary_loss else slice(-1, None)
            num_supervised = class_logits[supervised].shape[0]
            embeddings = mask_embeddings[:, -num_supervised:]
            projection = self.model.pixel_decoder.mask_projection

            def supervised_mask_logits(layer: Tensor, image: Tensor, query: Tensor) -> Tensor:
                # Only matched masks get a gradient: recompute just those (the full logits serve matching).
                return matched_mask_logits(embeddings, fpn_map, projection, image, layer, query)

            loss, loss_dict = self.criterion(class_logits[supervised], masks[supervised], mask_labels,
                                             class_labels, num_masks, mask_logits_fn=supervised_mask_logits)
        output = MaskFormerForUniversalSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=masks[-1],
            auxiliary_logits=auxiliary_logits if output_auxiliary_logits else None,
            encoder_last_hidden_state=features.backbone_maps[-1],
            pixel_decoder_last_hidden_state=pixel_embeddings,
            transformer_decoder_last_hidden_state=features.decoder_states[-1],
            **hidden_states,
            **_attentions(features),
            pixel_mask=pixel_mask,
        )
        return output if return_dict else output.to_tuple()

    def add_mask_pooled_logits(self, class_logits: Tensor, masks: Tensor, pixel_embeddings: Tensor | None,
                               fpn_map: Tensor, valid_masks: list[Tensor] | None) -> Tensor:
        """``class_logits`` `(L, B, Q, K+1)` plus the logits that ``pooled_class_predictor`` reads from each
        query's mask-pooled pixel embeddings (``config.mask_pooled_classification``); masks `(L, B, Q, h, w)`,
        pixel embeddings `(B, C_E, h, w)` (None: projected from the stride-4 ``fpn_map``), the backbone
        levels' valid-position masks (None: no padding; the first is the stride-4 one)."""
        if pixel_embeddings is None:
            pixel_embeddings = self.model.pixel_decoder.mask_projection(fpn_map)
        valid = None if valid_masks is None else valid_masks[0]
        return class_logits + self.pooled_class_predictor(mask_pooled_embeddings(masks, pixel_embeddings, valid))

    def _per_pixel_forward(self, features: MaskFormerFeatures, mask_labels: list[Tensor] | None,
                           class_labels: list[Tensor] | None, hidden_states: dict[str, Any],
                           output_auxiliary_logits: bool, pixel_mask: Tensor | None) -> MaskFormerForUniversalSegmentationOutput:
        """The baselines' heads and loss: class logit maps `(L, B, K, h, w)`, per-pixel cross-entropy."""
        config, projection, fpn_map = self.config, self.model.pixel_decoder.mask_projection, features.fpn_maps[-1]
        pixel_embeddings = projection(fpn_map)  # (B, C_E, h, w), returned as in transformers
        if config.segmentation_type == "per_pixel":
            class_maps = self.pixel_classifier(pixel_embeddings)[None]  # (1, B, K, h, w)
        else:
            states = features.decoder_states
            deep = output_auxiliary_logits or (mask_labels is not None and config.use_auxiliary_loss)
            embeddings = self.mask_embedder(states if deep else states[-1:])  # (L', B, K, C_E)
            class_maps = torch.einsum("lbqc,bchw->lbqhw", embeddings, pixel_embeddings)  # (L', B, K, h, w)
        loss = loss_dict = None
        if mask_labels is not None:
            supervised = class_maps if config.use_auxiliary_loss else class_maps[-1:]
            loss, loss_dict = self.criterion(supervised, mask_labels, class_labels)
        class_logits, masks = class_maps_as_queries(class_maps)
        auxiliary = [{"class_queries_logits": c, "masks_queries_logits": m} for c, m in zip(class_logits[:-1], masks[:-1])]
        return MaskFormerForUniversalSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=masks[-1],
            auxiliary_logits=auxiliary if output_auxiliary_logits and config.segmentation_type == "per_pixel_plus" else None,
            encoder_last_hidden_state=features.backbone_maps[-1],
            pixel_decoder_last_hidden_state=pixel_embeddings,
            transformer_decoder_last_hidden_state=_last(features.decoder_states),
            **hidden_states,
            **_attentions(features),
            pixel_mask=pixel_mask,
        )


# The public names. The classes themselves are named apart from transformers' MaskFormer classes, which
# transformers resolves by ``__name__`` (see MaskFormerHfConfig).
MaskFormerPreTrainedModel = MaskFormerHfPreTrainedModel
MaskFormerModel = MaskFormerHfModel
MaskFormerForUniversalSegmentation = MaskFormerHfForUniversalSegmentation
