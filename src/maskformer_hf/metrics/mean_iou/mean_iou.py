"""Mean IoU as an ``evaluate`` module, loadable offline: ``evaluate.load(maskformer_hf.metrics.MEAN_IOU)``.

The computation is :func:`maskformer_hf.metrics.mean_iou` (confusion matrices via ``bincount``);
arguments and outputs match the Hub's ``mean_iou`` metric.
"""

import datasets
import evaluate

from maskformer_hf.metrics.iou import mean_iou

_DESCRIPTION = """Mean intersection-over-union of semantic segmentation maps: per-class IoU and
accuracy, their means over the classes that occur (nan classes excluded) and pixel accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer class maps.
    references: list of (H, W) integer class maps (same shapes), ``ignore_index`` marks skipped pixels.
    num_labels (int): number of classes K.
    ignore_index (int, default 255): reference value to skip; None to skip nothing.
    nan_to_num (float, optional): replace nans in the results by this value.
    label_map (dict, optional): {old: new} remapping of reference values.
    reduce_labels (bool, default False): 0 -> ignore_index, k -> k - 1 on the references (ADE20K).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy ((K,) arrays).
Examples:
    >>> import evaluate, maskformer_hf.metrics
    >>> metric = evaluate.load(maskformer_hf.metrics.MEAN_IOU)
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)["mean_iou"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
            }),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index=255, nan_to_num=None,
                 label_map=None, reduce_labels: bool = False):
        return mean_iou(list(predictions), list(references), num_labels, ignore_index=ignore_index,
                        nan_to_num=nan_to_num, label_map=label_map, reduce_labels=reduce_labels)
