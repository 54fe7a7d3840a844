"""Segmentation metrics: mean IoU, panoptic quality and mask AP, as plain functions and as ``evaluate`` modules.

Plain functions (vectorised torch, no per-pixel Python; statistics that add up over batches):

- :func:`confusion_matrix` -> `(K, K)` counts; :func:`mean_iou_from_confusion`; :func:`mean_iou`
  (one shot, the arguments and outputs of the Hub's ``mean_iou``); :class:`MeanIoU` (accumulator).
- :func:`panoptic_statistics` (one image) / :func:`panoptic_quality_statistics` (many) ->
  :class:`PanopticQualityStatistics`; :func:`panoptic_quality_from_statistics`;
  :func:`panoptic_quality` (one shot); :class:`PanopticQuality` (accumulator).
- :func:`mask_ap_image_statistics` (one image) / :func:`mask_ap_statistics` (many) -> :class:`MaskAPStatistics`
  (matching results, no masks); :func:`mask_ap_from_statistics` (COCO's ``map``, ``map_50``, ``map_75``,
  ``map_small/medium/large``, ``mar_1/10/100``, ``mar_small/medium/large``, ``per_category_ap``);
  :func:`mask_ap` (one shot); :class:`MaskAP` (accumulator, ``state()`` / ``merge()`` across processes);
  :func:`instances_from_post_processing` and :func:`instances_from_segments` build its per-image dicts.
  Conventions: pycocotools' ``COCOeval(iouType="segm")``. :func:`mask_intersections`: exact `(n, m)`
  pairwise intersection counts of two mask stacks.

``evaluate`` modules shipped inside the package, loadable offline::

    import evaluate
    from maskformer_hf.metrics import MASK_AP, MEAN_IOU, PANOPTIC_QUALITY
    miou = evaluate.load(MEAN_IOU)          # compute(predictions=, references=, num_labels=, ignore_index=)
    pq = evaluate.load(PANOPTIC_QUALITY)    # compute(predictions=, references=, predicted_segments_info=,
                                            #         reference_segments_info=, num_labels=, thing_ids=)
    ap = evaluate.load(MASK_AP)             # compute(predictions=[{"masks", "scores", "labels"}],
                                            #         references=[{"masks", "labels", "iscrowd", "area"}], num_labels=)

The modules store every map (mask AP: every mask, as COCO RLE) in ``evaluate``'s Arrow cache before
computing; long evaluation loops are cheaper with the accumulators above (one `(K, K)` or `(4, K)`
tensor of state; for mask AP a few bytes per detection).
"""

from pathlib import Path

from .iou import MeanIoU, confusion_matrix, mean_iou, mean_iou_from_confusion, reduce_labels_map
from .mask_ap import (
    MaskAP,
    MaskAPStatistics,
    instances_from_post_processing,
    instances_from_segments,
    mask_ap,
    mask_ap_from_statistics,
    mask_ap_image_statistics,
    mask_ap_statistics,
    mask_intersections,
)
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
MASK_AP: str = str(_HERE / "mask_average_precision")  # pass to evaluate.load

__all__ = [
    "MASK_AP",
    "MEAN_IOU",
    "PANOPTIC_QUALITY",
    "MaskAP",
    "MaskAPStatistics",
    "MeanIoU",
    "PanopticQuality",
    "PanopticQualityStatistics",
    "confusion_matrix",
    "instances_from_post_processing",
    "instances_from_segments",
    "mask_ap",
    "mask_ap_from_statistics",
    "mask_ap_image_statistics",
    "mask_ap_statistics",
    "mask_intersections",
    "mean_iou",
    "mean_iou_from_confusion",
    "panoptic_quality",
    "panoptic_quality_from_statistics",
    "panoptic_quality_statistics",
    "panoptic_statistics",
    "reduce_labels_map",
]
