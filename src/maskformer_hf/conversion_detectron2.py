"""The original MaskFormer release (detectron2 ``model_final_*.pkl`` / ``.pth``) -> ours, and
:func:`convert_checkpoint`, which turns either that or a transformers checkpoint into a folder of ours.

The key map is data (:data:`RULES`, :data:`PACKED_RULES`); the config is not stored in these files
and is inferred from the weights' shapes (:func:`config_from_detectron2`). Every checkpoint key
must be consumed and every model key filled, or the conversion fails naming the keys.

Assumptions that the weights cannot show (true of every config of the MaskFormer release):

* ResNets are torchvision-style, the stride in the 3x3 convolution (detectron2
  ``RESNETS.STRIDE_IN_1X1: False``), FrozenBatchNorm with eps 1e-5, as timm's ResNets; a
  checkpoint trained with the stride in the 1x1 convolution has the same keys and shapes and would
  convert into a different network.
* The transformer is post-norm (``PRE_NORM: False``) and its attention heads (``NHEADS``), which
  no weight reveals, are 8 unless ``decoder_attention_heads=`` says otherwise.
* Images are RGB; ``pixel_mean`` / ``pixel_std``, when the file stores them, give the processor's
  normalisation (divided by 255).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import pickletools
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoints import _resolve
from .configuration_maskformer import PRESETS, MaskFormerConfig
from .conversion import convert_from_transformers, is_transformers_checkpoint
from .image_processing_maskformer import MaskFormerImageProcessor
from .model_card import CONVERSION_INFO_FILE
from .modeling_maskformer import MaskFormerForUniversalSegmentation

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reading detectron2 weight files (``model_final_*.pkl`` / ``.pth``): the package's only unpickling.
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric")
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
# What a pickle of numpy arrays in (ordered) dicts needs, and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((module, name) for module in _NUMPY_MODULES[1:] for name in ("_reconstruct", "scalar", "_frombuffer")),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes written by Python 3 with protocol 2
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :data:`_ALLOWED_GLOBALS` (numpy arrays, dicts)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a detectron2 weight file holds only "
                                         f"numpy arrays")
        if module.startswith("numpy.core.") and _NUMPY_2:
            module = module.replace("numpy.core.", "numpy._core.", 1)  # numpy 2 renamed numpy.core
        return super().find_class(module, name)


def _to_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"load_detectron2_state_dict: {key!r} is not a numeric array (dtype {array.dtype})")
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def load_detectron2_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``"model"`` state dict of a detectron2 checkpoint, as tensors.

    ``.pkl`` files (the model zoo's ``model_final_*.pkl``) are pickles of
    ``{"model": {key: numpy.ndarray}, "__author__": ..., ...}``; they are read with an unpickler that
    accepts numpy arrays and dicts only, and a warning is logged, since a pickle can run code.
    ``.pth`` files hold ``{"model": {key: torch.Tensor}, ...}`` and are read with
    ``torch.load(weights_only=True)``. Top-level entries other than ``"model"`` are ignored.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"load_detectron2_state_dict: no file {path}")
    if path.endswith(".pkl"):
        logger.warning("reading the pickle file %s: pickle files can run code when loaded, so convert only files "
                       "from a trusted source (loading is restricted to numpy arrays and dicts)", path)
        with open(path, "rb") as f:
            try:
                checkpoint = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as error:
                raise ValueError(f"load_detectron2_state_dict: {path}: {error}") from error
    elif path.endswith(".pth"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"load_detectron2_state_dict: expected a .pkl or .pth file, got {path}")
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"load_detectron2_state_dict: expected a dict with a 'model' state dict in {path}, "
                         f"found {found}")
    return {str(key): _to_tensor(key, value) for key, value in checkpoint["model"].items()}


_MODEL_KEY_PREFIXES = ("backbone.", "sem_seg_head.")  # how every key of a detectron2 MaskFormer starts


def _holds_detectron2_model(pickled: Any) -> bool:
    """Whether a pickle stream (file or bytes) has a ``"model"`` key followed by a detectron2 model key.

    The stream is read opcode by opcode with ``pickletools`` (nothing is executed) and only up to
    that key, which comes before the arrays of all but the first entry.
    """
    seen_model = False
    for _, arg, _ in pickletools.genops(pickled):
        if not isinstance(arg, str):
            continue
        if arg == "model":
            seen_model = True
        elif seen_model and arg.startswith(_MODEL_KEY_PREFIXES):
            return True
    return False


def is_detectron2_checkpoint(path: str | os.PathLike) -> bool:
    """True for a local ``.pkl`` / ``.pth`` file holding a detectron2 ``{"model": {"backbone.*": ...}}`` dict.

    ``.pkl`` files and the pickle inside zip ``.pth`` files are scanned, not loaded.
    """
    path = os.fspath(path)
    if not (path.endswith((".pkl", ".pth")) and os.path.isfile(path)):
        return False
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the object graph is one pickle in the archive
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                return bool(members) and _holds_detectron2_model(archive.read(members[0]))
        if path.endswith(".pth"):  # torch's legacy format, several pickles: loaded safely instead
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
            return isinstance(model, Mapping) and any(str(k).startswith(_MODEL_KEY_PREFIXES) for k in model)
        with open(path, "rb") as f:
            return _holds_detectron2_model(f)
    except Exception:  # not a pickle, or a damaged one: not a checkpoint we can read
        return False


_BODY = "model.backbone.body."
_SWIN = _BODY + "model."
_TM = "model.transformer_module."
_PD = r"^sem_seg_head\.pixel_decoder\."
_PR = r"^sem_seg_head\.predictor\."
_BLOCK = r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\."
_SWIN_BLOCK = _SWIN + r"encoder.layers.\1.blocks.\2."
_DEC = _PR + r"transformer\.decoder\.layers\.(\d+)\."
# Encoder layers: in the predictor, or ("R50 + 6 Enc", TransformerEncoderPixelDecoder) in the pixel decoder.
_ENC = r"^sem_seg_head\.(?:predictor|pixel_decoder)\.transformer\.encoder\.layers\.(\d+)\."
_PD_ENCODER = ("sem_seg_head.pixel_decoder.transformer.", "sem_seg_head.pixel_decoder.input_proj.")

Replacement = str | Callable[[re.Match], str]


def _stage(template: str) -> Callable[[re.Match], str]:
    """detectron2's res2..res5 are timm's layer1..layer4; group 2 is the block, group 3 the conv."""
    return lambda m: template.format(layer=int(m[1]) - 1, block=m[2], conv=m[3] if m.lastindex >= 3 else "")


def _fpn(template: str) -> Callable[[re.Match], str]:
    """detectron2 numbers the FPN levels 1 (res2) to 3 (res4); our lists run coarse to fine (0 = res4)."""
    return lambda m: template.format(3 - int(m[1]))


_RESNET_STEM: list[tuple[str, Replacement]] = [
    (r"^backbone\.stem\.conv1\.weight$", _BODY + "conv1.weight"),
    (r"^backbone\.stem\.conv1\.norm\.", _BODY + "bn1."),
]
# The deep ("R101c", DeepLab) stem: three 3x3 convolutions, timm's conv1 = Sequential(conv, bn, act, ...).
_DEEP_STEM: list[tuple[str, Replacement]] = [
    (r"^backbone\.stem\.conv1\.weight$", _BODY + "conv1.0.weight"),
    (r"^backbone\.stem\.conv1\.norm\.", _BODY + "conv1.1."),
    (r"^backbone\.stem\.conv2\.weight$", _BODY + "conv1.3.weight"),
    (r"^backbone\.stem\.conv2\.norm\.", _BODY + "conv1.4."),
    (r"^backbone\.stem\.conv3\.weight$", _BODY + "conv1.6.weight"),
    (r"^backbone\.stem\.conv3\.norm\.", _BODY + "bn1."),
]
# (pattern on the detectron2 key, our key); patterns ending in "\." keep the rest of the key.
RULES: list[tuple[str, Replacement]] = [
    # ResNet blocks
    (r"^backbone\.res([2-5])\.(\d+)\.conv(\d)\.weight$", _stage(_BODY + "layer{layer}.{block}.conv{conv}.weight")),
    (r"^backbone\.res([2-5])\.(\d+)\.conv(\d)\.norm\.", _stage(_BODY + "layer{layer}.{block}.bn{conv}.")),
    (r"^backbone\.res([2-5])\.(\d+)\.shortcut\.weight$", _stage(_BODY + "layer{layer}.{block}.downsample.0.weight")),
    (r"^backbone\.res([2-5])\.(\d+)\.shortcut\.norm\.", _stage(_BODY + "layer{layer}.{block}.downsample.1.")),
    # Swin (D2SwinTransformer -> transformers' MaskFormer-Swin names)
    (r"^backbone\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
    (_BLOCK + r"norm1\.", _SWIN_BLOCK + "layernorm_before."),
    (_BLOCK + r"norm2\.", _SWIN_BLOCK + "layernorm_after."),
    (_BLOCK + r"attn\.relative_position_(bias_table|index)$", _SWIN_BLOCK + r"attention.self.relative_position_\3"),
    (_BLOCK + r"attn\.proj\.", _SWIN_BLOCK + "attention.output.dense."),
    (_BLOCK + r"mlp\.fc1\.", _SWIN_BLOCK + "intermediate.dense."),
    (_BLOCK + r"mlp\.fc2\.", _SWIN_BLOCK + "output.dense."),
    (r"^backbone\.layers\.(\d+)\.downsample\.", _SWIN + r"encoder.layers.\1.downsample."),
    (r"^backbone\.norm(\d)\.", _BODY + r"hidden_states_norms.\1."),
    # Pixel decoder (BasePixelDecoder): layer_4 on res5 is our stem; adapter_i / layer_i on res(i+1).
    (_PD + r"layer_4\.weight$", "model.pixel_decoder.stem.conv.weight"),
    (_PD + r"layer_4\.norm\.", "model.pixel_decoder.stem.norm."),
    (_PD + r"adapter_([1-3])\.weight$", _fpn("model.pixel_decoder.lateral_convs.{}.conv.weight")),
    (_PD + r"adapter_([1-3])\.norm\.", _fpn("model.pixel_decoder.lateral_convs.{}.norm.")),
    (_PD + r"layer_([1-3])\.weight$", _fpn("model.pixel_decoder.output_convs.{}.conv.weight")),
    (_PD + r"layer_([1-3])\.norm\.", _fpn("model.pixel_decoder.output_convs.{}.norm.")),
    (_PD + r"mask_features\.", "model.pixel_decoder.mask_projection."),
    # Predictor (TransformerPredictor, DETR post-norm layers)
    (_PR + r"query_embed\.weight$", _TM + "query_embeddings.weight"),
    (_PR + r"input_proj\.", _TM + "input_projection."),
    (_PD + r"input_proj\.", _TM + "input_projection."),  # 6 Enc: res5 -> d before the encoder
    (_PR + r"transformer\.decoder\.norm\.", _TM + "decoder_norm."),
    (_DEC + r"self_attn\.out_proj\.", _TM + r"decoder_layers.\1.self_attn.out_proj."),
    (_DEC + r"multihead_attn\.out_proj\.", _TM + r"decoder_layers.\1.cross_attn.out_proj."),
    (_DEC + r"linear1\.", _TM + r"decoder_layers.\1.ffn.fc1."),
    (_DEC + r"linear2\.", _TM + r"decoder_layers.\1.ffn.fc2."),
    (_DEC + r"norm1\.", _TM + r"decoder_layers.\1.self_attn_layer_norm."),
    (_DEC + r"norm2\.", _TM + r"decoder_layers.\1.cross_attn_layer_norm."),
    (_DEC + r"norm3\.", _TM + r"decoder_layers.\1.final_layer_norm."),
    (_ENC + r"self_attn\.out_proj\.", _TM + r"encoder_layers.\1.self_attn.out_proj."),
    (_ENC + r"linear1\.", _TM + r"encoder_layers.\1.ffn.fc1."),
    (_ENC + r"linear2\.", _TM + r"encoder_layers.\1.ffn.fc2."),
    (_ENC + r"norm1\.", _TM + r"encoder_layers.\1.self_attn_layer_norm."),
    (_ENC + r"norm2\.", _TM + r"encoder_layers.\1.final_layer_norm."),
    (_PR + r"class_embed\.", "class_predictor."),
    (_PR + r"mask_embed\.layers\.(\d)\.", r"mask_embedder.layers.\1."),
]
# Packed q, k, v (in that order along dim 0) -> three keys of ours.
PACKED_RULES: list[tuple[str, Callable[[re.Match], list[str]]]] = [
    (_BLOCK + r"attn\.qkv\.(weight|bias)$",
     lambda m: [f"{_SWIN}encoder.layers.{m[1]}.blocks.{m[2]}.attention.self.{p}.{m[3]}"
                for p in ("query", "key", "value")]),
    (r"^sem_seg_head\.(?:predictor|pixel_decoder)\.transformer\.(encoder|decoder)\.layers\.(\d+)\."
     r"(self_attn|multihead_attn)\.in_proj_(weight|bias)$",
     lambda m: [f"{_TM}{m[1]}_layers.{m[2]}.{'self_attn' if m[3] == 'self_attn' else 'cross_attn'}.{p}_proj.{m[4]}"
                for p in "qkv"]),
]
# No counterpart in the model: the loss's class weights (rebuilt from the config), input statistics.
DROPPED = (r"^criterion\.", r"^pixel_mean$", r"^pixel_std$")
# Built by the model and checked against the checkpoint's copy, or not stored at all.
_DETERMINISTIC = ("relative_position_index", "num_batches_tracked")
# (bottleneck blocks?, blocks per stage) -> timm ResNet.
_RESNETS = {(True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101", (True, (3, 8, 36, 3)): "resnet152",
            (False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34"}


def check_supported_layout(keys: Sequence[str]) -> None:
    """Raise ``ValueError`` for detectron2 layouts that our architecture cannot express."""
    if any(k.startswith(_PD_ENCODER) for k in keys):
        # "R50 + 6 Enc": the pixel decoder's encoder output feeds the FPN top and, unprojected, the predictor
        # (our encoder_feeds_pixel_decoder). A second encoder or projection in the predictor has no place here.
        extra = [k for k in keys if k.startswith(("sem_seg_head.predictor.input_proj.",
                                                  "sem_seg_head.predictor.transformer.encoder."))]
        if extra:
            raise ValueError(f"convert_from_detectron2: the pixel decoder holds a transformer encoder and the "
                             f"predictor has its own input projection or encoder too ({extra[:3]}); this layout "
                             f"is not supported")
    if any("transformer_cross_attention_layers" in k or "sampling_offsets" in k for k in keys):
        raise ValueError("convert_from_detectron2: this looks like a Mask2Former checkpoint (masked attention / "
                         "deformable pixel decoder); only MaskFormer checkpoints are supported")


def _rename(key: str, deep_stem: bool) -> list[str] | None:
    for pattern, make in PACKED_RULES:
        match = re.match(pattern, key)
        if match:
            return make(match)
    for pattern, replacement in (_DEEP_STEM if deep_stem else _RESNET_STEM) + RULES:
        if re.match(pattern, key):
            return [re.sub(pattern, replacement, key, count=1)]
    return None


def convert_detectron2_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Our state dict from a detectron2 MaskFormer one.

    Returns:
        ``(converted, origin)``: our key -> tensor (packed q/k/v split in three), and our key -> the
        detectron2 key it came from (for error messages).
    """
    check_supported_layout(list(state_dict))
    deep_stem = "backbone.stem.conv2.weight" in state_dict
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmatched = []
    for key, value in state_dict.items():
        if any(re.match(pattern, key) for pattern in DROPPED):
            continue
        names = _rename(key, deep_stem)
        if names is None:
            unmatched.append(key)
            continue
        if len(names) > 1 and value.shape[0] % len(names):
            raise ValueError(f"convert_from_detectron2: {key!r} of shape {tuple(value.shape)} does not split into "
                             f"{len(names)} equal parts (packed q, k, v)")
        for name, part in zip(names, value.chunk(len(names), dim=0) if len(names) > 1 else [value]):
            converted[name] = part
            origin[name] = key
    if unmatched:
        raise ValueError(f"convert_from_detectron2: no rule for {len(unmatched)} checkpoint key(s): {unmatched}")
    return converted, origin


# ---------------------------------------------------------------------------------------------
# The config, from the weights' shapes.
def _count(keys: Sequence[str], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` among ``keys`` (0 when none matches)."""
    found = [int(m[1]) for m in (re.match(pattern, k) for k in keys) if m]
    return max(found) + 1 if found else 0


def _resnet_backbone(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str | None, dict[str, Any]]:
    keys = list(shapes)
    blocks = tuple(_count(keys, rf"^backbone\.res{s}\.(\d+)\.") for s in range(2, 6))
    bottleneck = "backbone.res2.0.conv3.weight" in shapes
    name = _RESNETS.get((bottleneck, blocks))
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(f"convert_from_detectron2: a ResNet with {blocks} {kind} blocks per stage has no timm "
                         f"counterpart; expected one of {sorted(_RESNETS.values())}")
    if "backbone.stem.conv2.weight" in shapes:  # deep stem
        # The release's "R101c" is detectron2's DeepLab ResNet, whose res5 also uses multi-grid
        # dilations (RES5_MULTI_GRID, [1, 2, 4] in MaskFormer's configs); the weights look the same
        # as without it, and our resnet101c (timm's deep stem) has no dilation: a silently different network.
        raise ValueError("convert_from_detectron2: this checkpoint has a DeepLab (3x3 deep) stem, the release's "
                         "'R101c' backbone, whose res5 blocks use multi-grid dilations that maskformer_hf's "
                         "resnet101c preset does not have; such checkpoints are not supported yet")
    return (name, {}) if name in PRESETS else (None, {"backbone": name})


def _swin_backbone(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str | None, dict[str, Any]]:
    keys = list(shapes)
    embed_dim, _, patch_size, _ = shapes["backbone.patch_embed.proj.weight"]
    stages = _count(keys, r"^backbone\.layers\.(\d+)\.")
    depths = [_count(keys, rf"^backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    tables = [shapes[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    heads = [table[1] for table in tables]
    window = (math.isqrt(tables[0][0]) + 1) // 2
    if (2 * window - 1) ** 2 != tables[0][0]:
        raise ValueError(f"convert_from_detectron2: a relative-position bias table of {tables[0][0]} rows is not "
                         f"(2 * window - 1) ** 2 for any window size")
    mlp_ratio = shapes["backbone.layers.0.blocks.0.mlp.fc1.weight"][0] / embed_dim
    qkv_bias = "backbone.layers.0.blocks.0.attn.qkv.bias" in shapes
    for preset, values in PRESETS.items():
        swin = values.get("backbone_config") or {}
        if ((swin.get("embed_dim"), swin.get("depths"), swin.get("num_heads"), swin.get("window_size"))
                == (embed_dim, depths, heads, window) and (patch_size, mlp_ratio, qkv_bias) == (4, 4.0, True)):
            return preset, {}
    backbone_config = {"model_type": "maskformer-swin", "embed_dim": embed_dim, "depths": depths, "num_heads": heads,
                       "window_size": window, "patch_size": patch_size, "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias,
                       "image_size": 224, "drop_path_rate": 0.3,
                       "out_features": [f"stage{i + 1}" for i in range(stages)]}
    return None, {"backbone": None, "backbone_config": backbone_config}


def id2label_for(id2label: Mapping[int, str] | Sequence[str] | None, num_labels: int) -> dict[int, str]:
    """Class names as ``{id: name}``: given (dict or list), ADE20K-150's for 150 classes, else ``LABEL_i``."""
    if id2label is None:
        if num_labels == 150:
            from .data.ade20k import ADE20K_150_CLASSES

            return dict(enumerate(ADE20K_150_CLASSES))
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    if isinstance(id2label, Mapping):
        labels = {int(k): str(v) for k, v in id2label.items()}
    else:
        labels = dict(enumerate(id2label))
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"id2label: expected names for the checkpoint's {num_labels} classes "
                         f"(ids 0..{num_labels - 1}), got {len(labels)} entries")
    return labels


def config_from_detectron2(state_dict: Mapping[str, Tensor], id2label: Mapping[int, str] | Sequence[str] | None = None,
                           **config_overrides: Any) -> MaskFormerConfig:
    """Our config for a detectron2 MaskFormer state dict, inferred from its keys and shapes (no values read).

    ``config_overrides`` go to :class:`MaskFormerConfig` last (e.g. ``decoder_attention_heads``,
    which the weights do not reveal; default 8, the release's ``NHEADS``).
    """
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    keys = list(shapes)
    check_supported_layout(keys)

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(f"convert_from_detectron2: no {key!r} in the checkpoint; is it a detectron2 MaskFormer "
                             f"checkpoint?")
        return shapes[key]

    num_queries, hidden_size = shape("sem_seg_head.predictor.query_embed.weight")
    num_labels = shape("sem_seg_head.predictor.class_embed.weight")[0] - 1
    encoder_layers = _count(keys, _ENC)
    heads = config_overrides.pop("decoder_attention_heads", 8)
    values: dict[str, Any] = {
        "num_queries": num_queries,
        "hidden_size": hidden_size,
        "decoder_layers": _count(keys, _DEC),
        "decoder_ffn_dim": shape("sem_seg_head.predictor.transformer.decoder.layers.0.linear1.weight")[0],
        "decoder_attention_heads": heads,
        "encoder_layers": encoder_layers,
        "encoder_attention_heads": heads,  # detectron2's NHEADS serves encoder and decoder
        "fpn_feature_size": shape("sem_seg_head.pixel_decoder.layer_4.weight")[0],
        "mask_feature_size": shape("sem_seg_head.pixel_decoder.mask_features.weight")[0],
        "id2label": id2label_for(id2label, num_labels),
    }
    if encoder_layers:
        where = "pixel_decoder" if any(k.startswith(_PD_ENCODER) for k in keys) else "predictor"
        values["encoder_ffn_dim"] = shape(f"sem_seg_head.{where}.transformer.encoder.layers.0.linear1.weight")[0]
        values["encoder_feeds_pixel_decoder"] = where == "pixel_decoder"
    if "backbone.stem.conv1.weight" in shapes:
        preset, backbone = _resnet_backbone(shapes)
    elif "backbone.patch_embed.proj.weight" in shapes:
        preset, backbone = _swin_backbone(shapes)
    else:
        raise ValueError("convert_from_detectron2: unknown backbone (expected backbone.stem.* for a ResNet or "
                         "backbone.patch_embed.* for a Swin)")
    values.update(config_overrides)
    if preset is not None:
        return MaskFormerConfig.from_preset(preset, **values)
    return MaskFormerConfig(**backbone, **values)


# ---------------------------------------------------------------------------------------------
def _load_checked(model: MaskFormerForUniversalSegmentation, converted: dict[str, Tensor],
                  origin: dict[str, str]) -> None:
    """Load ``converted`` into ``model``, or raise naming every key left over, missing or misshapen."""
    expected = model.state_dict()
    unexpected = [origin[k] for k in converted if k not in expected]
    missing = [k for k in expected if k not in converted and not k.endswith(_DETERMINISTIC)]
    mismatched = [f"{origin[k]} {tuple(v.shape)} -> {k} {tuple(expected[k].shape)}"
                  for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if unexpected:
        problems.append(f"checkpoint keys with no place in the model: {unexpected}")
    if missing:
        problems.append(f"model keys the checkpoint does not fill: {missing}")
    if mismatched:
        problems.append(f"shapes that differ: {mismatched}")
    if problems:
        raise ValueError("convert_from_detectron2: checkpoint and inferred model disagree; " + "; ".join(problems))
    wrong = [origin[k] for k in converted if k.endswith("relative_position_index")
             and not torch.equal(converted[k].to(expected[k].dtype), expected[k])]
    if wrong:
        raise ValueError(f"convert_from_detectron2: relative_position_index differs from the model's own for {wrong}")
    model.load_state_dict(converted, strict=False)


def convert_from_detectron2(path: str | os.PathLike | Mapping[str, Tensor],
                            id2label: Mapping[int, str] | Sequence[str] | None = None,
                            **config_overrides: Any) -> MaskFormerForUniversalSegmentation:
    """Our :class:`MaskFormerForUniversalSegmentation` (eval mode) with the weights of an original MaskFormer.

    Args:
        path: a detectron2 weight file (``model_final_*.pkl``, or ``.pth``), or its ``"model"``
            state dict (tensors or numpy arrays; see
            :func:`load_detectron2_state_dict`). Reading a ``.pkl``
            unpickles it: use files from a trusted source only.
        id2label: class names (dict or list); default ADE20K-150's for 150 classes, else ``LABEL_i``.
        config_overrides: :class:`MaskFormerConfig` fields set over the inferred ones.

    Raises:
        ValueError: for a layout we cannot express, a checkpoint key that nothing consumes, or a
            model key that the checkpoint does not fill. "R50 + 6 Enc" checkpoints (an encoder in the
            pixel decoder, TransformerEncoderPixelDecoder) convert to ``encoder_feeds_pixel_decoder=True``.
    """
    if isinstance(path, Mapping):
        state_dict = {key: _to_tensor(key, value) for key, value in path.items()}
    else:
        state_dict = load_detectron2_state_dict(path)
    config = config_from_detectron2(state_dict, id2label, **config_overrides)
    converted, origin = convert_detectron2_state_dict(state_dict)
    model = MaskFormerForUniversalSegmentation(config)
    _load_checked(model, converted, origin)
    return model.eval()


def detectron2_image_processor(state_dict: Mapping[str, Tensor]) -> MaskFormerImageProcessor:
    """Our processor; its mean/std from the checkpoint's ``pixel_mean`` / ``pixel_std`` (0..255) when stored."""
    kwargs = {}
    for key, field in (("pixel_mean", "image_mean"), ("pixel_std", "image_std")):
        if key in state_dict:
            kwargs[field] = (state_dict[key].flatten().double() / 255.0).tolist()
    return MaskFormerImageProcessor(**kwargs)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *,
                       id2label: Mapping[int, str] | Sequence[str] | None = None,
                       revision: str | None = None) -> MaskFormerForUniversalSegmentation:
    """Convert a MaskFormer checkpoint into a folder of ours and return the model.

    Args:
        src: a detectron2 weight file of the original release (``model_final_*.pkl`` / ``.pth``;
            a ``.pkl`` is unpickled, so it must come from a trusted source), or the folder / Hub id
            of a transformers MaskFormer checkpoint.
        dst: output folder; receives ``config.json``, ``model.safetensors`` and
            ``preprocessor_config.json`` (the source's when it has one; else ours, normalised with
            the detectron2 file's ``pixel_mean`` / ``pixel_std`` when stored, ImageNet's otherwise)
            and ``conversion_info.json`` (source, format, revision: what the model card cites). No
            README: model cards are written by their own tools.
        id2label: class names (dict or list) replacing the source's.
        revision: Hub revision of a transformers ``src``.
    """
    detectron2 = is_detectron2_checkpoint(src)
    if detectron2:
        state_dict = load_detectron2_state_dict(src)
        model = convert_from_detectron2(state_dict, id2label=id2label)
        processor, source_processor = detectron2_image_processor(state_dict), None
    else:
        hub_kwargs = {"revision": revision} if revision else {}
        if not is_transformers_checkpoint(src, **hub_kwargs):
            raise ValueError(f"convert_checkpoint: {src} is neither a detectron2 MaskFormer weight file (.pkl / .pth) "
                             f"nor a transformers MaskFormer checkpoint (config.json with model_type 'maskformer')")
        model = convert_from_transformers(src, **hub_kwargs)
        if id2label is not None:
            model.config.id2label = id2label_for(id2label, model.config.num_labels)
            model.config.label2id = {name: i for i, name in model.config.id2label.items()}
        processor = MaskFormerImageProcessor()
        source_processor = _resolve(src, "preprocessor_config.json", **hub_kwargs)
    dst = Path(dst)
    model.save_pretrained(dst)
    if source_processor is not None:
        shutil.copy(source_processor, dst / "preprocessor_config.json")
    else:
        processor.save_pretrained(dst)
    command = ["maskformer-hf convert", str(src), str(dst)] + (["--revision", revision] if revision else [])
    info = {"source": str(src), "format": "detectron2" if detectron2 else "transformers", "revision": revision,
            "command": " ".join(command)}
    (dst / CONVERSION_INFO_FILE).write_text(json.dumps(info, indent=1))
    return model
