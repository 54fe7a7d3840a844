"""What a transformers image processor accepts, checked and turned into tensors: images (PIL, numpy,
torch; HWC or CHW; grey, RGB, RGBA, 16-bit), label maps (class ids, instance ids, COCO panoptic RGB),
and the settings (``size``, ``pad_size``, ``resample``, ``image_mean``/``image_std``, ``input_data_format``,
``return_tensors``) in each of the forms transformers' processors take. Every function names the
argument it refuses and what it expected. Used by :mod:`maskformer_hf.image_processing_maskformer`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_utils import get_size_dict
from transformers.image_transforms import convert_to_rgb, get_size_with_aspect_ratio
from transformers.image_utils import (
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
    pil_torch_interpolation_mapping,
    torch_pil_interpolation_mapping,
)
from transformers.utils import TensorType, is_torchvision_greater_or_equal

logger = logging.getLogger(__name__)


# Filters transformers' torchvision backend resizes with; BOX and HAMMING have no tensor kernel (it fails on them).
RESAMPLE_FILTERS = {k: v for k, v in pil_torch_interpolation_mapping.items()
             if k not in (PILImageResampling.BOX, PILImageResampling.HAMMING)}


@functools.lru_cache(maxsize=None)
def warn_once(message: str) -> None:
    """A warning that an evaluation loop would otherwise repeat for every batch."""
    logger.warning(message)


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any mode -> RGB. 16-bit grey (``I;16*``, and ``I`` with values above 255) is
    scaled to 8 bits (``v / 257``) instead of clipped at 255 as ``convert("RGB")`` would; palette,
    grey, CMYK and alpha modes convert as PIL does (alpha dropped)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(f"image: {image.mode} pixels must lie in [0, 65535], got {low}..{high}")
        if image.mode.startswith("I;16") or high > 255:
            values = (values * 255 + 32767) // 65535
        return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_to_tensor(image: Any, index: int = 0, input_data_format: ChannelDimension | None = None,
                     do_convert_rgb: bool | None = None) -> Tensor:
    """PIL / numpy / torch image -> `(C, H, W)` uint8 or float32, with the channels it has.

    The layout of a 3-d array or tensor is `input_data_format` when given; else numpy is HWC and
    torch CHW where both read as 1, 3 or 4 channels, otherwise whichever does (PIL images are
    always HWC). With `do_convert_rgb`, grey and RGBA become RGB as transformers converts them
    (alpha composited over white). 16-bit integer arrays (``uint16``) are scaled to 8 bits
    (``v / 257``) as 16-bit PIL images are; other integer types must hold 0-255 values. Float
    pixels must be finite; bool and complex pixels, empty images and unknown layouts raise,
    naming ``images[index]``."""
    name = f"images[{index}]"
    if isinstance(image, Image.Image):
        if do_convert_rgb and ("A" in image.getbands() or "transparency" in image.info):
            array = torch.from_numpy(convert_to_rgb(image, return_numpy=True))  # transformers' conversion
        else:
            array = torch.from_numpy(np.array(image if image.mode in ("RGB", "L", "RGBA") else pil_to_rgb(image)))
        input_data_format, prefer_last = ChannelDimension.LAST, True
    elif isinstance(image, np.ndarray):
        if image.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected integer (0-255) or floating point pixels, got {image.dtype}")
        if image.dtype in (np.uint16, np.uint32, np.uint64):  # torch has few kernels for wide unsigned types
            image = image.astype(np.int64) if image.dtype != np.uint16 else image.astype(np.int32) * 255 // 65535
        array, prefer_last = torch.from_numpy(np.ascontiguousarray(image)), True
    elif isinstance(image, Tensor):
        array, prefer_last = image, False
        if array.dtype == torch.uint16:
            array = array.to(torch.int32) * 255 // 65535
        elif array.dtype in (torch.uint32, torch.uint64):
            array = array.to(torch.int64)
    else:
        raise TypeError(f"{name}: expected PIL images, numpy arrays or torch tensors, got {type(image).__name__}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if input_data_format is None:
            first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
            if not first and not last:
                raise ValueError(f"{name}: expected 1, 3 or 4 channels (HWC or CHW), got shape {tuple(array.shape)}; "
                                 "pass input_data_format for other channel counts")
            input_data_format = ChannelDimension.LAST if last and (prefer_last or not first) else ChannelDimension.FIRST
        if input_data_format == ChannelDimension.LAST:
            array = array.permute(2, 0, 1)
    else:
        raise ValueError(f"{name}: expected (H, W), (H, W, C) or (C, H, W), got shape {tuple(array.shape)}")
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise ValueError(f"{name}: expected an image of at least 1x1 pixels, got height {array.shape[1]} and "
                         f"width {array.shape[2]}")
    if array.dtype == torch.bool or array.is_complex():
        raise TypeError(f"{name}: expected integer (0-255) or floating point pixels, got {array.dtype}")
    if array.is_floating_point():
        if not bool(torch.isfinite(array).all()):
            raise ValueError(f"{name}: float pixels must be finite, found {int((~torch.isfinite(array)).sum())} "
                             "NaN or infinite values")
    elif array.dtype != torch.uint8:  # other integers: 0-255 values, as uint8
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{name}: integer pixels must lie in [0, 255], got values {low}..{high} ({array.dtype}); "
                             "16-bit images are read as uint16")
        array = array.to(torch.uint8)
    array = array if array.dtype == torch.uint8 else array.float()
    if do_convert_rgb and array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    elif do_convert_rgb and array.shape[0] == 4:  # transformers' conversion: alpha composited over white
        rgb = convert_to_rgb(array.permute(1, 2, 0).cpu().numpy(), return_numpy=True,
                             input_data_format=ChannelDimension.LAST)
        array = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    return array


def match_channels(image: Tensor, channels: int | None, index: int) -> Tensor:
    """`image` `(C, H, W)` with the `channels` that ``image_mean``/``image_std`` describe (None: one
    value for all, so any count): grey is replicated to RGB and RGBA loses its alpha, as PIL's
    ``convert("RGB")`` does."""
    count = image.shape[0]
    if channels is None or count == channels:
        return image
    if channels == 3 and count == 1:
        return image.expand(3, -1, -1)
    if channels == 3 and count == 4:
        return image[:3]
    raise ValueError(f"images[{index}]: has {count} channels, but image_mean/image_std have {channels} values; "
                     f"pass one value per channel (or a single value) for {count}-channel images")


def label_map_to_tensor(label_map: Any) -> Tensor:
    """PIL / numpy / torch label map -> `(H, W)` integer tensor. 3-channel uint8 maps are COCO
    panoptic PNGs: id = R + 256 G + 256^2 B."""
    if isinstance(label_map, Image.Image):
        if label_map.mode not in ("L", "P", "I", "I;16", "1", "RGB"):
            raise ValueError(f"segmentation_maps: unsupported PIL mode {label_map.mode!r} (expected L, P, I, I;16 or RGB)")
        array = torch.from_numpy(np.array(label_map).astype(np.int64) if label_map.mode in ("I;16", "I")
                                 else np.array(label_map))
        layout = "hwc"
    elif isinstance(label_map, np.ndarray):
        if label_map.dtype in (np.uint16, np.uint32, np.uint64):
            label_map = label_map.astype(np.int64)
        array, layout = torch.from_numpy(np.ascontiguousarray(label_map)), "hwc"
    elif isinstance(label_map, Tensor):
        array, layout = label_map, "chw"
        if array.dtype in (torch.uint16, torch.uint32, torch.uint64):
            array = array.to(torch.int64)
    else:
        raise TypeError(f"segmentation_maps: expected PIL images, numpy arrays or torch tensors, "
                        f"got {type(label_map).__name__}")
    if array.is_floating_point() or array.is_complex():
        raise TypeError(f"segmentation_maps: expected integer ids, got {array.dtype}")
    if array.dtype == torch.bool:
        array = array.to(torch.uint8)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]) and 3 not in (array.shape[0], array.shape[-1]):
        array = array.squeeze(0 if array.shape[0] == 1 else -1)
    if array.ndim == 3:
        if array.shape[-1] == 3 and (layout == "hwc" or array.shape[0] != 3):
            array = array.permute(2, 0, 1)
        elif array.shape[0] != 3:
            raise ValueError(f"segmentation_maps: expected (H, W) ids or (H, W, 3) RGB-encoded ids, got {tuple(array.shape)}")
        rgb = array.to(torch.int64)
        array = rgb[0] + 256 * rgb[1] + 65536 * rgb[2]
    if array.ndim != 2:
        raise ValueError(f"segmentation_maps: expected (H, W) per map, got shape {tuple(array.shape)}")
    return array


def image_list(images: Any) -> list:
    """Images as a flat list, as transformers takes them: lists (nested ones flattened), batched
    `(B, ...)` 4-d arrays or tensors (also inside lists), or one image."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in image_list(item)]
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def as_list(items: Any, batch_ndim: int, count: int | None = None) -> list:
    """A list of per-image items: lists stay, a stacked array of `batch_ndim` dims is split
    (label maps: a 3-d stack whose first dim is the number of images, when there are several)."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, (np.ndarray, Tensor)) and (
        items.ndim == batch_ndim + 1 or (count is not None and count > 1 and items.ndim == batch_ndim
                                         and items.shape[0] == count)):
        return list(items)
    return [items]


def resize_label_maps(maps: list[Tensor], members: list[int], size: tuple[int, int]) -> None:
    """Nearest-exact resizing of `maps[i]` `(H, W)` for `i` in `members` (all of one size), in place
    in the list: uint8 maps in one batched kernel call, wider ids by exact index gathering."""
    if all(maps[i].dtype == torch.uint8 for i in members):
        stacked = torch.stack([maps[i] for i in members])[:, None]
        resized = F.interpolate(stacked, size=size, mode="nearest-exact")[:, 0]
        for j, i in enumerate(members):
            maps[i] = resized[j]
        return
    height, width = maps[members[0]].shape
    rows = nearest_indices(height, size[0], maps[members[0]].device)
    cols = nearest_indices(width, size[1], maps[members[0]].device)
    for i in members:
        maps[i] = maps[i][rows[:, None], cols[None, :]]


def nearest_indices(size: int, new_size: int, device: torch.device) -> Tensor:
    """Source index of each output index under nearest-exact resizing (torch's own kernel)."""
    ramp = torch.arange(size, dtype=torch.float32, device=device).view(1, 1, size)
    return F.interpolate(ramp, size=new_size, mode="nearest-exact").view(-1).long()


def shortest_edge_size(shortest_edge: int) -> dict[str, int]:
    """The ``size`` setting "shortest edge `shortest_edge`, longest at most 4x that" (used for an
    evaluation size and for ``maskformer-hf segment --size``)."""
    return {"shortest_edge": int(shortest_edge), "longest_edge": 4 * int(shortest_edge)}


def resize_output_size(height: int, width: int, size: Mapping[str, int], size_divisor: int = 0) -> tuple[int, int]:
    """Output `(height, width)` for an image of `(height, width)`: shortest edge (capped by the
    longest edge; each side at least 1), within ``max_height`` x ``max_width`` (aspect kept, as
    transformers), or a fixed size; then rounded up to a multiple of `size_divisor`."""
    if "shortest_edge" in size:
        new_h, new_w = get_size_with_aspect_ratio((height, width), size["shortest_edge"], size.get("longest_edge"))
    elif "max_height" in size:
        new_h, new_w = get_image_size_for_max_height_width((height, width), size["max_height"], size["max_width"])
    else:
        new_h, new_w = size["height"], size["width"]
    new_h, new_w = max(1, new_h), max(1, new_w)  # an extreme aspect (10000x8) under a longest edge: 1 px, not 0
    if size_divisor:
        new_h, new_w = -(-new_h // size_divisor) * size_divisor, -(-new_w // size_divisor) * size_divisor
    return int(new_h), int(new_w)


SIZE_KEYS = ({"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"max_height", "max_width"}, {"height", "width"})


def size_dict(size: Mapping[str, int] | int | Sequence[int] | Any, max_size: int | None,
               default_to_square: bool = False) -> dict[str, int]:
    """``size`` in any of transformers' forms (dict, ``SizeDict``, an int: shortest edge, or a square
    with `default_to_square`; a `(height, width)` pair) as a dict of ints."""
    if isinstance(size, SizeDict):
        size = dict(size)
    elif isinstance(size, (int, np.integer, list, tuple)):
        size = get_size_dict(int(size) if isinstance(size, (int, np.integer)) else tuple(size), max_size=max_size,
                             default_to_square=default_to_square)
    elif not isinstance(size, Mapping):
        raise ValueError(f"size: expected a dict, an int or a (height, width) pair, got {size!r}")
    size = {k: int(v) for k, v in dict(size).items() if v is not None}
    if max_size is not None and "shortest_edge" in size:
        size.setdefault("longest_edge", int(max_size))
    if set(size) not in SIZE_KEYS:
        raise ValueError(f"size: expected {{'shortest_edge'[, 'longest_edge']}}, {{'max_height', 'max_width'}} or "
                         f"{{'height', 'width'}}, got {size}")
    if min(size.values()) < 1:
        raise ValueError(f"size: expected positive sizes, got {size}")
    return size


def pad_size_dict(pad_size: Mapping[str, int] | SizeDict | Any) -> dict[str, int]:
    """``pad_size`` as ``{"height", "width"}`` ints (a dict, ``SizeDict``, an int or a pair, as in transformers)."""
    if isinstance(pad_size, SizeDict):
        pad_size = dict(pad_size)
    elif not isinstance(pad_size, Mapping):
        pad_size = get_size_dict(pad_size, param_name="pad_size")
    pad_size = {k: int(v) for k, v in dict(pad_size).items() if v is not None}
    if set(pad_size) != {"height", "width"} or min(pad_size.values()) < 1:
        raise ValueError(f"pad_size: expected {{'height', 'width'}} of positive ints, got {pad_size}")
    return pad_size


def resample_filter(value: Any) -> PILImageResampling:
    """A ``resample`` setting (PIL filter, its int, or a torchvision ``InterpolationMode``) as a PIL filter
    transformers' torchvision backend can resize with."""
    if isinstance(value, tvF.InterpolationMode):
        value = torch_pil_interpolation_mapping.get(value, value)
    try:
        value = PILImageResampling(value)
    except (ValueError, TypeError):
        raise ValueError(f"resample: expected a PILImageResampling filter or InterpolationMode, got {value!r}"
                         ) from None
    if value not in RESAMPLE_FILTERS:
        raise ValueError(f"resample: expected NEAREST, BILINEAR, BICUBIC or LANCZOS (torchvision has no {value.name} "
                         f"kernel for tensors), got {value!r}")
    return value


def interpolation_mode(resample: PILImageResampling, device: torch.device) -> tvF.InterpolationMode:
    mode = RESAMPLE_FILTERS[resample]
    if mode == tvF.InterpolationMode.LANCZOS and (device.type != "cpu" or not is_torchvision_greater_or_equal("0.27")):
        warn_once("resample=LANCZOS needs torchvision >= 0.27 and CPU tensors; using BICUBIC, as transformers does")
        return tvF.InterpolationMode.BICUBIC
    return mode


def channel_statistic(value: float | Sequence[float], name: str) -> float | list[float]:
    """``image_mean`` / ``image_std``: one value for every channel, or one per channel."""
    values = [float(value)] if isinstance(value, (int, float, np.number)) else [float(v) for v in value]
    if not values or (name == "image_std" and min(values) <= 0):
        raise ValueError(f"{name}: expected a number or one number per channel{' (> 0)' if 'std' in name else ''}, "
                         f"got {value!r}")
    return values[0] if isinstance(value, (int, float, np.number)) else values


def channels_of(mean: float | list[float], std: float | list[float]) -> int | None:
    """The channel count that ``image_mean`` and ``image_std`` describe (None: any)."""
    counts = {len(v) for v in (mean, std) if isinstance(v, list)}
    if len(counts) > 1:
        raise ValueError(f"image_mean/image_std: expected as many values, got {mean} / {std}")
    return counts.pop() if counts else None


def channel_dimension(value: Any, name: str) -> ChannelDimension:
    try:
        return ChannelDimension(value.value if isinstance(value, ChannelDimension) else value)
    except ValueError:
        raise ValueError(f"{name}: expected 'channels_first' or 'channels_last' (ChannelDimension), got {value!r}"
                         ) from None


def tensor_type(value: Any) -> TensorType:
    try:
        tensor_type = TensorType(value.value if isinstance(value, TensorType) else value)
    except ValueError:
        tensor_type = None
    if tensor_type not in (TensorType.PYTORCH, TensorType.NUMPY):
        raise ValueError(f"return_tensors: expected 'pt', 'np' or None, got {value!r}")
    return tensor_type


def per_image_mappings(mapping: Any, count: int) -> list[Mapping[int, int] | None]:
    if mapping is None or isinstance(mapping, Mapping):
        return [mapping] * count
    mapping = list(mapping)
    if len(mapping) != count:
        raise ValueError(f"instance_id_to_semantic_id: expected one dict per image ({count}), got {len(mapping)}")
    return mapping
