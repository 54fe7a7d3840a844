"""The ``transformers.Trainer`` route: the same recipe, data and model as the accelerate loop, with
the pieces Trainer needs — the collator, the label names (``mask_labels``, ``class_labels``, found
by Trainer itself from ``forward``'s signature), and a batched ``compute_metrics`` (mIoU, PQ) that
never holds more than one batch of mask logits.

    maskformer-hf train --config my_recipe.yaml --engine trainer
    python scripts/train_trainer.py --config demo

``nonfinite_loss`` holds here too (:class:`MaskFormerTrainer`): a non-finite training loss or
gradient stops the run with :class:`~maskformer_hf.training.NonFiniteLossError` naming the step and
the image ids, or (``skip``) the optimizer step is skipped: its gradients are dropped and the
buffers its forward passes changed (BatchNorm statistics) restored. The decision is all-reduced
before the optimizer step, so every process takes it together.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback, set_seed

from .inference import instance_inference, panoptic_inference, semantic_inference
from .metrics import MaskAP, MeanIoU, PanopticQuality
from .metrics.mask_ap import instances_from_post_processing
from .run_state import own_accelerate_state
from .training import (NONFINITE_LOSS_MODES, AugmentedDataset, TrainConfig, build_model_and_processor, copy_buffers,
                       create_optimizer_and_scheduler, load_splits, nonfinite_outcome, restore_buffers,
                       train_transforms)

logger = logging.getLogger(__name__)


def _masks_to_maps(masks: Tensor, classes: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, list[dict]]:
    """Ground truth from ``mask_labels`` `(N, H, W)` and ``class_labels`` `(N,)`: a semantic map
    (uncovered pixels = ``ignore_index``), a segment map (ids 1..N, 0 = void) and its segments."""
    height, width = masks.shape[-2:]
    covered = masks.sum(0) > 0
    index = masks.float().argmax(0) if masks.shape[0] else torch.zeros(height, width, dtype=torch.long)
    semantic = torch.where(covered, classes[index] if masks.shape[0] else index, torch.full_like(index, ignore_index))
    segments = torch.where(covered, index + 1, torch.zeros_like(index))
    info = [{"id": i + 1, "label_id": int(c), "iscrowd": False} for i, c in enumerate(classes.tolist())]
    return semantic, segments, info


class SegmentationMetrics:
    """``compute_metrics`` for ``Trainer(..., args=TrainingArguments(batch_eval_metrics=True))``:
    called once per evaluation batch, it accumulates a confusion matrix (and PQ statistics for
    panoptic data) and returns the metrics when Trainer passes ``compute_result=True``.

    Predictions are ``(class_queries_logits, masks_queries_logits, pixel_mask?)``, labels are
    ``(mask_labels, class_labels)`` as the collator built them (padding belongs to no mask, so it is
    ignored). With ``mask_ap``, also COCO's mask AP of the thing classes (``map``, ``map_50``, ...):
    the top (query, class) pairs with their full masks against the label masks, at the processed
    resolution (``maskformer-hf evaluate`` scores the original images and masks instead).
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, thing_ids: tuple[int, ...] | None = None,
                 threshold: float = 0.8, overlap_mask_area_threshold: float = 0.8, mask_ap: bool = False) -> None:
        self.num_labels, self.ignore_index = num_labels, ignore_index
        self.threshold, self.overlap = threshold, overlap_mask_area_threshold
        self.things = set(thing_ids or ())
        self.stuff = [i for i in range(num_labels) if i not in self.things]
        self.miou = MeanIoU(num_labels, ignore_index=ignore_index)
        self.pq = PanopticQuality(num_labels, thing_ids) if thing_ids is not None else None
        if mask_ap and not thing_ids:
            raise ValueError("SegmentationMetrics(mask_ap=True) needs thing_ids: mask AP scores thing classes")
        self.ap = MaskAP(num_labels) if mask_ap else None

    def __call__(self, eval_prediction: Any, compute_result: bool = True) -> dict[str, Any]:
        predictions = eval_prediction.predictions
        class_logits, mask_logits = predictions[0], predictions[1]
        pixel_mask = predictions[2] if len(predictions) > 2 else None
        mask_labels, class_labels = eval_prediction.label_ids
        truths, sizes = [], []
        for b, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
            if pixel_mask is not None:  # compare on the image, not its padding
                rows, cols = pixel_mask[b].nonzero().amax(0).tolist() if pixel_mask[b].any() else (-1, -1)
                masks = masks[:, : rows + 1, : cols + 1]
            truths.append(_masks_to_maps(masks.cpu(), classes.cpu(), self.ignore_index))
            sizes.append(tuple(masks.shape[-2:]))
        semantic = semantic_inference(class_logits, mask_logits, pixel_mask, target_sizes=sizes)
        self.miou.update([m.cpu() for m in semantic], [t[0] for t in truths])
        if self.pq is not None:
            predicted = panoptic_inference(class_logits, mask_logits, pixel_mask, target_sizes=sizes,
                                           threshold=self.threshold, overlap_mask_area_threshold=self.overlap,
                                           label_ids_to_fuse=self.stuff)
            self.pq.update([p["segmentation"].cpu() for p in predicted], [p["segments_info"] for p in predicted],
                           [t[1] for t in truths], [t[2] for t in truths])
        if self.ap is not None:
            found = instance_inference(class_logits, mask_logits, pixel_mask, target_sizes=sizes, threshold=0.0,
                                       overlap_mask_area_threshold=0.0, return_binary_maps=True)
            references = []
            for (height, width), masks, classes in zip(sizes, mask_labels, class_labels):
                thing = torch.tensor([int(c) in self.things for c in classes.tolist()], dtype=torch.bool)
                references.append({"masks": masks[:, :height, :width].cpu()[thing] > 0.5,
                                   "labels": classes.cpu()[thing]})
            self.ap.update([instances_from_post_processing(r) for r in found], references)
        if not compute_result:
            return {}
        results = {k: v for k, v in self.miou.compute().items() if isinstance(v, float)}
        self.miou.reset()
        if self.pq is not None:
            results.update({k: v for k, v in self.pq.compute().items() if isinstance(v, float)})
            self.pq.reset()
        if self.ap is not None:
            results.update({k: v for k, v in self.ap.compute().items() if isinstance(v, float)})
            self.ap.reset()
        return results


class NonFiniteGuard(TrainerCallback):
    """``nonfinite_loss`` in :class:`MaskFormerTrainer`. At the start of each optimizer step (``skip``)
    a copy of the model's buffers; before the optimizer step one all-reduced flag (a non-finite loss
    seen by ``compute_loss``, or a non-finite gradient) decides for every process: ``stop`` raises
    :class:`NonFiniteLossError` with the gathered image ids, ``skip`` drops the gradients (AdamW then
    moves no parameter; under fp16 the grad scaler skips the non-finite step itself) and puts the
    buffers back."""

    def __init__(self, trainer: MaskFormerTrainer) -> None:
        self.trainer, self.saved, self.skipped = trainer, [], 0

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self.trainer.nonfinite_loss == "skip":
            self.saved = copy_buffers(model)
        self.trainer.nonfinite_losses, self.trainer.nonfinite_image_ids = 0, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        trainer, step = self.trainer, state.global_step + 1
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite_grads = args.fp16 or not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        local = torch.tensor([float(trainer.nonfinite_losses), float(not finite_grads)], device=args.device)
        faults = trainer.accelerator.reduce(local, reduction="sum") if args.world_size > 1 else local
        if not faults.any():
            return
        ids = trainer.nonfinite_image_ids
        if args.world_size > 1:
            from accelerate.utils import gather_object

            ids = gather_object(list(ids))
        nonfinite_outcome(trainer.nonfinite_loss, step, ids, "loss" if faults[0] else "gradient",
                          logger if trainer.is_world_process_zero() else None)
        if not args.fp16:
            for param in model.parameters():
                param.grad = None
        restore_buffers(model, self.saved)
        self.skipped += 1


class MaskFormerTrainer(Trainer):
    """``transformers.Trainer`` for the collator's batches: ``image_ids`` (``return_image_ids=True``)
    are dropped before the model, and ``nonfinite_loss`` ("stop" or "skip", as
    ``TrainConfig.nonfinite_loss``) applies to training steps (:class:`NonFiniteGuard`)."""

    def __init__(self, *args: Any, nonfinite_loss: str = "stop", **kwargs: Any) -> None:
        if nonfinite_loss not in NONFINITE_LOSS_MODES:
            raise ValueError(f"nonfinite_loss must be stop or skip, got {nonfinite_loss!r}")
        super().__init__(*args, **kwargs)
        self.nonfinite_loss, self.nonfinite_losses, self.nonfinite_image_ids = nonfinite_loss, 0, []
        self.nonfinite_guard = NonFiniteGuard(self)
        self.add_callback(self.nonfinite_guard)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        image_ids = inputs.pop("image_ids", None) or []
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            self.nonfinite_losses += 1
            self.nonfinite_image_ids.extend(image_ids)
        return result

    def prediction_step(self, model, inputs, *args: Any, **kwargs: Any):
        return super().prediction_step(model, {k: v for k, v in inputs.items() if k != "image_ids"}, *args, **kwargs)


def train_with_trainer(config: TrainConfig, datasets: tuple | None = None,
                       command: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate with ``transformers.Trainer``; returns the final evaluation metrics. The
    final folder (``output_dir/model``) is the accelerate loop's: weights, processor, metrics, card;
    ``push_to_hub`` publishes it in one commit (not Trainer's own pushes). Callable again in the same
    process with another mixed precision, device or seed (:func:`own_accelerate_state`)."""
    with own_accelerate_state():
        return _train_with_trainer(config, datasets, command)


def _train_with_trainer(config: TrainConfig, datasets: tuple | None, command: list[str] | None) -> dict[str, Any]:
    import time
    from pathlib import Path

    from transformers import TrainingArguments

    from .model_card import training_info
    from .train_loop import _summary, check_push, recipe_command, save_final_model

    if config.push_to_hub:
        check_push(config)
    started = time.perf_counter()

    from .data.collate import MaskFormerCollator
    from .data.transforms import SegmentationTransform
    from .precision import cpu_supports_bf16

    train_set, eval_set, metadata = datasets if datasets is not None else load_splits(config)
    set_seed(config.seed)  # the model's initialisation, as in the accelerate loop: not the process's RNG state
    model, processor = build_model_and_processor(config, metadata)
    train_data = AugmentedDataset(train_set, SegmentationTransform(metadata, train_transforms(config), drop_crowd=True),
                                  config.seed)
    eval_data = AugmentedDataset(eval_set, SegmentationTransform(metadata, drop_crowd=True), config.seed)
    on_cpu = config.use_cpu or not torch.cuda.is_available()
    bf16 = config.mixed_precision == "bf16" and (not on_cpu or cpu_supports_bf16())
    if config.mixed_precision == "bf16" and not bf16:
        logger.warning("mixed_precision=bf16: this CPU has no native bf16 (it would be slower); training in fp32")
    args = TrainingArguments(
        output_dir=config.output_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm or 0.0,
        bf16=bf16,
        fp16=config.mixed_precision == "fp16",
        seed=config.seed,
        use_cpu=on_cpu,  # bf16 on a CPU needs it said (TrainingArguments refuses bf16 without a GPU otherwise)
        dataloader_num_workers=config.num_workers,
        remove_unused_columns=False,  # the collator needs the raw example
        batch_eval_metrics=True,
        eval_strategy="steps" if config.eval_every else "no",
        eval_steps=config.eval_every or None,
        save_strategy="steps" if config.save_every else "no",
        save_steps=config.save_every or None,
        logging_steps=config.logging_every,
        report_to=config.log_with or "none",
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, config)
    trainer = MaskFormerTrainer(
        model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
        data_collator=MaskFormerCollator(processor, metadata.ignore_index, return_image_ids=True),
        compute_metrics=SegmentationMetrics(len(metadata.id2label), metadata.ignore_index,
                                            metadata.thing_ids if metadata.task == "panoptic" else None,
                                            mask_ap=metadata.extra.get("instances") is not None),
        optimizers=(optimizer, scheduler), nonfinite_loss=config.nonfinite_loss,
    )
    trainer.train(resume_from_checkpoint=config.resume_from)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        folder = Path(config.output_dir) / "model"
        info = training_info(config, wall_time_seconds=time.perf_counter() - started, steps=trainer.state.global_step,
                             num_processes=args.world_size, mixed_precision="bf16" if bf16 else ("fp16" if args.fp16 else "no"),
                             command=command or recipe_command(config))
        summary = {k.removeprefix("eval_"): v for k, v in _summary(metrics).items()}
        save_final_model(trainer.model, processor, folder, summary, info)
        if config.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(folder, config.hub_model_id)
    return metrics


__all__ = ["MaskFormerTrainer", "SegmentationMetrics", "train_with_trainer"]
