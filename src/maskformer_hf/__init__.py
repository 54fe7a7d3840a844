"""maskformer_hf: MaskFormer (Cheng et al., NeurIPS 2021) as a first-class Hugging Face model.

Importing the package registers the config and models with transformers' Auto classes, so
``AutoModelForUniversalSegmentation.from_pretrained(<our checkpoint>)`` and
``pipeline("image-segmentation", model=<our checkpoint>)`` find them.
"""

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoVideoProcessor

from .configuration_maskformer import PRESETS, MaskFormerConfig
from .conversion import convert_from_transformers
from .conversion_detectron2 import convert_checkpoint, convert_from_detectron2
from .image_processing_maskformer import (LegacyNameImageProcessor, LegacyNameImageProcessorPil,
                                           MaskFormerImageProcessor, segmentation_map_to_masks)
from .inference import instance_inference, panoptic_inference, semantic_inference, semantic_inference_tta
from .modeling_maskformer import (
    MaskFormerForUniversalSegmentation,
    MaskFormerForUniversalSegmentationOutput,
    MaskFormerModel,
    MaskFormerModelOutput,
    MaskFormerPreTrainedModel,
    TASK_AUTO_CLASSES,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "MaskFormerConfig",
    "MaskFormerForUniversalSegmentation",
    "MaskFormerForUniversalSegmentationOutput",
    "MaskFormerImageProcessor",
    "MaskFormerModel",
    "MaskFormerModelOutput",
    "MaskFormerPreTrainedModel",
    "convert_checkpoint",
    "convert_from_detectron2",
    "convert_from_transformers",
    "instance_inference",
    "panoptic_inference",
    "register_auto_classes",
    "segmentation_map_to_masks",
    "semantic_inference",
    "semantic_inference_tta",
]


def register_auto_classes() -> None:
    """Register our classes with transformers' Auto classes (idempotent; done at import).

    A checkpoint saved by us loads as ours through ``AutoConfig``, ``AutoModel``,
    ``AutoModelForUniversalSegmentation``, ``AutoModelForImageSegmentation``,
    ``AutoModelForInstanceSegmentation`` and ``AutoImageProcessor``. Saved checkpoints also carry the
    code (``auto_map`` in config.json and preprocessor_config.json, the module files beside them), so
    ``trust_remote_code=True`` loads them as ours where this package is not installed. Our classes are
    named apart from transformers' (``MaskFormerHf*``), so registering them never changes what
    transformers' own MaskFormer checkpoints load as; the processor name that earlier versions of
    this package saved (``MaskFormerImageProcessor``, transformers' name too) is told apart by the
    folder's content (:class:`~maskformer_hf.image_processing_maskformer.LegacyNameImageProcessor`).
    """
    MaskFormerConfig.register_for_auto_class("AutoConfig")
    MaskFormerModel.register_for_auto_class("AutoModel")
    MaskFormerForUniversalSegmentation.register_for_auto_class("AutoModelForUniversalSegmentation")
    MaskFormerImageProcessor.register_for_auto_class("AutoImageProcessor")
    AutoConfig.register(MaskFormerConfig.model_type, MaskFormerConfig, exist_ok=True)
    AutoModel.register(MaskFormerConfig, MaskFormerModel, exist_ok=True)
    for name in TASK_AUTO_CLASSES:
        getattr(transformers, name).register(MaskFormerConfig, MaskFormerForUniversalSegmentation, exist_ok=True)
    AutoImageProcessor.register(
        MaskFormerConfig,
        image_processor_classes={"torchvision": MaskFormerImageProcessor, "pil": MaskFormerImageProcessor},
        exist_ok=True,
    )
    AutoImageProcessor.register(
        LegacyNameImageProcessor,  # a key of its own: no config class builds it, only the name finds it
        image_processor_classes={"torchvision": LegacyNameImageProcessor, "pil": LegacyNameImageProcessorPil},
        exist_ok=True,
    )
    # No video processor: said explicitly, so that pipelines do not ask whether to run the saved code for one.
    AutoVideoProcessor.register(MaskFormerConfig, video_processor_classes={}, exist_ok=True)


register_auto_classes()
