"""MaskFormer image processor: images and label maps in, model inputs out; model outputs in, maps out.

Pre-processing: resize (shortest/longest edge, or a fixed size, rounded up to ``size_divisor``),
rescale, normalise, pad bottom/right to the batch's largest image, and turn each label map into
binary masks and class ids (:func:`segmentation_map_to_masks`). Post-processing: thin methods over
:mod:`maskformer_hf.inference`. Argument names and return formats are those of transformers'
``MaskFormerImageProcessor``; see the README for where the results deliberately differ.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
)
from transformers.models.maskformer.image_processing_maskformer import binary_mask_to_rle
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType, cached_file

from . import image_inputs
from .image_inputs import (as_list, channel_dimension, channel_statistic, channels_of, image_to_tensor,
                           interpolation_mode, label_map_to_tensor, match_channels, pad_size_dict, per_image_mappings,
                           resample_filter, resize_label_maps, resize_output_size, size_dict, warn_once)
from .image_inputs import pil_to_rgb, shortest_edge_size  # noqa: F401  (importable from here, as before)
from .inference import instance_inference, panoptic_inference, semantic_inference, semantic_scores
from .sliding_window import sliding_window_inference

try:  # transformers >= 5.13
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
except ImportError:  # older 5.x: the same fields on a plain BatchFeature
    SemanticSegmentationPostProcessorOutput = BatchFeature

logger = logging.getLogger(__name__)





# ---------------------------------------------------------------------------------------------
# Labels: one map -> binary masks + class ids
# ---------------------------------------------------------------------------------------------
def segmentation_map_to_masks(
    segmentation_map: Tensor,
    instance_id_to_semantic_id: Mapping[int, int] | None = None,
    ignore_index: int | None = None,
    do_reduce_labels: bool = False,
    num_labels: int | None = None,
    padded_size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn one label map into per-segment binary masks and their class ids (pure, batched ops).

    Args:
        segmentation_map: `(H, W)` integer map: class ids (semantic) or segment ids (instance /
            panoptic, any size, e.g. raw COCO panoptic ids ``R + 256 G + 256^2 B``).
        instance_id_to_semantic_id: segment id -> class id; None for a semantic map. Ids it does not
            list are void (as in COCO panoptic): they belong to no mask.
        ignore_index: pixels of this value (after reduction) belong to no mask; with a mapping,
            the segment id to ignore (e.g. 0, COCO's void).
        do_reduce_labels: id 0 is "ignore" and every other id shifts down by one (ADE20K); with a
            mapping, id 0 is void, mapped classes shift down by one and a segment mapped to 0 is
            dropped (e.g. crowd regions). Needs `ignore_index`.
        num_labels: if given, every class id must be in `[0, num_labels)`.
        padded_size: return masks padded (with 0) to this `(H_p, W_p)`, without an extra copy.
    Returns:
        `masks` `(N, H, W)` (or `(N, H_p, W_p)`) float32 in {0, 1}, one per segment in increasing
        id order, and `classes` `(N,)` int64.
    """
    if not isinstance(segmentation_map, Tensor):
        raise TypeError(f"segmentation_map: expected a torch.Tensor, got {type(segmentation_map).__name__}")
    if segmentation_map.ndim != 2:
        raise ValueError(f"segmentation_map: expected (height, width), got shape {tuple(segmentation_map.shape)}")
    if segmentation_map.is_floating_point() or segmentation_map.is_complex():
        raise TypeError(f"segmentation_map: expected integer ids, got {segmentation_map.dtype}")
    if do_reduce_labels and ignore_index is None:
        raise ValueError("do_reduce_labels=True needs an ignore_index for the former 0 pixels (e.g. 255)")
    height, width = segmentation_map.shape
    ids, lut, key = _unique_ids(segmentation_map.reshape(-1))  # (U,); pixel -> id index is lut[key]
    if instance_id_to_semantic_id is None:
        classes = ids - 1 if do_reduce_labels else ids.clone()
        keep = ids != 0 if do_reduce_labels else torch.ones_like(ids, dtype=torch.bool)
        if ignore_index is not None:
            keep &= classes != ignore_index
    else:
        keep = ids != 0 if do_reduce_labels else torch.ones_like(ids, dtype=torch.bool)
        if ignore_index is not None and not do_reduce_labels:
            keep &= ids != ignore_index
        listed = [i in instance_id_to_semantic_id for i in ids.tolist()]
        keep &= torch.tensor(listed, dtype=torch.bool, device=ids.device)  # unlisted ids are void (COCO)
        lookup = [int(instance_id_to_semantic_id.get(i, 0)) for i in ids.tolist()]
        classes = torch.tensor(lookup, dtype=torch.int64, device=ids.device) - int(do_reduce_labels)
        if do_reduce_labels:
            keep &= classes >= 0  # a segment mapped to class 0 is background (e.g. crowd regions)
    classes = classes[keep]
    if classes.numel() and int(classes.min()) < 0:
        raise ValueError(f"segmentation_map: class ids must be >= 0, got {sorted(set(classes[classes < 0].tolist()))}; "
                         "set ignore_index to the value of unlabelled pixels")
    if num_labels is not None and classes.numel() and int(classes.max()) >= num_labels:
        bad = sorted(set(classes[classes >= num_labels].tolist()))
        raise ValueError(f"segmentation_map: class ids {bad[:10]} are >= num_labels={num_labels} "
                         "(forgot do_reduce_labels, or ignore_index?)")
    num = int(keep.sum())
    row = torch.full_like(ids, num)  # segment id -> mask row; dropped ids -> a spare row
    row[keep] = torch.arange(num, device=ids.device)
    rows = row[key] if lut is None else row[lut][key]  # (H*W,) mask row of every pixel
    out_h, out_w = padded_size or (height, width)
    if (out_h, out_w) != (height, width):
        if out_h < height or out_w < width:
            raise ValueError(f"padded_size: {(out_h, out_w)} is smaller than the map {(height, width)}")
        full = torch.full((out_h, out_w), num, dtype=rows.dtype, device=rows.device)
        full[:height, :width] = rows.view(height, width)
        rows = full.view(-1)
    # One write per pixel into zeros; ignored, dropped and padding pixels go to a spare last row.
    masks = _zeros((num + 1, out_h * out_w), rows.device)
    masks.scatter_(0, rows[None], 1.0)
    return masks[:num].view(num, out_h, out_w), classes


def _zeros(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Zeros. On CPU through numpy's calloc: large blocks come as untouched zero pages, so only the
    pages that receive a value are ever written (masks of compact segments touch a fraction of them,
    padding none); 4-6x faster than writing every element of a fresh mask stack."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))


def _unique_ids(flat: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    """Sorted distinct values `ids` `(U,)` of `flat` `(P,)`, and `(lut, key)` such that each
    element's index in `ids` is ``lut[key]`` (``key`` itself when ``lut`` is None): by counting
    when the id range is small, else by sorting."""
    low, high = (int(v) for v in flat.aminmax())
    span = high - low + 1
    if span <= max(1 << 16, flat.numel()):
        key = flat.long() - low if low else flat.long()
        present = torch.bincount(key, minlength=span).nonzero()[:, 0]
        lut = torch.zeros(span, dtype=torch.int64, device=flat.device)  # absent ids: never looked up
        lut[present] = torch.arange(len(present), device=flat.device)
        return present + low, lut, key
    # Label maps are piecewise constant: the distinct ids are among the pixels that differ from their
    # predecessor (a few thousand), and a binary search places every pixel (2-4x faster than a full sort).
    flat = flat.long()
    starts = torch.ones_like(flat, dtype=torch.bool)
    torch.ne(flat[1:], flat[:-1], out=starts[1:])
    ids = torch.unique(flat[starts], sorted=True)
    return ids, None, torch.searchsorted(ids, flat)


# ---------------------------------------------------------------------------------------------
# Inputs -> tensors
# ---------------------------------------------------------------------------------------------
















class MaskFormerImageProcessorKwargs(ImagesKwargs, total=False):
    size_divisor: int
    ignore_index: int | None
    do_reduce_labels: bool
    num_labels: int | None
    label_ids_to_fuse: list[int] | None


class MaskFormerHfImageProcessor(BaseImageProcessor):
    r"""Pre- and post-processing for :class:`~maskformer_hf.MaskFormerForUniversalSegmentation`.

    Args:
        do_resize: resize images (and maps) to ``size``.
        size: ``{"shortest_edge"[, "longest_edge"]}`` or ``{"max_height", "max_width"}`` (aspect kept), or
            ``{"height", "width"}``; an int is a shortest edge, a ``(height, width)`` pair a fixed size.
        size_divisor: resized height and width are rounded up to a multiple of it (0: off).
        resample: ``PILImageResampling`` (or torchvision ``InterpolationMode``) filter for images: nearest,
            bilinear, bicubic or Lanczos (maps always use nearest).
        do_rescale, rescale_factor: multiply pixel values (1/255: uint8 -> [0, 1]).
        do_normalize, image_mean, image_std: per-channel normalisation (one value per channel, or one
            for all; images keep as many channels as these describe, see :meth:`preprocess`).
        ignore_index: label of pixels that belong to no mask (e.g. 255).
        do_reduce_labels: label 0 becomes ``ignore_index``, every other label shifts down by one.
        num_labels: the model's class count, when known: class ids in maps must be below it (the loss
            could not use them); post-processing only warns about logits with another class count.
        do_pad: pad a batch bottom/right to its largest image (with a ``pixel_mask``); images of
            different sizes are padded even when False, as transformers pads them (with a warning).
        label_ids_to_fuse: classes whose segments merge in panoptic post-processing ("stuff") when a
            call does not pass ``label_ids_to_fuse``; saved with the processor, so the pipeline fuses too.
            When None, :meth:`from_pretrained` takes the model config's ``stuff_label_ids``.
        do_convert_rgb, pad_size, input_data_format, data_format, device, return_tensors, ...: transformers'
            per-call options (:attr:`_options`), here defaults for every call; see :meth:`preprocess`.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = MaskFormerImageProcessorKwargs
    _fields = ("do_resize", "size", "size_divisor", "resample", "do_rescale", "rescale_factor", "do_normalize",
               "image_mean", "image_std", "ignore_index", "do_reduce_labels", "num_labels", "do_pad",
               "label_ids_to_fuse")
    # transformers' other options (ImagesKwargs): per call, or defaults set in the constructor (saved when set)
    _options = ("do_convert_rgb", "pad_size", "input_data_format", "data_format", "device", "return_tensors",
                "disable_grouping", "default_to_square", "do_center_crop", "crop_size", "image_seq_length")

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | Sequence[int] | None = None,
        size_divisor: int = 32,
        resample: PILImageResampling | int | tvF.InterpolationMode = PILImageResampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: float | Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int | None = None,
        do_reduce_labels: bool = False,
        num_labels: int | None = None,
        do_pad: bool = True,
        label_ids_to_fuse: Iterable[int] | None = None,
        **kwargs: Any,
    ) -> None:
        # Names used by older transformers processor configs (Hub checkpoints).
        max_size = kwargs.pop("max_size", kwargs.pop("_max_size", None))
        if "reduce_labels" in kwargs:
            do_reduce_labels = kwargs.pop("reduce_labels")
        if "size_divisibility" in kwargs:
            size_divisor = kwargs.pop("size_divisibility")
        auto_map = kwargs.pop("auto_map", None)
        options = {name: kwargs.pop(name, None) for name in self._options}
        unused = sorted(k for k in kwargs if k not in ("image_processor_type", "feature_extractor_type", "processor_class"))
        if unused:
            logger.info("MaskFormerImageProcessor: ignoring unknown settings %s", unused)
        super().__init__()
        if auto_map is not None:
            self.auto_map = auto_map
        self.do_resize = bool(do_resize)
        self.size = size_dict(size if size is not None else {"shortest_edge": 800, "longest_edge": 1333}, max_size,
                               bool(options["default_to_square"]))
        self.size_divisor = int(size_divisor or 0)
        self.resample = resample_filter(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean, self.image_std = channel_statistic(image_mean, "image_mean"), channel_statistic(image_std, "image_std")
        channels_of(self.image_mean, self.image_std)
        self.ignore_index = ignore_index
        self.do_reduce_labels = bool(do_reduce_labels)
        self.num_labels = num_labels
        self.do_pad = bool(do_pad)
        self.label_ids_to_fuse = sorted({int(i) for i in label_ids_to_fuse}) if label_ids_to_fuse is not None else None
        for name, value in options.items():
            setattr(self, name, value)
        if options["pad_size"] is not None:
            self.pad_size = pad_size_dict(options["pad_size"])
        for name in ("input_data_format", "data_format"):
            if options[name] is not None:
                setattr(self, name, channel_dimension(options[name], name).value)
        if options["return_tensors"] is not None:
            self.return_tensors = image_inputs.tensor_type(options["return_tensors"]).value
        if options["device"] is not None:
            self.device = str(options["device"])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Load a saved processor. Without its own ``label_ids_to_fuse``, it takes the
        ``stuff_label_ids`` of the model config saved beside it (so a checkpoint declares its stuff
        classes once, in config.json, and the pipeline fuses them)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded
        if processor.label_ids_to_fuse is None:
            config = _config_beside(pretrained_model_name_or_path, {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
            stuff = None if config is None else config.get("stuff_label_ids")
            if stuff is not None:
                processor.label_ids_to_fuse = sorted({int(i) for i in stuff})
        return loaded

    def to_dict(self) -> dict[str, Any]:
        out = {field: getattr(self, field) for field in self._fields}
        out["resample"] = int(self.resample)
        out.update({name: getattr(self, name) for name in self._options if getattr(self, name, None) is not None})
        out["image_processor_type"] = type(self).__name__
        if getattr(self, "auto_map", None):
            out["auto_map"] = dict(self.auto_map)
        return out

    # -----------------------------------------------------------------------------------------
    def __call__(self, images: Any, segmentation_maps: Any = None, instance_id_to_semantic_id: Any = None,
                 **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    def preprocess(self, images: Any, segmentation_maps: Any = None,
                   instance_id_to_semantic_id: Mapping[int, int] | Sequence[Mapping[int, int] | None] | None = None,
                   **kwargs: Any) -> BatchFeature:
        """Images (and optional label maps) -> ``pixel_values`` `(B, C, H, W)` float32 (C = 3 for RGB),
        ``pixel_mask`` `(B, H, W)` int64 and, with maps, ``mask_labels`` (list of `(N_i, H, W)`
        float32, 0 on padding) and ``class_labels`` (list of `(N_i,)` int64).

        `images`: PIL images, numpy arrays or torch tensors (HWC or CHW, see `input_data_format`),
        one, a list or a batched 4-d array. Any constructor setting can be overridden for this call
        (e.g. ``do_resize=False`` for already augmented uint8 `(3, H, W)` tensors and `(H, W)` int64
        maps), and transformers' options are taken with their meaning:

        * ``return_tensors``: ``"pt"`` (the default here), ``"np"`` (``pixel_values`` and ``pixel_mask``
          as numpy arrays) or None (one tensor per image, as transformers returns them);
        * ``input_data_format``: ``"channels_first"`` / ``"channels_last"`` layout of arrays and
          tensors (None: inferred); ``do_convert_rgb``: grey and RGBA to RGB as transformers converts
          them (alpha over white; without it RGBA loses its alpha); ``pad_size``: pad to this
          ``{"height", "width"}`` instead of the batch's largest image; ``device``: where the tensors go;
        * ``data_format`` other than channels first, ``do_center_crop``, ``crop_size``,
          ``disable_grouping`` and ``image_seq_length`` change nothing, as in transformers'
          MaskFormer processor (the first two with a warning); ``reduce_labels`` is ``do_reduce_labels``.

        Channels: an image keeps its channels when ``image_mean``/``image_std`` have one value per
        channel or a single value; with three values, grey is replicated and RGBA loses its alpha.
        """
        if "reduce_labels" in kwargs:  # transformers 4.x's name
            reduced = kwargs.pop("reduce_labels")
            kwargs.setdefault("do_reduce_labels", reduced)
        unknown = sorted(set(kwargs) - set(self._fields) - set(self._options))
        if unknown:
            raise TypeError(f"MaskFormerImageProcessor: unknown arguments {unknown}; expected some of "
                            f"{list(self._fields) + list(self._options)}")
        s = {name: kwargs[name] if name in kwargs else getattr(self, name, None)
             for name in self._fields + self._options}
        return_tensors = kwargs["return_tensors"] if "return_tensors" in kwargs else (s["return_tensors"] or "pt")
        tensor_type = None if return_tensors is None else image_inputs.tensor_type(return_tensors)
        layout = None if s["input_data_format"] is None else channel_dimension(s["input_data_format"],
                                                                               "input_data_format")
        data_format = None if s["data_format"] is None else channel_dimension(s["data_format"], "data_format")
        if data_format == ChannelDimension.LAST:
            warn_once("data_format='channels_last' is ignored: pixel_values are channels first, the layout the model "
                       "takes (transformers' MaskFormer processor ignores it too)")
        if s["do_center_crop"]:
            warn_once("do_center_crop is ignored: MaskFormer processors resize and pad, they do not crop "
                       "(transformers' MaskFormer processor ignores it too)")
        size = size_dict(s["size"], None, bool(s["default_to_square"]))
        resample = resample_filter(s["resample"])
        mean, std = channel_statistic(s["image_mean"], "image_mean"), channel_statistic(s["image_std"], "image_std")
        channels = channels_of(mean, std)
        image_list = [match_channels(image_to_tensor(image, i, layout, s["do_convert_rgb"]), channels, i)
                      for i, image in enumerate(image_inputs.image_list(images))]
        if not image_list:
            raise ValueError("images: expected at least one image")
        counts = sorted({x.shape[0] for x in image_list})
        if len(counts) > 1:
            raise ValueError(f"images: expected one channel count for the batch, got {counts}")
        map_list = None
        if segmentation_maps is not None:
            map_list = [label_map_to_tensor(m) for m in as_list(segmentation_maps, 3, len(image_list))]
            if len(map_list) != len(image_list):
                raise ValueError(f"segmentation_maps: expected one per image ({len(image_list)}), got {len(map_list)}")
            for i, (image, label_map) in enumerate(zip(image_list, map_list)):
                if tuple(image.shape[-2:]) != tuple(label_map.shape):
                    raise ValueError(f"segmentation_maps[{i}]: size {tuple(label_map.shape)} differs from its image "
                                     f"{tuple(image.shape[-2:])}")
        mappings = per_image_mappings(instance_id_to_semantic_id, len(image_list))
        if s["do_rescale"] and any(x.is_floating_point() and x.numel() and float(x.max()) <= 1.0 for x in image_list):
            logger.warning("images: float pixels in [0, 1] with do_rescale=True are divided by %s again; pass "
                           "do_rescale=False if they are already scaled", 1 / s["rescale_factor"])

        # Resize (label maps grouped by size, so that same-sized maps go through one batched call).
        if s["do_resize"]:
            groups: dict[tuple, list[int]] = {}
            for i, image in enumerate(image_list):
                groups.setdefault((tuple(image.shape[-2:]), image.dtype), []).append(i)
            for ((height, width), _), members in groups.items():
                new_size = resize_output_size(height, width, size, s["size_divisor"])
                if new_size == (height, width):
                    continue
                for i in members:  # one by one: an HWC image's channels-last view takes the fast uint8
                    # kernel (3x faster than a stacked, contiguous batch)
                    image_list[i] = tvF.resize(image_list[i], list(new_size), antialias=True,
                                               interpolation=interpolation_mode(resample, image_list[i].device))
                if map_list is not None:
                    resize_label_maps(map_list, members, new_size)

        # Rescale + normalise (one fused affine map per channel), pad.
        count = counts[0]
        scale = s["rescale_factor"] if s["do_rescale"] else 1.0
        mean = torch.tensor(mean if s["do_normalize"] else 0.0).expand(count) * (1.0 / scale)
        std = torch.tensor(std if s["do_normalize"] else 1.0).expand(count) * (1.0 / scale)
        heights, widths = [x.shape[-2] for x in image_list], [x.shape[-1] for x in image_list]
        padded = (max(heights), max(widths))
        if s["pad_size"] is not None:
            wanted = pad_size_dict(s["pad_size"])
            if wanted["height"] < padded[0] or wanted["width"] < padded[1]:
                raise ValueError(f"pad_size: {wanted} is smaller than the largest resized image {padded}")
            padded = (wanted["height"], wanted["width"])
        elif not s["do_pad"] and (len(set(heights)) > 1 or len(set(widths)) > 1):
            warn_once("do_pad=False, but the images differ in size after resizing: they are padded to one size "
                       "(with a pixel_mask), as transformers' MaskFormer processor pads them; resize to a fixed size "
                       "to avoid padding")
        cpu = torch.device("cpu")
        pixel_values = _zeros((len(image_list), count, *padded), cpu)  # padding stays untouched
        pixel_mask = _zeros((len(image_list), *padded), cpu, torch.int64)
        scale_c, shift_c = (1.0 / std).view(count, 1, 1), (-mean / std).view(count, 1, 1)
        for i, image in enumerate(image_list):
            h, w = image.shape[-2:]
            valid = pixel_values[i, :, :h, :w]
            valid.copy_(image)  # uint8 -> float32, then (x - mean) / std in float: 3x faster than mixed dtypes
            torch.addcmul(shift_c, valid, scale_c, out=valid)
            pixel_mask[i, :h, :w] = 1
        data: dict[str, Any] = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if map_list is not None:
            mask_labels, class_labels = [], []
            for label_map, mapping in zip(map_list, mappings):
                masks, classes = segmentation_map_to_masks(label_map, mapping, s["ignore_index"], s["do_reduce_labels"],
                                                           s["num_labels"], padded_size=padded)
                mask_labels.append(masks)
                class_labels.append(classes)
            data.update(mask_labels=mask_labels, class_labels=class_labels)
        if s["device"] is not None:
            data = {k: [x.to(s["device"]) for x in v] if isinstance(v, list) else v.to(s["device"])
                    for k, v in data.items()}
        if tensor_type is None:  # transformers: one tensor per image
            data["pixel_values"], data["pixel_mask"] = list(data["pixel_values"]), list(data["pixel_mask"])
        encoded = BatchFeature(data={"pixel_values": data.pop("pixel_values"), "pixel_mask": data.pop("pixel_mask")},
                               tensor_type=None if tensor_type == TensorType.PYTORCH else tensor_type)
        encoded.update(data)  # label lists stay lists of tensors, whatever return_tensors is (as transformers')
        return encoded

    # -----------------------------------------------------------------------------------------
    def post_process_semantic_segmentation(self, outputs: Any, target_sizes: Sequence[Sequence[int]] | None = None,
                                           return_segmentation_scores: bool = False) -> list[Any]:
        """Per image a `(height, width)` int64 map of class ids (:func:`~maskformer_hf.inference.semantic_inference`);
        with `return_segmentation_scores`, a ``SemanticSegmentationPostProcessorOutput`` whose
        ``segmentation_scores`` are the `(num_labels, height, width)` class scores ``sum_i p_i(c) m_i``
        and whose ``segmentation`` is their argmax (transformers' format)."""
        logits = _logits(outputs, self.num_labels)
        if not return_segmentation_scores:
            return semantic_inference(*logits, target_sizes=target_sizes)
        return [SemanticSegmentationPostProcessorOutput(data={"segmentation": scores.argmax(0),
                                                              "segmentation_scores": scores})
                for scores in semantic_scores(*logits, target_sizes=target_sizes)]

    def post_process_instance_segmentation(self, outputs: Any, threshold: float = 0.5, mask_threshold: float = 0.5,
                                           overlap_mask_area_threshold: float = 0.8,
                                           target_sizes: Sequence[Sequence[int]] | None = None,
                                           return_coco_annotation: bool = False,
                                           return_binary_maps: bool = False) -> list[dict[str, Any]]:
        """Per image ``{"segmentation", "segments_info"}`` (see :func:`~maskformer_hf.inference.instance_inference`):
        the paper's non-overlapping map, or with `return_binary_maps` the `(N, H, W)` stack of every
        instance's full mask (overlaps allowed, transformers' convention: no overlap rule), or with
        `return_coco_annotation` the same masks run-length encoded, one per ``segments_info`` entry
        (transformers' ``binary_mask_to_rle`` format)."""
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps can not be both set to True.")
        results = instance_inference(*_logits(outputs, self.num_labels), target_sizes=target_sizes,
                                     threshold=threshold, mask_threshold=mask_threshold,
                                     overlap_mask_area_threshold=overlap_mask_area_threshold,
                                     return_binary_maps=bool(return_binary_maps or return_coco_annotation))
        if return_coco_annotation:
            for result in results:
                result["segmentation"] = [binary_mask_to_rle(mask) for mask in result["segmentation"]]
        return results

    def post_process_panoptic_segmentation(self, outputs: Any, threshold: float = 0.5, mask_threshold: float = 0.5,
                                           overlap_mask_area_threshold: float = 0.8,
                                           label_ids_to_fuse: Iterable[int] | None = None,
                                           target_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Any]]:
        """Per image ``{"segmentation", "segments_info"}`` (see :func:`~maskformer_hf.inference.panoptic_inference`).
        `label_ids_to_fuse` defaults to the processor's ``label_ids_to_fuse``; ids that the model's
        classes do not include fuse nothing (with a warning), as in transformers."""
        if label_ids_to_fuse is None:
            label_ids_to_fuse = self.label_ids_to_fuse
        logits = _logits(outputs, self.num_labels)
        num_labels = logits[0].shape[-1] - 1 if isinstance(logits[0], Tensor) and logits[0].ndim else None
        if label_ids_to_fuse is not None and num_labels is not None:
            fuse = {int(c) for c in label_ids_to_fuse}
            if any(not 0 <= c < num_labels for c in fuse):
                warn_once(f"label_ids_to_fuse: ids {sorted(c for c in fuse if not 0 <= c < num_labels)} are not "
                           f"classes of this model ({num_labels}); they fuse nothing")
                label_ids_to_fuse = sorted(c for c in fuse if 0 <= c < num_labels)
        return panoptic_inference(*logits, target_sizes=target_sizes, threshold=threshold,
                                  mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold,
                                  label_ids_to_fuse=label_ids_to_fuse)

    def segment_sliding_window(self, model: Any, images: Any, crop: int | Sequence[int], stride: int | Sequence[int],
                               task: str | Sequence[str] = "semantic", threshold: float = 0.5,
                               mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
                               label_ids_to_fuse: Iterable[int] | None = None,
                               target_sizes: Sequence[Sequence[int]] | None = None, batch_size: int = 4,
                               **overrides: Any) -> list[Any] | dict[str, list[Any]]:
        """Segment images larger than the training crop: pre-process them as :meth:`preprocess` does
        (with `overrides`, e.g. ``do_resize=False`` to keep a large image's resolution), run `model`
        on `crop` windows `stride` apart and blend them
        (:func:`~maskformer_hf.sliding_window.sliding_window_inference`, docs/inference.md). Results
        are what ``post_process_<task>_segmentation`` returns, at `target_sizes` (default: each
        image's own size); `label_ids_to_fuse` defaults to the processor's."""
        image_list = image_inputs.image_list(images)
        if target_sizes is None:
            target_sizes = [tuple(image_to_tensor(image, i).shape[-2:]) for i, image in enumerate(image_list)]
        inputs = self.preprocess(image_list, **overrides)
        device = next(model.parameters()).device
        return sliding_window_inference(
            model, inputs["pixel_values"].to(device), inputs["pixel_mask"].to(device), crop=crop, stride=stride,
            task=task, target_sizes=target_sizes, threshold=threshold, mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap_mask_area_threshold,
            label_ids_to_fuse=self.label_ids_to_fuse if label_ids_to_fuse is None else label_ids_to_fuse,
            batch_size=batch_size, size_divisor=int(overrides.get("size_divisor", self.size_divisor)))


# The public name. The class itself is named apart from transformers' ``MaskFormerImageProcessor``:
# ``AutoImageProcessor`` finds classes by the saved ``image_processor_type``, so a shared name made the
# package's import decide which processor a checkpoint of either library loaded as.
MaskFormerImageProcessor = MaskFormerHfImageProcessor


def saved_by_maskformer_hf(processor_dict: Mapping[str, Any], config_dict: Mapping[str, Any] | None) -> bool:
    """Whether a ``preprocessor_config.json`` (and the ``config.json`` beside it, if any) was written by
    this package: its ``auto_map`` names our processor module, or the model beside it is ours."""
    auto_map = (processor_dict.get("auto_map") or {}).get("AutoImageProcessor") or ""
    if isinstance(auto_map, (list, tuple)):
        auto_map = next((ref for ref in auto_map if ref), "")
    if str(auto_map).split("--")[-1].startswith("image_processing_maskformer."):
        return True
    return bool(config_dict) and config_dict.get("model_type") == "maskformer_hf"


class LegacyNameImageProcessor(MaskFormerHfImageProcessor):
    """What ``AutoImageProcessor`` finds for the name ``"MaskFormerImageProcessor"`` once the package is
    imported (registered by :func:`maskformer_hf.register_auto_classes`). Checkpoints saved by earlier
    versions of this package name our processor so; transformers' own checkpoints name theirs the same.
    Each folder gets its own library's processor: ours for ours (:func:`saved_by_maskformer_hf`),
    transformers' class of the requested backend (:attr:`transformers_class`) for everything else."""

    transformers_class = "MaskFormerImageProcessor"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        processor_dict, _ = BaseImageProcessor.get_image_processor_dict(pretrained_model_name_or_path, **hub)
        if saved_by_maskformer_hf(processor_dict, _config_beside(pretrained_model_name_or_path, hub)):
            return MaskFormerHfImageProcessor.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        import transformers

        return getattr(transformers, cls.transformers_class).from_pretrained(pretrained_model_name_or_path, *args,
                                                                            **kwargs)


class LegacyNameImageProcessorPil(LegacyNameImageProcessor):
    """:class:`LegacyNameImageProcessor` for ``backend="pil"``: transformers' PIL-backend class for its folders."""

    transformers_class = "MaskFormerImageProcessorPil"


# The names transformers looks classes up by (the saved ``image_processor_type`` and its PIL variant).
LegacyNameImageProcessor.__name__ = LegacyNameImageProcessor.__qualname__ = "MaskFormerImageProcessor"
LegacyNameImageProcessorPil.__name__ = LegacyNameImageProcessorPil.__qualname__ = "MaskFormerImageProcessorPil"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _config_beside(pretrained_model_name_or_path: str | os.PathLike, hub: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``config.json`` saved beside a processor, or None."""
    config_file = cached_file(pretrained_model_name_or_path, "config.json", **hub,
                              _raise_exceptions_for_missing_entries=False,
                              _raise_exceptions_for_connection_errors=False)
    return None if config_file is None else json.loads(Path(config_file).read_text())


























def _logits(outputs: Any, num_labels: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(class logits, mask logits, pixel mask or None) from a model output or a dict. Logits whose
    class count differs from the processor's `num_labels` + 1 are post-processed all the same, as
    transformers does (post-processing needs no `num_labels`), with a warning."""
    def get(name: str) -> Any:
        if isinstance(outputs, Mapping):
            return outputs.get(name)
        return getattr(outputs, name, None)

    class_logits, mask_logits = get("class_queries_logits"), get("masks_queries_logits")
    if class_logits is None or mask_logits is None:
        raise ValueError("outputs: expected class_queries_logits and masks_queries_logits (a MaskFormer output), "
                         f"got {type(outputs).__name__}")
    if num_labels is not None and isinstance(class_logits, Tensor) and class_logits.ndim and \
            class_logits.shape[-1] != num_labels + 1:
        warn_once(f"class_queries_logits: {class_logits.shape[-1]} classes (with no-object), where this processor's "
                   f"num_labels={num_labels} expects {num_labels + 1}; post-processing uses the logits' "
                   f"{class_logits.shape[-1] - 1} classes (is it the model's processor?)")
    return class_logits, mask_logits, get("pixel_mask")


# Loaded as a checkpoint's own code (``trust_remote_code=True``), this module is in ``sys.modules`` but not
# an attribute of its package, so pickling by reference cannot find the class by its name. ``datasets``
# fingerprints ``with_transform(partial(fn, image_processor=...))`` with dill, which then copies the class by
# value, module globals and all: a minute of work per transform ending in a RecursionError and a random
# fingerprint (transformers' run_instance_segmentation.py does exactly this). Bound to its package, the
# class is found by name, as when the package is installed.
_package, _, _name = __name__.rpartition(".")
if _package in sys.modules and not hasattr(sys.modules[_package], _name):
    setattr(sys.modules[_package], _name, sys.modules[__name__])
