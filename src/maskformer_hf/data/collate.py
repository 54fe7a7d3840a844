"""Batches for the model: transformed examples -> ``pixel_values``, ``pixel_mask``, ``mask_labels``,
``class_labels``, through :class:`~maskformer_hf.MaskFormerImageProcessor` (rescale, normalise,
pad; the label maps become one binary mask per segment).

Examples come from :class:`~maskformer_hf.data.transforms.SegmentationTransform`: ``image``
`(3, H, W)` uint8, ``label_map`` `(H, W)` int64 (class ids with ``ignore_index`` for semantic data;
segment ids with 0 = void for panoptic data) and ``instance_id_to_semantic_id`` (panoptic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class MaskFormerCollator:
    """``collate_fn`` for a ``DataLoader`` or ``Trainer`` (picklable: safe in worker processes).

    Args:
        image_processor: a :class:`~maskformer_hf.MaskFormerImageProcessor`; its resizing is not used
            (augmentation has sized the images), its rescale / normalise / pad settings are.
        ignore_index: the label of ignored pixels in semantic maps (they belong to no mask).
        return_image_ids: also return ``image_ids``, the examples' ``image_id`` (None where absent), for
            the training loop's reports; pop it before ``model(**batch)``.
    """

    def __init__(self, image_processor: Any, ignore_index: int = 255, return_image_ids: bool = False) -> None:
        self.image_processor = image_processor
        self.ignore_index = ignore_index
        self.return_image_ids = return_image_ids

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("MaskFormerCollator: got an empty batch")
        for i, example in enumerate(examples):
            missing = [key for key in ("image", "label_map") if key not in example]
            if missing:
                raise ValueError(f"MaskFormerCollator: example {i} has no {missing} (keys: {sorted(example)}); "
                                 "expected the output of SegmentationTransform")
        mappings = [example.get("instance_id_to_semantic_id") for example in examples]
        panoptic = mappings[0] is not None
        if any((m is not None) != panoptic for m in mappings):
            raise ValueError("MaskFormerCollator: a batch mixes semantic and panoptic examples")
        batch = self.image_processor(
            images=[example["image"] for example in examples],
            segmentation_maps=[example["label_map"] for example in examples],
            # Panoptic: id 0 is void and unlisted ids (crowd) belong to no mask; the processor's
            # reduce_labels convention says exactly that when every class is shifted up by one.
            instance_id_to_semantic_id=[{int(k): int(v) + 1 for k, v in m.items()} for m in mappings] if panoptic
            else None,
            do_resize=False,
            do_reduce_labels=panoptic,
            ignore_index=self.ignore_index,
            return_tensors="pt",
        )
        out: dict[str, Any] = {key: batch[key] for key in ("pixel_values", "pixel_mask", "mask_labels", "class_labels")}
        if self.return_image_ids:
            out["image_ids"] = [example.get("image_id") for example in examples]
        return out


__all__ = ["MaskFormerCollator"]
