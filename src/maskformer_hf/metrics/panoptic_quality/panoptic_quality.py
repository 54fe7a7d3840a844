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
    predicted_segments_info: per image, a list of {"id", "label_id", ...} (e.g. the post-processing's
        segments_info; other keys are dropped) or an {id: label_id} dict; ids absent from it are unassigned.
    reference_segments_info: per image, a list of {"id", "label_id", "iscrowd"} (iscrowd defaults to
        False); ids absent from it are void.
    num_labels (int): number of classes K (label ids in [0, K)).
    thing_ids (list of int, optional): the label ids that are things; the others are stuff.
Returns:
    pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff (floats), n, n_things,
    n_stuff (number of classes averaged), per_category_pq, per_category_sq, per_category_rq ((K,) arrays).
"""

_SEGMENT = {"id": datasets.Value("int64"), "label_id": datasets.Value("int64")}


def _segments(per_image, with_crowd: bool):
    """Keep the keys the Arrow features hold: post-processing outputs also carry ``score``/``was_fused``;
    ``{id: label_id}`` mappings are accepted; ``iscrowd`` defaults to False."""
    if per_image is None:
        return None
    out = []
    for segments in per_image:
        if isinstance(segments, dict):
            segments = [{"id": i, "label_id": label} for i, label in segments.items()]
        rows = []
        for segment in segments:
            row = {"id": int(segment["id"]), "label_id": int(segment["label_id"])}
            if with_crowd:
                row["iscrowd"] = bool(segment.get("iscrowd", False))
            rows.append(row)
        out.append(rows)
    return out


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

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of images (segment lists normalised first, see ``_segments``)."""
        kwargs["predicted_segments_info"] = _segments(kwargs.get("predicted_segments_info"), with_crowd=False)
        kwargs["reference_segments_info"] = _segments(kwargs.get("reference_segments_info"), with_crowd=True)
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one image (segment lists normalised first, see ``_segments``)."""
        if kwargs.get("predicted_segments_info") is not None:
            kwargs["predicted_segments_info"] = _segments([kwargs["predicted_segments_info"]], False)[0]
        if kwargs.get("reference_segments_info") is not None:
            kwargs["reference_segments_info"] = _segments([kwargs["reference_segments_info"]], True)[0]
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, predicted_segments_info, reference_segments_info,
                 num_labels: int, thing_ids=()):
        return panoptic_quality(predictions, predicted_segments_info, references, reference_segments_info,
                                num_labels, thing_ids=thing_ids)
