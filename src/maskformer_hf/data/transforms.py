"""Augmentation with torchvision ``transforms.v2`` and conversion of examples to tensors.

:class:`SegmentationTransform` turns an example of the shared schema (see
:mod:`maskformer_hf.data`) into tensors, optionally through a v2 pipeline, and works on one
example or on a batch, so ``dataset.with_transform(SegmentationTransform(...))`` and
``transform(dataset[i])`` both work; it holds no lambda and pickles into ``DataLoader`` workers.
Output per example:

- ``image``: `(3, H, W)` uint8 tensor;
- ``label_map``: `(H, W)` int64 tensor. Semantic data: class indices, reduced or mapped from the
  stored values (``label_values``, e.g. Cityscapes' labelIds -> train ids) if the metadata says so,
  unlabelled and padded pixels = ``ignore_index``. Panoptic data: the segment ids, unchanged
  (ids above 255, even above 2^24, survive: the pipeline moves compact indices, see below); void
  and padded pixels = 0;
- ``segments_info``: the segments still present after augmentation (``id``, ``label_id``, ``iscrowd``);
- ``instance_id_to_semantic_id``: ``{segment id: label id}`` of the non-crowd segments (None for
  semantic data). Pixels whose id is not a key — void (0) and crowd segments — belong to no
  ground-truth mask; ``drop_crowd=True`` also turns crowd pixels into void and drops their entries;
- ``image_id``.

Inside the v2 pipeline the label map is a ``tv_tensors.Mask`` of compact indices (0 = padding,
1.. = the distinct values of the map), so geometric transforms resample it with NEAREST and pad
it with v2's default fill 0, which maps back to the ignore label (semantic) or void (panoptic);
images are padded with 0. Any v2 pipeline that leaves the mask fill at its default works.

Recipes: :func:`ade20k_train_transforms` (the paper's recipe for ADE20K and the other semantic
sets: scale jitter, crop, flip, colour) and
:func:`coco_panoptic_train_transforms` (DETR's COCO recipe).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .schema import SegmentationMetadata, read_label_map


class RandomSizeCrop(v2.Transform):
    """Crop a random region of height and width drawn uniformly from ``[min_size, max_size]``
    (capped by the input size), at a random position: DETR's ``RandomSizeCrop``."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h = int(torch.randint(min(self.min_size, height), min(self.max_size, height) + 1, ()))
        crop_w = int(torch.randint(min(self.min_size, width), min(self.max_size, width) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.crop, inpt, **params)


def ade20k_train_transforms(
    crop_size: int | Sequence[int] = 512,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip_prob: float = 0.5,
    color_jitter: bool = True,
    scale_base: int | None = None,
) -> v2.Compose:
    """The paper's semantic recipe (detectron2's): short side resized to ``scale_base × s``, s from
    ``scale_range`` in steps of 0.1, long side ≤ 4 × ``scale_base``; a random crop of ``crop_size``
    (an int for a square, or ``(height, width)``; padded when the image is smaller), horizontal
    flip, colour jitter (torchvision's ColorJitter standing in for the SSD-style photometric
    distortion: brightness, contrast, saturation, hue).

    ``scale_base`` defaults to the crop's longer side, the convention of the paper's configs:
    ADE20K 512 -> short sides 256..1024; Cityscapes crop (512, 1024) -> 512..2048, long side ≤ 4096.
    Mapillary Vistas crops 1280 but jitters around 2048 (1024..4096, long side ≤ 8192)."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    crop = [int(crop_size)] * 2 if isinstance(crop_size, (int, np.integer)) else [int(side) for side in crop_size]
    if len(crop) != 2 or min(crop) < 1:
        raise ValueError(f"crop_size must be a positive int or (height, width), got {crop_size!r}")
    base = max(crop) if scale_base is None else scale_base
    if base < 1:
        raise ValueError(f"scale_base must be >= 1, got {scale_base}")
    short_sides = sorted({max(1, round(base * s)) for s in np.arange(low, high + 1e-6, 0.1)})
    steps: list[Any] = [
        v2.RandomShortestSize(short_sides, max_size=4 * base),
        v2.RandomCrop(crop, pad_if_needed=True),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05))
    return v2.Compose(steps)


def coco_panoptic_train_transforms(
    scales: Sequence[int] = tuple(range(480, 801, 32)),
    max_size: int = 1333,
    crop_scales: Sequence[int] = (400, 500, 600),
    crop_size: tuple[int, int] = (384, 600),
    flip_prob: float = 0.5,
) -> v2.Compose:
    """DETR's COCO recipe: flip, then either a random short side from ``scales`` (long side ≤
    ``max_size``), or a random short side from ``crop_scales``, a random crop with sides in
    ``crop_size``, and a random short side from ``scales`` — each branch with probability ½."""
    return v2.Compose([
        v2.RandomHorizontalFlip(flip_prob),
        v2.RandomChoice([
            v2.RandomShortestSize(list(scales), max_size=max_size),
            v2.Compose([
                v2.RandomShortestSize(list(crop_scales)),
                RandomSizeCrop(*crop_size),
                v2.RandomShortestSize(list(scales), max_size=max_size),
            ]),
        ]),
    ])


def _image_tensor(image: Any) -> Tensor:
    """PIL image / `(H, W, 3)` array / `(3, H, W)` uint8 tensor -> `(3, H, W)` uint8 tensor."""
    if isinstance(image, Image.Image):
        return v2.functional.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.uint8:
        return image.as_subclass(Tensor)
    raise TypeError("image must be a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor, got "
                    f"{type(image).__name__} {getattr(image, 'shape', '')}")


class SegmentationTransform:
    """Example of the shared schema -> tensors, through an optional v2 pipeline (see module docstring).

    Args:
        metadata: the dataset's :class:`SegmentationMetadata` (``get_metadata(dataset)``).
        transforms: a v2 transform called as ``transforms(image, mask)``; None: no augmentation.
        drop_crowd: panoptic data: crowd pixels become void and their segments are dropped.
        to_semantic: panoptic data: output a semantic class map instead (void and crowd pixels =
            ``metadata.ignore_index``) and no segments.
    """

    def __init__(self, metadata: SegmentationMetadata, transforms: Callable[..., Any] | None = None,
                 drop_crowd: bool = False, to_semantic: bool = False):
        if not isinstance(metadata, SegmentationMetadata):
            raise TypeError(f"metadata must be a SegmentationMetadata, got {type(metadata).__name__}")
        if to_semantic and metadata.task != "panoptic":
            raise ValueError("to_semantic=True needs panoptic data; this dataset is already semantic")
        self.metadata = metadata
        # label_values sorted once: stored value -> label id by searchsorted (every example's map)
        self._values = None if metadata.label_values is None else torch.sort(
            torch.tensor(metadata.label_values, dtype=torch.long))  # (values (K,), label ids (K,))
        self.transforms = transforms
        self.drop_crowd = drop_crowd
        self.to_semantic = to_semantic

    def __call__(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """One example, or a batch (a dict of lists, as ``datasets.with_transform`` passes)."""
        if isinstance(example.get("image"), list):
            count = len(example["image"])
            rows = [self.transform_example(example["image"][i], example["annotation"][i],
                                           example["segments_info"][i] if "segments_info" in example else [],
                                           example["image_id"][i] if "image_id" in example else None)
                    for i in range(count)]
            return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        return self.transform_example(example["image"], example["annotation"], example.get("segments_info", []),
                                      example.get("image_id"))

    def transform_example(self, image: Any, annotation: Any, segments_info: Sequence[Mapping[str, Any]],
                          image_id: str | None = None) -> dict[str, Any]:
        """Tensors of one example; see the module docstring for the output."""
        pixels = _image_tensor(image)  # (3, H, W) uint8
        label_map = torch.from_numpy(read_label_map(annotation, self.metadata.task))  # (H, W) int64
        if label_map.shape != pixels.shape[1:]:
            raise ValueError(f"image {image_id}: annotation size {tuple(label_map.shape)} != image size "
                             f"{tuple(pixels.shape[1:])}")
        segments = [{"id": int(s["id"]), "label_id": int(s["label_id"]), "iscrowd": bool(s.get("iscrowd", False))}
                    for s in segments_info]
        if self.metadata.task == "semantic":
            label_map, fill = self._semantic_map(label_map, image_id), self.metadata.ignore_index
        else:
            label_map, segments = self._panoptic_map(label_map, segments, image_id)
            fill = self.metadata.ignore_index if self.to_semantic else 0
        if self.transforms is not None:
            values, compact = torch.unique(label_map, return_inverse=True)  # compact < 2^24: exact in any kernel
            pixels, mask = self.transforms(tv_tensors.Image(pixels), tv_tensors.Mask(compact + 1))
            lookup = torch.cat([torch.tensor([fill]), values])  # index 0 = padding
            label_map = lookup[mask.as_subclass(Tensor)]
            pixels = pixels.as_subclass(Tensor)
        semantic = self.metadata.task == "semantic" or self.to_semantic
        if not semantic:
            present = set(torch.unique(label_map).tolist())
            segments = [s for s in segments if s["id"] in present]
        return {
            "image": pixels.contiguous(),
            "label_map": label_map.long().contiguous(),
            "segments_info": [] if semantic else segments,
            "instance_id_to_semantic_id": None if semantic else
            {s["id"]: s["label_id"] for s in segments if not s["iscrowd"]},
            "image_id": image_id,
        }

    def _semantic_map(self, label_map: Tensor, image_id: str | None) -> Tensor:
        ignore = self.metadata.ignore_index
        if self.metadata.reduce_labels:
            label_map = torch.where(label_map == 0, torch.full_like(label_map, ignore), label_map - 1)
        if self._values is not None:  # stored value -> label id, any other value -> ignore
            values, labels = self._values  # (K,), (K,)
            position = torch.searchsorted(values, label_map).clamp(max=len(values) - 1)  # (H, W)
            label_map = torch.where(values[position] == label_map, labels[position], torch.full_like(label_map, ignore))
        bad = (label_map != ignore) & ((label_map < 0) | (label_map >= self.metadata.num_labels))
        if bad.any():
            raise ValueError(f"image {image_id}: label value {int(label_map[bad][0])} is neither a class in "
                             f"[0, {self.metadata.num_labels}) nor ignore_index={ignore}"
                             f"{' (after reduce_labels)' if self.metadata.reduce_labels else ''}")
        return label_map

    def _panoptic_map(self, label_map: Tensor, segments: list[dict[str, Any]],
                      image_id: str | None) -> tuple[Tensor, list[dict[str, Any]]]:
        """Unlisted ids -> 0 (void); crowd -> void if ``drop_crowd``; class map if ``to_semantic``."""
        if any(s["id"] == 0 for s in segments):
            raise ValueError(f"image {image_id}: segment id 0 is reserved for void")
        if self.drop_crowd:
            segments = [s for s in segments if not s["iscrowd"]]
        ids = torch.tensor([s["id"] for s in segments], dtype=torch.long)
        listed = torch.isin(label_map, ids)
        if self.to_semantic:
            keep = [s for s in segments if not s["iscrowd"]]
            labels = torch.full_like(label_map, self.metadata.ignore_index)
            if keep:
                order = torch.tensor([s["id"] for s in keep]).argsort()
                keep_ids = torch.tensor([s["id"] for s in keep])[order]
                keep_labels = torch.tensor([s["label_id"] for s in keep])[order]
                position = torch.searchsorted(keep_ids, label_map).clamp(max=len(keep) - 1)
                hit = keep_ids[position] == label_map
                labels = torch.where(hit, keep_labels[position], labels)
            return labels, []
        return torch.where(listed, label_map, torch.zeros_like(label_map)), segments
