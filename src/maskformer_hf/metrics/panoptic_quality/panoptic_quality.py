"""Panoptic quality as an ``evaluate`` module, loadable offline:
``evaluate.load(maskformer_hf.metrics.PANOPTIC_QUALITY)``.

The computation is :func:`maskformer_hf.metrics.panoptic_quality` (COCO panopticapi conventions:
IoU > 0.5 matches of the same class, void removed from the union, crowd regions not counted as
false positives).
"""

import datasets
import evaluate

from maskformer_hf.metrics.panoptic import panoptic_quality

_DESCRIPTION = """Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ) for
all classes, things and stuff, and per class, with the COCO panopticapi conventions."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer predicted segment-id maps.
    references: list of (H, W) integer ground-truth segment-id maps.
    predicted_segments_info: per image, a list of {"id", "label_id"} (ids absent from it are unassigned).
    reference_segments_info: per image, a list of {"id", "label_id", "iscrowd"} (ids absent from it are void).
    num_labels (int): number of classes K (label ids in [0, K)).
    thing_ids (list of int, optional): the label ids that are things; the others are stuff.
Returns:
    pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff (floats), n, n_things,
    n_stuff (number of classes averaged), per_category_pq, per_category_sq, per_category_rq ((K,) arrays).
"""

_SEGMENT = {"id": datasets.Value("int64"), "label_id": datasets.Value("int64")}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PanopticQuality(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                "predicted_segments_info": datasets.List(_SEGMENT),
                "reference_segments_info": datasets.List({**_SEGMENT, "iscrowd": datasets.Value("bool")}),
            }),
        )

    def _compute(self, predictions, references, predicted_segments_info, reference_segments_info,
                 num_labels: int, thing_ids=()):
        return panoptic_quality(predictions, predicted_segments_info, references, reference_segments_info,
                                num_labels, thing_ids=thing_ids)
