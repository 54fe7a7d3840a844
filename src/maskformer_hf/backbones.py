"""One adapter from well-kept backbone libraries to the four feature maps MaskFormer needs.

Two routes, chosen by the config:

* ``config.backbone_config is None``: a timm ``features_only`` model named ``config.backbone``
  (any timm model with feature maps at strides 4, 8, 16 and 32: ResNets, deep-stem ResNets,
  ConvNeXt, Swin, ...).
* otherwise: a transformers backbone built with ``AutoBackbone`` from ``config.backbone_config``
  (MaskFormer-Swin and ResNet, the layouts of the Hub checkpoints). MaskFormer-Swin configs build
  our own :class:`~maskformer_hf.modeling_maskformer_swin.MaskFormerSwinBackbone` instead: the same
  parameters and function as transformers' module, faster to train on a CPU.

Construction never touches the network unless ``config.use_pretrained_backbone`` is set; it works
under ``torch.device("meta")``, and :meth:`MaskFormerBackbone.init_body` initialises the body again
(for transformers' ``init_weights()`` after ``to_empty``, and for weights a checkpoint lacks).

Padded batches: a backbone cannot be told which pixels are padding, so an image padded inside a
batch would otherwise see the padding through its receptive field (and, for Swin, through its
attention windows) and come out different from the same image alone. When ``pixel_mask`` says
that images have different valid sizes, :meth:`MaskFormerBackbone.forward` runs the backbone on
each image's valid region (images of equal size together) and places the maps, zero-filled, into
batch tensors; it also returns the valid region of every map, which the pixel decoder and the
transformer module honour.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from .checkpoints import load_checkpoint_state_dict
from .configuration_maskformer import MaskFormerConfig
from .modeling_maskformer_swin import MaskFormerSwinBackbone

logger = logging.getLogger(__name__)

STRIDES = (4, 8, 16, 32)


def _build_timm(config: MaskFormerConfig, pretrained: bool | None = None) -> nn.Module:
    import timm

    pretrained = config.use_pretrained_backbone if pretrained is None else pretrained
    kwargs = dict(features_only=True, pretrained=pretrained, **config.backbone_kwargs)
    if ":" not in config.backbone and not timm.is_model(config.backbone):  # hf-hub:/local-dir: names load a config
        raise ValueError(f"backbone: {config.backbone!r} is not a timm model name (e.g. 'resnet50', "
                         f"'swin_tiny_patch4_window7_224'); set backbone_config for a transformers backbone")
    try:
        # Vision transformers with windows (Swin, ...) default to a fixed input size; MaskFormer
        # feeds any size. Models that do not know the argument reject it with a TypeError.
        return timm.create_model(config.backbone, strict_img_size=False, **kwargs)
    except TypeError:
        return timm.create_model(config.backbone, **kwargs)


def _load_swin_imagenet_weights(body: nn.Module, name_or_path: str) -> None:
    """Load an ImageNet Swin checkpoint (e.g. ``microsoft/swin-tiny-patch4-window7-224``) into MaskFormer-Swin."""
    state_dict = load_checkpoint_state_dict(name_or_path)
    state_dict = {k.removeprefix("swin."): v for k, v in state_dict.items()}
    result = body.model.load_state_dict(state_dict, strict=False)
    # relative_position_index is a deterministic buffer that newer checkpoints do not store.
    missing = [k for k in result.missing_keys if not k.endswith("relative_position_index")]
    if missing:
        raise ValueError(f"use_pretrained_backbone: {name_or_path} lacks backbone weights {missing[:5]}")
    logger.info("loaded ImageNet weights from %s (ignored: %s)", name_or_path, result.unexpected_keys)


def _mark_initialised(module: nn.Module) -> None:
    """Keep transformers' post_init of the enclosing model from re-initialising loaded weights."""
    for submodule in module.modules():
        submodule._is_hf_initialized = True


def _build_transformers(config: MaskFormerConfig) -> nn.Module:
    from transformers import AutoBackbone
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    backbone_config = config.backbone_config
    if backbone_config.model_type == "maskformer-swin" and not backbone_config.use_absolute_embeddings:
        # Ours: transformers' parameter layout and function, about 1.4x faster to train on a CPU.
        body = MaskFormerSwinBackbone(backbone_config)
        if config.use_pretrained_backbone:
            _load_swin_imagenet_weights(body, config.backbone)
            _mark_initialised(body)
        return body
    backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(backbone_config)] \
        if type(backbone_config) in MODEL_FOR_BACKBONE_MAPPING else None
    if backbone_config._attn_implementation == "sdpa" and not getattr(backbone_class, "_supports_sdpa", False):
        # "sdpa" asked of the whole model (transformers hands it to the sub-configs): a backbone without
        # it (a ResNet has no attention at all) takes its own default rather than failing to build.
        backbone_config._attn_implementation = None
    if not config.use_pretrained_backbone:
        body = AutoBackbone.from_config(backbone_config)
    elif backbone_config.model_type == "maskformer-swin":
        body = AutoBackbone.from_config(backbone_config)
        _load_swin_imagenet_weights(body, config.backbone)
        _mark_initialised(body)
    else:
        # The concrete class: AutoBackbone.from_pretrained asks the Hub even for a local folder.
        body = backbone_class.from_pretrained(config.backbone, out_features=backbone_config.out_features,
                                              attn_implementation=backbone_config._attn_implementation)
        _mark_initialised(body)
    if backbone_config.model_type == "maskformer-swin":
        # Its classification-head LayerNorm feeds nothing MaskFormer uses; a parameter without a
        # gradient stalls DistributedDataParallel's gradient reduction, so it goes.
        body.model.layernorm = nn.Identity()
    return body


def _crop_sizes(pixel_mask: Tensor) -> list[tuple[int, int]]:
    """Valid (height, width) of every image of a padded batch; padding sits bottom/right.

    Args:
        pixel_mask: `(batch_size, height, width)`, 1 on real pixels, 0 on padding.
    """
    rows = pixel_mask.any(dim=2)  # (B, H)
    cols = pixel_mask.any(dim=1)  # (B, W)
    heights = (rows * torch.arange(1, rows.shape[1] + 1, device=rows.device)).amax(dim=1)
    widths = (cols * torch.arange(1, cols.shape[1] + 1, device=cols.device)).amax(dim=1)
    return [(int(h), int(w)) for h, w in zip(heights.tolist(), widths.tolist())]


class MaskFormerBackbone(nn.Module):
    """Backbone adapter: ``forward(pixel_values, pixel_mask) -> (features, masks)``.

    ``features`` are four maps `(batch_size, channels[i], H / stride[i], W / stride[i])`, NCHW.
    ``masks`` is ``None`` for an unpadded batch, else four bool maps `(batch_size, h_i, w_i)`
    marking each image's valid positions at each level.
    """

    def __init__(self, config: MaskFormerConfig) -> None:
        super().__init__()
        if config.backbone_config is not None:
            self.body = _build_transformers(config)
            self.channels = list(self.body.channels)
            self._indices = list(range(len(self.channels)))
            self._channels_last = False
        else:
            self.body = _build_timm(config)
            self._timm_config = config  # to build a fresh body in init_body
            reductions = list(self.body.feature_info.reduction())
            self._indices = []
            for stride in STRIDES:
                matches = [i for i, r in enumerate(reductions) if r == stride]
                if not matches:
                    raise ValueError(
                        f"backbone: timm model {config.backbone!r} has feature maps at strides {reductions}; "
                        f"MaskFormer needs strides {list(STRIDES)}"
                    )
                self._indices.append(matches[-1])
            self.channels = [self.body.feature_info.channels()[i] for i in self._indices]
            self._channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        if len(self.channels) != 4:
            raise ValueError(f"backbone: expected 4 feature maps (strides 4..32), the backbone gives {len(self.channels)}")

    @torch.no_grad()
    def init_body(self, modules: list[nn.Module] | None = None) -> None:
        """Initialise the body's ``modules`` (default: all) again as the body was built: randomly, never
        with ImageNet weights, buffers included; what transformers' ``init_weights()`` needs after
        ``to_empty`` and loading needs for weights a checkpoint lacks.

        A timm body takes those modules' parameters and buffers from a fresh timm model of the same
        name; our MaskFormer-Swin applies its own scheme (and rebuilds its index buffers). A transformers
        body is a ``PreTrainedModel`` that transformers initialises itself: left alone. Tensors marked as
        loaded (``_is_hf_initialized``) are kept.
        """
        modules = list(self.body.modules()) if modules is None else modules
        if isinstance(self.body, MaskFormerSwinBackbone):
            for module in modules:
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
                self.body._init_weights(module)
        elif getattr(self, "_timm_config", None) is not None and modules:
            fresh = dict(_build_timm(self._timm_config, pretrained=False).named_modules())
            names = {id(module): name for name, module in self.body.named_modules()}
            for module in modules:
                source = fresh[names[id(module)]]
                tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                for name, tensor in tensors:
                    if tensor is not None and not getattr(tensor, "_is_hf_initialized", False):
                        tensor.copy_(getattr(source, name))

    def _features(self, pixel_values: Tensor) -> list[Tensor]:
        outputs = self.body(pixel_values)
        if hasattr(outputs, "feature_maps"):
            outputs = outputs.feature_maps
        features = [outputs[i] for i in self._indices]
        if self._channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[list[Tensor], list[Tensor] | None]:
        if pixel_mask is None:
            return self._features(pixel_values), None
        batch_size, _, height, width = pixel_values.shape
        sizes = _crop_sizes(pixel_mask)
        if all(size == (height, width) for size in sizes):
            return self._features(pixel_values), None
        if any(h == 0 or w == 0 for h, w in sizes):
            raise ValueError("pixel_mask: every image needs at least one valid (non-zero) pixel")

        # Run each distinct valid size once, images of that size together.
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size, []).append(index)
        per_group = {
            size: self._features(pixel_values[idx, :, : size[0], : size[1]]) for size, idx in groups.items()
        }
        features, masks = [], []
        for level, stride in enumerate(STRIDES):
            maps = [per_group[size][level] for size in groups]
            out_h = max([math.ceil(height / stride)] + [m.shape[-2] for m in maps])
            out_w = max([math.ceil(width / stride)] + [m.shape[-1] for m in maps])
            first = maps[0]
            level_features = first.new_zeros(batch_size, first.shape[1], out_h, out_w)
            level_mask = torch.zeros(batch_size, out_h, out_w, dtype=torch.bool, device=first.device)
            for (size, idx), fmap in zip(groups.items(), maps):
                h, w = fmap.shape[-2:]
                index = torch.tensor(idx, device=first.device)
                level_features[index, :, :h, :w] = fmap
                level_mask[index, :h, :w] = True
            features.append(level_features)
            masks.append(level_mask)
        return features, masks
