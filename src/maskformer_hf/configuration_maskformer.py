"""MaskFormer configuration: the single source of the model's hyper-parameters.

Defaults are the paper's (Cheng et al., NeurIPS 2021, arXiv 2107.06278); the paper's variants are
named in :data:`PRESETS`, a plain dict, and built with :meth:`MaskFormerConfig.from_preset`.
Field names follow transformers' ``MaskFormerConfig`` / ``DetrConfig`` wherever the concept is the
same, so values carry over one to one when a transformers checkpoint is converted.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .transformer_decoder import ACTIVATIONS

logger = logging.getLogger(__name__)


def _swin(embed_dim: int, depths: list[int], heads: list[int], window: int, image_size: int) -> dict:
    return {
        "model_type": "maskformer-swin",
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "image_size": image_size,
        "drop_path_rate": 0.3,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


# The paper's variants. ResNets come from timm (torchvision-style ResNet-50/101; "resnet101c" is
# timm's ResNet-101 with a 3x3 deep stem of width 64), Swin from transformers' MaskFormer-Swin (the
# detectron2 semantics of the paper: pad-then-shift windows, a LayerNorm on every stage output).
# For Swin, ``backbone`` names the ImageNet checkpoint used when ``use_pretrained_backbone=True``.
PRESETS: dict[str, dict[str, Any]] = {
    "resnet50": {"backbone": "resnet50"},
    "resnet101": {"backbone": "resnet101"},
    "resnet101c": {"backbone": "resnet101", "backbone_kwargs": {"stem_type": "deep", "stem_width": 64}},
    # "R50 + 6 Enc" (COCO panoptic): as in the original, the encoder output also feeds the FPN.
    "resnet50-6enc": {"backbone": "resnet50", "encoder_layers": 6, "encoder_feeds_pixel_decoder": True},
    "resnet101-6enc": {"backbone": "resnet101", "encoder_layers": 6, "encoder_feeds_pixel_decoder": True},
    "swin-tiny": {
        "backbone": "microsoft/swin-tiny-patch4-window7-224",
        "backbone_config": _swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    },
    "swin-small": {
        "backbone": "microsoft/swin-small-patch4-window7-224",
        "backbone_config": _swin(96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    },
    "swin-base": {
        "backbone": "microsoft/swin-base-patch4-window12-384-in22k",
        "backbone_config": _swin(128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    },
    "swin-large": {
        "backbone": "microsoft/swin-large-patch4-window12-384-in22k",
        "backbone_config": _swin(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
    },
    # Not a paper variant: every part of the model at toy width on timm's 0.4M-parameter test ResNet
    # (about 0.5M parameters in all), for smoke tests of a pipeline; a training step takes milliseconds.
    "test-tiny": {"backbone": "test_resnet", "hidden_size": 32, "fpn_feature_size": 32, "mask_feature_size": 32,
                  "num_queries": 12, "decoder_layers": 2, "decoder_ffn_dim": 64, "decoder_attention_heads": 4},
}
PAPER_PRESETS = tuple(name for name in PRESETS if name != "test-tiny")


def _backbone_config_from(value: dict | PretrainedConfig | None) -> PretrainedConfig | None:
    """A transformers backbone config (from a dict or a config) that outputs its last four stages."""
    if value is None:
        return None
    if isinstance(value, PretrainedConfig):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"backbone_config: expected a dict or a PretrainedConfig, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        raise ValueError("backbone_config: a dict needs a 'model_type' key (e.g. 'maskformer-swin', 'resnet')")
    if model_type == "swin":  # old Hub checkpoints store plain Swin; MaskFormer-Swin is the same network
        model_type = "maskformer-swin"
    value.pop("stage_names", None)  # derived from the depths
    if len(value.get("out_features") or []) != 4:
        value.pop("out_features", None)
        value.pop("out_indices", None)
    config = AutoConfig.for_model(model_type, **value)
    stages = [name for name in getattr(config, "stage_names", []) if name != "stem"]
    if len(getattr(config, "out_features", None) or []) != 4 and len(stages) >= 4:
        config.out_features = stages[-4:]  # MaskFormer needs strides 4, 8, 16, 32
    return config


# transformers' MaskFormer builds its transformer from a DETR config (``decoder_config``); these of its
# fields give ours (DETR name -> ours). It builds only DETR's decoder, so a DETR config's encoder_*
# fields build nothing there, and nothing here (our encoder_layers come from our own field). Its
# init_std / init_xavier_std initialise only that decoder; the MaskFormer config's own fields of the
# same names are the ones ours keep.
DETR_FIELDS = {
    "d_model": "hidden_size", "num_queries": "num_queries", "decoder_layers": "decoder_layers",
    "decoder_attention_heads": "decoder_attention_heads", "decoder_ffn_dim": "decoder_ffn_dim",
    "dropout": "dropout", "attention_dropout": "attention_dropout", "activation_dropout": "activation_dropout",
    "activation_function": "activation_function",
}


def _detr_config_from(value: dict | PretrainedConfig) -> PretrainedConfig:
    """A transformers ``DetrConfig`` from a config or a dict (missing fields: DETR's defaults, as in transformers)."""
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", "detr")
        if model_type != "detr":
            raise ValueError(f"decoder_config: expected a DETR config (model_type 'detr'), got {model_type!r}")
        return AutoConfig.for_model("detr", **value)
    if not isinstance(value, PretrainedConfig):
        raise TypeError(f"decoder_config: expected a dict or a DetrConfig, got {type(value).__name__}")
    if value.model_type != "detr":
        raise ValueError(f"decoder_config: expected a DETR config (model_type 'detr'), got {value.model_type!r}")
    return value


def _given_detr_fields(value: dict | PretrainedConfig) -> dict[str, Any]:
    """The :data:`DETR_FIELDS` a decoder config sets: a dict's keys, a config's values other than DETR's defaults."""
    detr = _detr_config_from(value)
    if isinstance(value, dict):
        return {name: getattr(detr, name) for name in DETR_FIELDS if name in value}
    defaults = AutoConfig.for_model("detr")
    return {name: getattr(detr, name) for name in DETR_FIELDS if getattr(detr, name) != getattr(defaults, name)}


# The paper's Table 4 (SPEC §6): MaskFormer's mask classification, and its per-pixel baselines:
# "per_pixel" (pixel decoder -> 1x1 conv to K class logits, per-pixel cross-entropy) and
# "per_pixel_plus" (the transformer module with N = K queries, query i's mask read as class i's
# logit map, per-pixel cross-entropy). MaskFormer-fixed is mask_classification + fixed_matching.
SEGMENTATION_TYPES = ("mask_classification", "per_pixel", "per_pixel_plus")
# What the transformer decoder's cross-attention reads: "res5", the stride-32 backbone map (the
# paper's default), or "pixel_decoder", the FPN's stride-4 output (the original code's other
# choices of its transformer input; small objects keep their own tokens).
TRANSFORMER_IN_FEATURES = ("res5", "pixel_decoder")


class MaskFormerHfConfig(PretrainedConfig):
    r"""Configuration of :class:`MaskFormerModel` and :class:`MaskFormerForUniversalSegmentation`.

    The backbone is either a timm model (``backbone`` names it; ``backbone_config`` is None) or a
    transformers backbone (``backbone_config``, e.g. MaskFormer-Swin or ResNet, as in the Hub
    checkpoints). Either must give four feature maps at strides 4, 8, 16 and 32.

    The transformer's fields are stored flat (``hidden_size``, ``decoder_layers``, ...). A transformers
    ``decoder_config`` (a ``DetrConfig`` or its dict, as transformers' ``MaskFormerConfig`` takes it) sets
    them from its DETR fields (:data:`DETR_FIELDS`: ``d_model`` -> ``hidden_size``, ...): those a dict
    names, or a config holds at other values than DETR's defaults (which are ours). A flat argument
    that differs from its default and from the decoder's value is a contradiction and raises. The
    config keeps no ``decoder_config``: reading it gives a ``DetrConfig`` made from the flat fields,
    assigning one sets them all.

    Example::

        >>> config = MaskFormerConfig.from_preset("swin-tiny", num_labels=150)
        >>> config.num_queries, config.decoder_layers
        (100, 6)
    """

    model_type = "maskformer_hf"
    attribute_map = {"num_attention_heads": "decoder_attention_heads", "num_hidden_layers": "decoder_layers"}
    # Declared so that transformers hands it what it hands a sub-config (attn_implementation, dtype).
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="maskformer-swin", optional=True),
    }
    # Trainer's evaluation keeps only what metrics need (class and mask logits, the padding mask).
    keys_to_ignore_at_inference = [
        "loss_dict", "auxiliary_logits", "encoder_last_hidden_state", "pixel_decoder_last_hidden_state",
        "transformer_decoder_last_hidden_state", "encoder_hidden_states", "pixel_decoder_hidden_states",
        "transformer_decoder_hidden_states", "hidden_states", "attentions", "cross_attentions", "encoder_attentions",
    ]

    def __init__(
        self,
        # --- backbone -------------------------------------------------------------------------
        backbone: str | None = "resnet50",  # timm name, or the ImageNet checkpoint of backbone_config
        backbone_config: dict | PretrainedConfig | None = None,  # a transformers backbone; wins over timm
        backbone_kwargs: dict | None = None,  # extra keyword arguments for timm.create_model
        use_pretrained_backbone: bool = False,  # download ImageNet weights when the model is built
        use_timm_backbone: bool = True,  # without backbone_config: False reads `backbone` as a transformers checkpoint
        # --- pixel decoder (light FPN, SPEC §2.2) ------------------------------------------------
        fpn_feature_size: int = 256,  # channels of every FPN map (GroupNorm(32) needs a multiple of 32)
        mask_feature_size: int = 256,  # C_E, channels of the per-pixel and per-mask embeddings
        # --- transformer module (DETR, SPEC §2.3) ------------------------------------------------
        decoder_config: dict | PretrainedConfig | None = None,  # transformers' DETR config: sets the fields below
        num_queries: int = 100,  # N, size of the predicted set (paper ablation: 100 is best on ADE)
        hidden_size: int = 256,  # d_model of the transformer
        encoder_layers: int = 0,  # DETR encoder layers on the stride-32 map (6 for "R50 + 6 Enc")
        encoder_attention_heads: int = 8,
        encoder_ffn_dim: int = 2048,
        encoder_feeds_pixel_decoder: bool = False,  # the FPN starts from the encoder output, not the backbone map
        transformer_in_feature: str = "res5",  # what the decoder attends to: res5 (paper) or pixel_decoder (stride 4)
        decoder_layers: int = 6,  # each layer's output is supervised when use_auxiliary_loss
        learned_query_features: bool = False,  # not in the paper: decoder input is a learned embedding, not zeros
        mask_pooled_classification: bool = False,  # not in the paper: class logits also read each mask's mean embedding
        decoder_attention_heads: int = 8,
        decoder_ffn_dim: int = 2048,
        dropout: float = 0.1,  # on residual branches of the transformer
        attention_dropout: float = 0.0,  # on attention weights
        activation_dropout: float = 0.0,  # inside the FFN
        activation_function: str = "relu",  # FFN non-linearity
        # --- loss (SPEC §3) -----------------------------------------------------------------------
        no_object_weight: float = 0.1,  # class weight of the "no object" label in the cross-entropy
        cross_entropy_weight: float = 1.0,  # weight of the classification term
        mask_weight: float = 20.0,  # weight of the sigmoid focal mask term
        dice_weight: float = 1.0,  # weight of the dice mask term
        use_auxiliary_loss: bool = True,  # deep supervision on every earlier decoder layer
        output_auxiliary_logits: bool | None = None,  # None: follow use_auxiliary_loss
        fixed_matching: bool = False,  # query c predicts class c (paper ablation, needs N >= K)
        semantic_loss_weight: float = 0.0,  # not in the paper: per-pixel CE of the semantic inference (small data)
        segmentation_type: str = "mask_classification",  # or the paper's baselines: per_pixel, per_pixel_plus
        train_num_points: int = 0,  # 0: exact loss on full masks; else point-sampled mode (e.g. 12544)
        oversample_ratio: float = 3.0,  # point mode: candidates per point for importance sampling
        importance_sample_ratio: float = 0.75,  # point mode: share of points picked by uncertainty
        # --- initialisation -----------------------------------------------------------------------
        init_std: float = 0.02,  # transformers' field, kept for compatibility; layers use PyTorch's default init
        init_xavier_std: float = 1.0,  # transformers' field, kept for compatibility; unused (as init_std)
        # --- inference ------------------------------------------------------------------------------
        stuff_label_ids: list[int] | None = None,  # "stuff" classes: one segment each in panoptic output
        **kwargs: Any,
    ) -> None:
        if backbone_config is None and not use_timm_backbone and backbone:
            # transformers 4.x's reading of `backbone`: a transformers checkpoint, whose config is read here.
            backbone_config = AutoConfig.from_pretrained(backbone, **(backbone_kwargs or {}))
            backbone_kwargs = None
        self.backbone = backbone
        self.backbone_config = _backbone_config_from(backbone_config)
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.use_pretrained_backbone = use_pretrained_backbone
        self.use_timm_backbone = use_timm_backbone
        self.fpn_feature_size = fpn_feature_size
        self.mask_feature_size = mask_feature_size
        self.num_queries = num_queries
        self.hidden_size = hidden_size
        self.encoder_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.encoder_ffn_dim = encoder_ffn_dim
        self.encoder_feeds_pixel_decoder = encoder_feeds_pixel_decoder
        self.transformer_in_feature = transformer_in_feature
        self.decoder_layers = decoder_layers
        self.learned_query_features = learned_query_features
        self.mask_pooled_classification = mask_pooled_classification
        self.decoder_attention_heads = decoder_attention_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.no_object_weight = no_object_weight
        self.cross_entropy_weight = cross_entropy_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.use_auxiliary_loss = use_auxiliary_loss
        self.output_auxiliary_logits = output_auxiliary_logits
        self.fixed_matching = fixed_matching
        self.segmentation_type = segmentation_type
        self.semantic_loss_weight = semantic_loss_weight
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.init_std = init_std
        self.init_xavier_std = init_xavier_std
        if decoder_config is not None:  # transformers' layout: the DETR config sets the transformer's fields
            for name, value in _transformer_fields(decoder_config, self).items():
                setattr(self, name, value)
        self.stuff_label_ids = sorted({int(i) for i in stuff_label_ids}) if stuff_label_ids is not None else None
        super().__init__(**kwargs)
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value cannot work."""

        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"MaskFormerConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        need(self.backbone_config is not None or bool(self.backbone), "backbone", "a timm model name (or a backbone_config)")
        for field in ("num_queries", "hidden_size", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
                      "encoder_attention_heads", "encoder_ffn_dim", "fpn_feature_size", "mask_feature_size"):
            value = getattr(self, field)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field, "a positive integer")
        need(isinstance(self.encoder_layers, int) and self.encoder_layers >= 0, "encoder_layers", "an integer >= 0")
        need(not self.encoder_feeds_pixel_decoder or self.encoder_layers > 0, "encoder_feeds_pixel_decoder",
             "False when encoder_layers is 0 (there is no encoder output to feed)")
        need(self.transformer_in_feature in TRANSFORMER_IN_FEATURES, "transformer_in_feature",
             f"one of {TRANSFORMER_IN_FEATURES}")
        need(self.transformer_in_feature == "res5" or self.encoder_layers == 0, "transformer_in_feature",
             f"'res5' when encoder_layers > 0 (the encoder runs on the stride-32 map; got {self.encoder_layers} layers)")
        for field in ("learned_query_features", "mask_pooled_classification"):
            need(isinstance(getattr(self, field), bool), field, "True or False")
        need(self.hidden_size % self.decoder_attention_heads == 0, "decoder_attention_heads",
             f"a divisor of hidden_size={self.hidden_size}")
        need(self.hidden_size % self.encoder_attention_heads == 0, "encoder_attention_heads",
             f"a divisor of hidden_size={self.hidden_size}")
        need(self.hidden_size % 2 == 0, "hidden_size", "an even number (half the channels encode y, half x)")
        need(self.fpn_feature_size % 32 == 0, "fpn_feature_size", "a multiple of 32 (GroupNorm with 32 groups)")
        for field in ("dropout", "attention_dropout", "activation_dropout"):
            need(0.0 <= getattr(self, field) < 1.0, field, "a probability in [0, 1)")
        need(self.activation_function in ACTIVATIONS, "activation_function", f"one of {sorted(ACTIVATIONS)}")
        for field in ("no_object_weight", "cross_entropy_weight", "mask_weight", "dice_weight", "init_std",
                      "init_xavier_std"):
            need(getattr(self, field) >= 0.0, field, "a non-negative number")
        need(self.num_labels >= 1, "num_labels", "at least one class")
        need(isinstance(self.train_num_points, int) and self.train_num_points >= 0, "train_num_points",
             "an integer >= 0 (0 = full masks)")
        need(self.oversample_ratio >= 1.0, "oversample_ratio", "a number >= 1")
        need(0.0 <= self.importance_sample_ratio <= 1.0, "importance_sample_ratio", "a ratio in [0, 1]")
        need(not self.fixed_matching or self.num_queries >= self.num_labels, "fixed_matching",
             f"num_queries >= num_labels ({self.num_queries} < {self.num_labels})")
        need(isinstance(self.backbone_kwargs, dict), "backbone_kwargs", "a dict")
        need(self.segmentation_type in SEGMENTATION_TYPES, "segmentation_type", f"one of {SEGMENTATION_TYPES}")
        need(self.segmentation_type != "per_pixel_plus" or self.num_queries == self.num_labels, "num_queries",
             f"num_labels ({self.num_labels}) for segmentation_type='per_pixel_plus' (one query per class)")
        need(self.segmentation_type != "per_pixel" or not self.encoder_feeds_pixel_decoder, "encoder_feeds_pixel_decoder",
             "False for segmentation_type='per_pixel' (it has no transformer module)")
        need(self.segmentation_type == "mask_classification" or not self.fixed_matching, "fixed_matching",
             "False for the per-pixel baselines (they have no matching)")
        need(self.stuff_label_ids is None or all(0 <= i < self.num_labels for i in self.stuff_label_ids),
             "stuff_label_ids", f"None or class ids in [0, num_labels={self.num_labels})")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' ``from_dict`` (what ``from_pretrained`` calls), aware that new classes
        (``num_labels=`` or ``id2label=`` differing from the saved ones) make the saved
        ``stuff_label_ids`` meaningless: they are dropped unless new ones are passed too. The result
        is validated after every override is applied."""
        saved = {int(k): v for k, v in (config_dict.get("id2label") or {}).items()}
        new = kwargs.get("id2label")
        changed = (kwargs.get("num_labels") is not None and kwargs["num_labels"] != len(saved)) or (
            new is not None and {int(k): v for k, v in new.items()} != saved)
        if changed and config_dict.get("stuff_label_ids") is not None:
            if "stuff_label_ids" not in kwargs:
                logger.warning("MaskFormerConfig: the classes change, so the saved stuff_label_ids %s no longer apply "
                               "and are dropped; pass stuff_label_ids=[...] for the new classes",
                               config_dict["stuff_label_ids"])
            config_dict = {**config_dict, "stuff_label_ids": None}
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate()
        return loaded

    @classmethod
    def from_backbone_and_decoder_configs(cls, backbone_config: dict | PretrainedConfig,
                                          decoder_config: dict | PretrainedConfig,
                                          **kwargs: Any) -> "MaskFormerHfConfig":
        """transformers' constructor of the same name: a transformers backbone config and a DETR config."""
        return cls(backbone_config=backbone_config, decoder_config=decoder_config, **kwargs)

    @property
    def decoder_config(self) -> PretrainedConfig:
        """A transformers ``DetrConfig`` made from the flat fields (:data:`DETR_FIELDS`), for code written
        against transformers' config (``config.decoder_config.num_queries``). A copy: changing it changes
        nothing; assigning one (``config.decoder_config = DetrConfig(...)``) sets the flat fields."""
        values = {theirs: getattr(self, ours) for theirs, ours in DETR_FIELDS.items()}
        return AutoConfig.for_model("detr", encoder_layers=self.encoder_layers,
                                    encoder_attention_heads=self.encoder_attention_heads,
                                    encoder_ffn_dim=self.encoder_ffn_dim, **values)

    @decoder_config.setter
    def decoder_config(self, value: dict | PretrainedConfig) -> None:
        detr = _detr_config_from(value)
        for theirs, ours in DETR_FIELDS.items():
            setattr(self, ours, getattr(detr, theirs))
        self.validate()

    @property
    def num_auxiliary_outputs(self) -> int:
        """Number of earlier decoder layers whose predictions are supervised (5 for 6 layers)."""
        return self.decoder_layers - 1

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MaskFormerHfConfig":
        """Build the config of a paper variant, e.g. ``from_preset("swin-tiny", num_labels=150)``."""
        if name not in PRESETS:
            raise ValueError(f"from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        values = copy.deepcopy(PRESETS[name])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(self.backbone_config, PretrainedConfig):
            output["backbone_config"] = self.backbone_config.to_dict()
        return output


def _transformer_fields(decoder_config: dict | PretrainedConfig, config: MaskFormerHfConfig) -> dict[str, Any]:
    """Our transformer fields (:data:`DETR_FIELDS`' values) that a DETR ``decoder_config`` sets
    (:func:`_given_detr_fields`). A field of ``config`` (the flat arguments) that differs from both its
    default and the decoder's value is a contradiction: it raises."""
    defaults = inspect.signature(MaskFormerHfConfig.__init__).parameters
    values = {}
    for theirs, value in _given_detr_fields(decoder_config).items():
        ours = DETR_FIELDS[theirs]
        flat = getattr(config, ours)
        if flat != defaults[ours].default and flat != value:
            raise ValueError(f"MaskFormerConfig.{ours}: {flat!r} contradicts decoder_config.{theirs}={value!r}; "
                             "pass one of them")
        values[ours] = value
    return values


# The public name. The class itself is named apart from transformers' ``MaskFormerConfig``: transformers
# resolves configuration classes by ``__name__``, and a shared name made our checkpoints load as its model.
MaskFormerConfig = MaskFormerHfConfig
