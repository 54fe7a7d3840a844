"""Mask AP (COCO instance segmentation) as an ``evaluate`` module, loadable offline:
``evaluate.load(maskformer_hf.metrics.MASK_AP)``.

The computation is :func:`maskformer_hf.metrics.mask_ap` (pycocotools' ``COCOeval(iouType="segm")``
conventions). Masks are stored in ``evaluate``'s Arrow cache as COCO RLE strings
(``pycocotools.mask.encode``, a dependency of the package), a few hundred bytes per mask instead
of H x W values, and decoded when computing.
"""

from collections.abc import Mapping

import datasets
import evaluate
import numpy as np
from pycocotools import mask as mask_utils

from maskformer_hf.metrics.mask_ap import _as_masks, instances_from_post_processing, mask_ap

_DESCRIPTION = """Mask average precision and recall for instance segmentation, as COCO reports them
(AP at IoU 0.50:0.95, 0.50 and 0.75; AP for small, medium and large objects; AR at 1, 10 and 100
detections; AR for small, medium and large objects), and AP / AR per category."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image {"masks": (N, H, W) bool or 0/1, "scores": (N,), "labels": (N,) int}
        (tensors, arrays or lists), or a post_process_instance_segmentation result.
    references: per image {"masks": (M, H, W) bool or 0/1, "labels": (M,) int, "iscrowd": (M,) bool
        (optional, default False), "area": (M,) (optional, default the pixel counts)}.
    num_labels (int): number of categories K (label ids in [0, K)).
Returns:
    map, map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100, mar_small,
    mar_medium, mar_large (floats, -1 where no category has ground truth), n (categories averaged),
    per_category_ap, per_category_ar ((K,) arrays, nan for categories without ground truth).
"""

_COMMON = {"masks": datasets.List(datasets.Value("string")), "labels": datasets.List(datasets.Value("int64")),
           "height": datasets.Value("int64"), "width": datasets.Value("int64")}


def _encode(masks, name: str) -> dict:
    """`(N, H, W)` masks -> RLE strings and the size (masks are checked as the function checks them)."""
    masks = _as_masks(masks, name).cpu().numpy()
    height, width = masks.shape[1:]
    if masks.shape[0] == 0:
        return {"masks": [], "height": height, "width": width, "pixels": np.zeros(0)}
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return {"masks": [r["counts"].decode("ascii") for r in rles], "height": height, "width": width,
            "pixels": masks.reshape(masks.shape[0], -1).sum(1).astype(np.float64)}


def _decode(row: dict) -> np.ndarray:
    """Inverse of :func:`_encode`: `(N, H, W)` bool."""
    height, width = int(row["height"]), int(row["width"])
    if not row["masks"]:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [height, width], "counts": counts.encode("ascii")} for counts in row["masks"]]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def _vector(values) -> list:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values).tolist()


def _prediction(prediction) -> dict:
    if isinstance(prediction, Mapping) and "segments_info" in prediction:
        prediction = instances_from_post_processing(prediction)
    if not isinstance(prediction, Mapping) or not {"masks", "scores", "labels"} <= set(prediction):
        raise TypeError(f"predictions: expected dicts with 'masks', 'scores' and 'labels', got {prediction!r:.200}")
    row = _encode(prediction["masks"], "predictions masks")
    row.pop("pixels")
    return {**row, "scores": [float(s) for s in _vector(prediction["scores"])], "labels": _vector(prediction["labels"])}


def _reference(reference) -> dict:
    if not isinstance(reference, Mapping) or not {"masks", "labels"} <= set(reference):
        raise TypeError(f"references: expected dicts with 'masks' and 'labels' (and optionally 'iscrowd', "
                        f"'area'), got {reference!r:.200}")
    row = _encode(reference["masks"], "references masks")
    pixels = row.pop("pixels")
    count = len(row["masks"])
    crowd = reference.get("iscrowd")
    area = reference.get("area")
    return {**row, "labels": _vector(reference["labels"]),
            "iscrowd": [bool(c) for c in _vector(crowd)] if crowd is not None else [False] * count,
            "area": [float(a) for a in _vector(area)] if area is not None else pixels.tolist()}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskAP(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {**_COMMON, "scores": datasets.List(datasets.Value("float64"))},
                "references": {**_COMMON, "iscrowd": datasets.List(datasets.Value("bool")),
                               "area": datasets.List(datasets.Value("float64"))},
            }),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of images (masks RLE-encoded first, see ``_encode``)."""
        predictions = None if predictions is None else [_prediction(p) for p in predictions]
        references = None if references is None else [_reference(r) for r in references]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one image (masks RLE-encoded first, see ``_encode``)."""
        prediction = None if prediction is None else _prediction(prediction)
        reference = None if reference is None else _reference(reference)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, num_labels: int):
        preds = [{"masks": _decode(p), "scores": np.asarray(p["scores"], dtype=np.float64),
                  "labels": np.asarray(p["labels"], dtype=np.int64)} for p in predictions]
        refs = [{"masks": _decode(r), "labels": np.asarray(r["labels"], dtype=np.int64),
                 "iscrowd": np.asarray(r["iscrowd"], dtype=bool), "area": np.asarray(r["area"], dtype=np.float64)}
                for r in references]
        return mask_ap(preds, refs, num_labels=num_labels)
