"""Segmentation metrics: mean IoU and panoptic quality, as plain functions and as ``evaluate`` modules.

Plain functions (vectorised torch, no per-pixel Python; statistics that add up over batches):

- :func:`confusion_matrix` -> `(K, K)` counts; :func:`mean_iou_from_confusion`; :func:`mean_iou`
  (one shot, the arguments and outputs of the Hub's ``mean_iou``); :class:`MeanIoU` (accumulator).
- :func:`panoptic_statistics` (one image) / :func:`panoptic_quality_statistics` (many) ->
  :class:`PanopticQualityStatistics`; :func:`panoptic_quality_from_statistics`;
  :func:`panoptic_quality` (one shot); :class:`PanopticQuality` (accumulator).

``evaluate`` modules shipped inside the package, loadable offline::

    import evaluate
    from maskformer_hf.metrics import MEAN_IOU, PANOPTIC_QUALITY
    miou = evaluate.load(MEAN_IOU)          # compute(predictions=, references=, num_labels=, ignore_index=)
    pq = evaluate.load(PANOPTIC_QUALITY)    # compute(predictions=, references=, predicted_segments_info=,
                                            #         reference_segments_info=, num_labels=, thing_ids=)

Both modules store every map in ``evaluate``'s Arrow cache before computing; long evaluation loops
are cheaper with the accumulators above (one `(K, K)` or `(4, K)` tensor of state).
"""

from pathlib import Path

from .iou import MeanIoU, confusion_matrix, mean_iou, mean_iou_from_confusion, reduce_labels_map
from .panoptic import (
    PanopticQuality,
    PanopticQualityStatistics,
    panoptic_quality,
    panoptic_quality_from_statistics,
    panoptic_quality_statistics,
    panoptic_statistics,
)

_HERE = Path(__file__).resolve().parent
MEAN_IOU: str = str(_HERE / "mean_iou")  # pass to evaluate.load
PANOPTIC_QUALITY: str = str(_HERE / "panoptic_quality")  # pass to evaluate.load

__all__ = [
    "MEAN_IOU",
    "PANOPTIC_QUALITY",
    "MeanIoU",
    "PanopticQuality",
    "PanopticQualityStatistics",
    "confusion_matrix",
    "mean_iou",
    "mean_iou_from_confusion",
    "panoptic_quality",
    "panoptic_quality_from_statistics",
    "panoptic_quality_statistics",
    "panoptic_statistics",
    "reduce_labels_map",
]
