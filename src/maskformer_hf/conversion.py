"""transformers' MaskFormer -> ours: the config field map and the state-dict key map, as data.

Hub checkpoints (``facebook/maskformer-*``) store transformers 4.x key names; an instantiated
transformers 5 model uses a few new ones (``o_proj``, ``mlp.fc1``). Both are handled. The backbone
(MaskFormer-Swin or ResNet from transformers) is reused as is, so its keys only move.

The original detectron2 checkpoints, and :func:`~maskformer_hf.conversion_detectron2.convert_checkpoint`
(either kind of source to a folder of ours), are in :mod:`maskformer_hf.conversion_detectron2`;
nothing here imports it, so the code saved with every checkpoint stays free of it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from torch import Tensor, nn

from .checkpoints import _load_weight_file, _resolve, load_checkpoint_config, load_checkpoint_state_dict  # noqa: F401
from .configuration_maskformer import DETR_FIELDS, MaskFormerConfig
from .modeling_maskformer import MaskFormerForUniversalSegmentation

# (pattern on the transformers key, replacement giving our key); first match wins.
KEY_MAP: list[tuple[str, str]] = [
    (r"^model\.pixel_level_module\.encoder\.", "model.backbone.body."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.stem\.0\.", "model.pixel_decoder.stem.conv."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.stem\.1\.", "model.pixel_decoder.stem.norm."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.proj\.0\.", r"model.pixel_decoder.lateral_convs.\1.conv."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.proj\.1\.", r"model.pixel_decoder.lateral_convs.\1.norm."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.block\.0\.", r"model.pixel_decoder.output_convs.\1.conv."),
    (r"^model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.block\.1\.", r"model.pixel_decoder.output_convs.\1.norm."),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "model.pixel_decoder.mask_projection."),
    (r"^model\.transformer_module\.queries_embedder\.", "model.transformer_module.query_embeddings."),
    (r"^model\.transformer_module\.input_projection\.", "model.transformer_module.input_projection."),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "model.transformer_module.decoder_norm."),
    (r"^model\.transformer_module\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.(?:out_proj|o_proj)\.",
     r"model.transformer_module.decoder_layers.\1.\2.out_proj."),
    (r"^model\.transformer_module\.decoder\.layers\.(\d+)\.(?:mlp\.)?(fc1|fc2)\.",
     r"model.transformer_module.decoder_layers.\1.ffn.\2."),
    (r"^model\.transformer_module\.decoder\.layers\.(\d+)\.", r"model.transformer_module.decoder_layers.\1."),
    (r"^mask_embedder\.(\d+)\.0\.", r"mask_embedder.layers.\1."),
    (r"^class_predictor\.", "class_predictor."),
]
# Inside a decoder layer, transformers' "encoder_attn" is our "cross_attn".
_RENAMES = [(".encoder_attn.", ".cross_attn."), (".encoder_attn_layer_norm.", ".cross_attn_layer_norm.")]
# Keys with no counterpart in the model: the loss's class weights (rebuilt from the config) and the
# Swin backbone's classification-head LayerNorm (unused by MaskFormer, removed from our backbone).
DROPPED = (r"^criterion\.", r"^model\.pixel_level_module\.encoder\.model\.layernorm\.")

# transformers MaskFormerConfig field -> ours (same name unless listed); DETR decoder fields too.
CONFIG_FIELDS = ("fpn_feature_size", "mask_feature_size", "no_object_weight", "use_auxiliary_loss",
                 "cross_entropy_weight", "mask_weight", "dice_weight", "init_std", "init_xavier_std",
                 "output_auxiliary_logits", "id2label", "label2id")


def convert_key(key: str) -> str | None:
    """Our name for a transformers MaskFormer state-dict key (None: the key is dropped)."""
    if any(re.match(p, key) for p in DROPPED):
        return None
    for pattern, replacement in KEY_MAP:
        if re.match(pattern, key):
            new = re.sub(pattern, replacement, key)
            if new.startswith("model.transformer_module.decoder_layers."):
                for old, ours in _RENAMES:
                    new = new.replace(old, ours)
            return new
    raise ValueError(f"convert_key: no rule for transformers MaskFormer key {key!r}")


def convert_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename every key of a transformers MaskFormer state dict (4.x or 5.x names) to ours."""
    converted = {}
    for key, value in state_dict.items():
        new = convert_key(key)
        if new is not None:
            converted[new] = value
    return converted


def config_from_transformers(hf_config: dict[str, Any] | Any) -> MaskFormerConfig:
    """Our config from a transformers ``MaskFormerConfig`` (object or its ``to_dict()``)."""
    hf = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    if hf.get("model_type") != "maskformer":
        raise ValueError(f"config_from_transformers: expected model_type 'maskformer', got {hf.get('model_type')!r}")
    backbone_config = hf.get("backbone_config")
    if not backbone_config or hf.get("use_timm_backbone"):
        raise ValueError("config_from_transformers: only checkpoints with a transformers backbone_config are supported")
    decoder = hf.get("decoder_config") or {}
    values: dict[str, Any] = {k: hf[k] for k in CONFIG_FIELDS if k in hf}
    values.update({ours: decoder[theirs] for theirs, ours in DETR_FIELDS.items() if theirs in decoder})
    values["id2label"] = {int(k): v for k, v in values.get("id2label", {}).items()} or None
    if values["id2label"] is None:
        values.pop("id2label")
        values.pop("label2id", None)
    return MaskFormerConfig(backbone=None, backbone_config=backbone_config, encoder_layers=0, **values)


def is_transformers_checkpoint(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> bool:
    """True when the checkpoint is a transformers MaskFormer (``model_type: "maskformer"``)."""
    config = load_checkpoint_config(name_or_path, **hub_kwargs)
    return config is not None and config.get("model_type") == "maskformer"


def convert_from_transformers(hf_model_or_path: nn.Module | str | os.PathLike, **hub_kwargs: Any):
    """Our :class:`MaskFormerForUniversalSegmentation` with the weights of a transformers MaskFormer.

    Args:
        hf_model_or_path: a ``transformers.MaskFormerForInstanceSegmentation``, or the folder / Hub
            id of its checkpoint (e.g. ``"facebook/maskformer-swin-base-ade"``).
    """
    if isinstance(hf_model_or_path, nn.Module):
        config = config_from_transformers(hf_model_or_path.config)
        state_dict = hf_model_or_path.state_dict()
    else:
        hf_config = load_checkpoint_config(hf_model_or_path, **hub_kwargs)
        if hf_config is None:
            raise ValueError(f"convert_from_transformers: no config.json in {hf_model_or_path}")
        config = config_from_transformers(hf_config)
        state_dict = load_checkpoint_state_dict(hf_model_or_path, **hub_kwargs)
    model = MaskFormerForUniversalSegmentation(config)
    result = model.load_state_dict(convert_state_dict(state_dict), strict=False)
    # Swin's relative_position_index is a deterministic buffer (built with the model) that some
    # checkpoints do not store; anything else missing or left over is an error.
    missing = [k for k in result.missing_keys if not k.endswith("relative_position_index")]
    if missing or result.unexpected_keys:
        raise ValueError(f"convert_from_transformers: checkpoint and model disagree: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return model.eval()

