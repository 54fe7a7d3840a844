"""Evaluate a model on a dataset of the shared schema: mean IoU (semantic), panoptic quality and mask AP.

Used by the training loop, the ``Trainer`` route and ``maskformer-hf evaluate``. Each process of a
distributed run takes every ``num_processes``-th image; the metric statistics (a confusion matrix,
PQ's per-class counts) are summed across processes through the ``reduce_sum`` callable given, and
mask AP's per-detection records are gathered through ``gather_object``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data.coco_instances import has_instances, read_instances
from .data.schema import read_example
from .data.transforms import SegmentationTransform
from .metrics import MaskAP, MeanIoU, PanopticQuality, PanopticQualityStatistics
from .metrics.mask_ap import instances_from_post_processing, instances_from_segments


def _ground_truth(example: dict, transform: SegmentationTransform, ignore_index: int) -> dict:
    """The image and its semantic class map; for panoptic data also its segment map and segments
    (the class map is derived from them: void and crowd pixels are ``ignore_index``)."""
    out = transform(example)
    if out["instance_id_to_semantic_id"] is None:
        return {"image": out["image"], "semantic": out["label_map"]}
    segments = out["label_map"]
    mapping = out["instance_id_to_semantic_id"]  # non-crowd segments only
    semantic = torch.full_like(segments, ignore_index)
    if mapping:
        ids = torch.tensor(sorted(mapping))
        labels = torch.tensor([mapping[i] for i in ids.tolist()])
        position = torch.searchsorted(ids, segments).clamp(max=len(ids) - 1)
        semantic = torch.where(ids[position] == segments, labels[position], semantic)
    return {"image": out["image"], "semantic": semantic, "segments": segments, "segments_info": out["segments_info"]}


def semantic_as_segments(semantic: Tensor, ignore_index: int) -> tuple[Tensor, list[dict[str, int]]]:
    """A semantic map as a panoptic one with one segment per class present (id = class + 1, 0 on
    ``ignore_index``): how the paper scores PQ on stuff (PQ_St) for semantic data (Table 4)."""
    segments = torch.where(semantic == ignore_index, 0, semantic.long() + 1)
    classes = [int(c) for c in torch.unique(semantic) if int(c) != ignore_index]
    return segments, [{"id": c + 1, "label_id": c} for c in classes]


@torch.no_grad()
def evaluate_segmentation(
    model: Any,
    image_processor: Any,
    dataset: Any,
    metadata: Any,
    batch_size: int = 4,
    threshold: float = 0.8,
    overlap_mask_area_threshold: float = 0.8,
    tta: bool = False,
    rank: int = 0,
    num_processes: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    slide: tuple[int, int] | None = None,
    mask_ap: bool | None = None,
    gather_object: Callable[[Any], list] | None = None,
) -> dict[str, Any]:
    """mIoU (and, for panoptic data, PQ / SQ / RQ for all, things and stuff) of ``model`` on ``dataset``.

    Args:
        model: a :class:`~maskformer_hf.MaskFormerForUniversalSegmentation` (any device).
        image_processor: its :class:`~maskformer_hf.MaskFormerImageProcessor` (resize / normalise / pad
            and post-processing).
        dataset: a ``datasets.Dataset`` of the shared schema (see :mod:`maskformer_hf.data`).
        metadata: its :class:`~maskformer_hf.data.SegmentationMetadata`.
        threshold, overlap_mask_area_threshold: of the panoptic post-processing (paper: 0.8 COCO).
        tta: semantic maps with multi-scale + flip test-time augmentation (SPEC §4).
        rank, num_processes, reduce_sum: data-parallel evaluation; ``reduce_sum`` sums a tensor over
            processes (e.g. ``lambda t: accelerator.reduce(t, "sum")``).
        autocast_dtype: run the model under CPU/GPU autocast with this dtype.
        slide: `(crop, stride)`: semantic and panoptic maps from overlapping crop windows over each
            image as the processor resized it (:mod:`maskformer_hf.sliding_window`), not one pass.
        mask_ap: also COCO's mask AP of the instance predictions (:class:`~maskformer_hf.metrics.MaskAP`)
            on the thing classes; None: for instance data (:func:`~maskformer_hf.data.load_coco_instances`)
            only. Predictions: the top ``num_queries`` (query, class) pairs with their full masks
            (instance post-processing with no threshold and no overlap rule; with ``slide``, each
            window pass's instance map). References: the JSON's original, overlapping masks and areas
            for instance data, else the non-crowd and crowd thing segments of the panoptic map.
        gather_object: distributed mask AP: a callable that gathers a picklable object from every
            process into a list in rank order (e.g. ``accelerate.utils.gather_object`` on ``[obj]``).

    Returns:
        ``mean_iou``, ``mean_accuracy``, ``overall_accuracy``, ``per_category_iou`` ... and, for
        panoptic data, ``pq``, ``sq``, ``rq``, ``pq_things``, ``pq_stuff`` ... (see :mod:`maskformer_hf.metrics`).
        For semantic data ``pq_stuff`` is the paper's PQ_St: every class region of the semantic
        maps is one stuff segment (:func:`semantic_as_segments`). With mask AP: ``map``, ``map_50``,
        ``map_75``, ``map_small``, ``map_medium``, ``map_large``, ``mar_*`` and ``per_category_ap``.
    """
    from .inference import semantic_inference_tta
    from .sliding_window import check_slide, sliding_window_inference

    if slide is not None:
        if tta:
            raise ValueError("slide and tta: pick one (sliding windows run at the test size only)")
        check_slide(*slide)
    if mask_ap is None:
        mask_ap = metadata.extra.get("instances") is not None
    if mask_ap and (metadata.task != "panoptic" or not metadata.thing_ids):
        raise ValueError(f"mask_ap needs instance or panoptic data with thing classes; this dataset is "
                         f"{metadata.task} with thing_ids {list(metadata.thing_ids)}")
    if mask_ap and num_processes > 1 and gather_object is None:
        raise ValueError("mask_ap with num_processes > 1 needs gather_object (mask AP's records do not sum)")

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    is_panoptic = metadata.task == "panoptic"
    transform = SegmentationTransform(metadata)
    num_labels = len(metadata.id2label)
    miou = MeanIoU(num_labels, ignore_index=metadata.ignore_index)
    pq = PanopticQuality(num_labels, metadata.thing_ids) if is_panoptic else None
    pq_semantic = None if is_panoptic else PanopticQuality(num_labels, [])
    stuff = [i for i in range(num_labels) if i not in set(metadata.thing_ids)]
    ap = MaskAP(num_labels) if mask_ap else None
    originals = dataset.with_format(None, columns=["instances"]) if ap is not None and has_instances(dataset) else None
    indices = list(range(rank, len(dataset), num_processes))
    bar = tqdm(total=len(indices), desc="evaluating", disable=not progress, leave=False)
    for start in range(0, len(indices), batch_size):
        truths = [_ground_truth(read_example(dataset, i), transform, metadata.ignore_index) for i in indices[start:start + batch_size]]
        images = [t["image"] for t in truths]
        sizes = [tuple(image.shape[-2:]) for image in images]
        inputs = image_processor(images=images, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if slide is not None:  # one window pass for every map (mask AP: no threshold, no overlap rule)
                tasks = ("semantic",) + (("panoptic",) if pq is not None else ()) + (("instance",) if ap is not None else ())
                slid = sliding_window_inference(
                    model, inputs["pixel_values"], inputs["pixel_mask"], crop=slide[0], stride=slide[1],
                    task=tasks, target_sizes=sizes, threshold={"panoptic": threshold, "instance": 0.0},
                    overlap_mask_area_threshold={"panoptic": overlap_mask_area_threshold, "instance": 0.0},
                    label_ids_to_fuse=stuff, batch_size=batch_size)
                maps = slid["semantic"]
            elif tta:
                maps = semantic_inference_tta(model, inputs["pixel_values"], inputs["pixel_mask"], target_sizes=sizes)
            if slide is None and (not tta or pq is not None):
                outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        if slide is None and not tta:
            maps = image_processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        miou.update([m.cpu() for m in maps], [t["semantic"] for t in truths])
        if pq_semantic is not None:
            predicted = [semantic_as_segments(m.cpu(), metadata.ignore_index) for m in maps]
            reference = [semantic_as_segments(t["semantic"], metadata.ignore_index) for t in truths]
            pq_semantic.update([p[0] for p in predicted], [p[1] for p in predicted],
                               [r[0] for r in reference], [r[1] for r in reference])
        if pq is not None:
            results = slid["panoptic"] if slide is not None else image_processor.post_process_panoptic_segmentation(
                outputs, threshold=threshold, overlap_mask_area_threshold=overlap_mask_area_threshold,
                label_ids_to_fuse=stuff, target_sizes=sizes)
            pq.update([r["segmentation"].cpu() for r in results], [r["segments_info"] for r in results],
                      [t["segments"] for t in truths], [t["segments_info"] for t in truths])
        if ap is not None:
            if slide is not None:
                found = slid["instance"]
            else:
                found = image_processor.post_process_instance_segmentation(
                    outputs, threshold=0.0, overlap_mask_area_threshold=0.0, target_sizes=sizes,
                    return_binary_maps=True)
            if originals is not None:
                references = [read_instances(originals, i) for i in indices[start:start + batch_size]]
            else:
                references = [instances_from_segments(t["segments"], t["segments_info"], metadata.thing_ids)
                              for t in truths]
            ap.update([instances_from_post_processing(r) for r in found], references)
        bar.update(len(truths))
    bar.close()
    model.train(was_training)
    if reduce_sum is not None and num_processes > 1:
        miou.confusion = reduce_sum(miou.confusion.to(device)).cpu()
        for metric in (pq, pq_semantic):
            if metric is not None:
                total = reduce_sum(metric.statistics.to_tensor().to(device)).cpu()
                metric.statistics = PanopticQualityStatistics.from_tensor(total)
    if ap is not None and num_processes > 1:
        merged = MaskAP(num_labels)
        for state in gather_object(ap.state()):
            merged.merge(state)
        ap = merged
    results = miou.compute()
    if pq is not None:
        results.update(pq.compute())
    if pq_semantic is not None:
        results["pq_stuff"] = pq_semantic.compute()["pq_stuff"]
    if ap is not None:
        results.update(ap.compute())
    return results


__all__ = ["evaluate_segmentation", "semantic_as_segments"]
