"""The flow of transformers' ``examples/pytorch/instance-segmentation/run_instance_segmentation.py``,
reproduced call for call on one of our checkpoints (tests/test_transformers_examples.py runs it).

    python tests/workers/instance_segmentation_example.py MODEL DATASET OUTPUT_DIR [--without-package]

What the script does, in its order: ``label2id`` from the data set's ``semantic_class_to_id``;
``AutoModelForUniversalSegmentation.from_pretrained(..., label2id, id2label, ignore_mismatched_sizes=True,
token)`` and ``AutoImageProcessor.from_pretrained(..., do_resize=True, size={"height", "width"},
do_reduce_labels, reduce_labels, token)``; each example's annotation image read as R = class,
G = instance, ``instance_id_to_semantic_id`` from the unique (class, instance) pairs, the processor
called on one image at a time and its outputs stacked by the script's ``collate_fn`` (no
``pixel_mask``); ``Trainer`` with ``eval_do_concat_batches=False``, ``batch_eval_metrics=True``,
``remove_unused_columns=False``, ``processing_class`` and a ``compute_metrics`` that post-processes with
``post_process_instance_segmentation(threshold=0.0, target_sizes, return_binary_maps=True)`` into
torchmetrics' ``MeanAveragePrecision(iou_type="segm", class_metrics=True)`` and renames its per-class
entries by ``id2label``; ``train``, ``save_model``, ``evaluate(metric_key_prefix="test")``. The only
departure: albumentations' augmentations are left out (the example's validation transform is
``A.NoOp()``; its training flips and colour jitter change no call).

``--without-package``: ``maskformer_hf`` cannot be imported (as on a machine where it is not installed);
everything must come from the checkpoint's own code through ``trust_remote_code=True``.

Prints one JSON line: the test metrics, the classes that were loaded and the saved ``auto_map``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if "--without-package" in sys.argv:
    sys.modules["maskformer_hf"] = None  # any import of it fails
else:
    import maskformer_hf  # noqa: F401  (registers the Auto classes)

import numpy as np
import torch
from datasets import load_from_disk
from torchmetrics.detection.mean_ap import MeanAveragePrecision
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, Trainer, TrainingArguments


def augment_and_transform_batch(examples, image_processor):
    batch = {"pixel_values": [], "mask_labels": [], "class_labels": []}
    for pil_image, pil_annotation in zip(examples["image"], examples["annotation"]):
        image = np.array(pil_image)
        semantic_and_instance_masks = np.array(pil_annotation)[..., :2]
        instance_mask = semantic_and_instance_masks[..., 1]
        pairs = np.unique(semantic_and_instance_masks.reshape(-1, 2), axis=0)
        instance_id_to_semantic_id = {instance_id: semantic_id for semantic_id, instance_id in pairs}
        model_inputs = image_processor(images=[image], segmentation_maps=[instance_mask],
                                       instance_id_to_semantic_id=instance_id_to_semantic_id, return_tensors="pt")
        batch["pixel_values"].append(model_inputs.pixel_values[0])
        batch["mask_labels"].append(model_inputs.mask_labels[0])
        batch["class_labels"].append(model_inputs.class_labels[0])
    return batch


def collate_fn(examples):
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    batch["class_labels"] = [example["class_labels"] for example in examples]
    batch["mask_labels"] = [example["mask_labels"] for example in examples]
    if "pixel_mask" in examples[0]:
        batch["pixel_mask"] = torch.stack([example["pixel_mask"] for example in examples])
    return batch


@dataclass
class ModelOutput:
    class_queries_logits: torch.Tensor
    masks_queries_logits: torch.Tensor


class Evaluator:
    def __init__(self, image_processor, id2label, threshold=0.0):
        self.image_processor, self.id2label, self.threshold = image_processor, id2label, threshold
        self.metric = MeanAveragePrecision(iou_type="segm", class_metrics=True)
        self.predictions_seen = 0

    def __call__(self, evaluation_results, compute_result=False):
        predictions = [t.cpu() if isinstance(t, torch.Tensor) else t for t in evaluation_results.predictions]
        mask_batch, label_batch = evaluation_results.label_ids
        targets = [{"masks": masks.cpu().to(dtype=torch.bool), "labels": labels.cpu()}
                   for masks, labels in zip(mask_batch, label_batch)]
        target_sizes = [target["masks"].shape[-2:] for target in targets]
        output = self.image_processor.post_process_instance_segmentation(
            ModelOutput(class_queries_logits=predictions[0], masks_queries_logits=predictions[1]),
            threshold=self.threshold, target_sizes=target_sizes, return_binary_maps=True)
        processed = []
        for image_predictions, target_size in zip(output, target_sizes):
            if image_predictions["segments_info"]:
                self.predictions_seen += len(image_predictions["segments_info"])
                processed.append({
                    "masks": image_predictions["segmentation"].to(dtype=torch.bool),
                    "labels": torch.tensor([x["label_id"] for x in image_predictions["segments_info"]]),
                    "scores": torch.tensor([x["score"] for x in image_predictions["segments_info"]]),
                })
            else:
                processed.append({"masks": torch.zeros([0, *target_size], dtype=torch.bool),
                                  "labels": torch.tensor([]), "scores": torch.tensor([])})
        self.metric.update(processed, targets)
        if not compute_result:
            return
        metrics = self.metric.compute()
        classes = metrics.pop("classes")  # the script's own KeyError when nothing was predicted
        map_per_class = metrics.pop("map_per_class")
        mar_100_per_class = metrics.pop("mar_100_per_class")
        for class_id, class_map, class_mar in zip(classes, map_per_class, mar_100_per_class):
            class_name = self.id2label[class_id.item()]
            metrics[f"map_{class_name}"] = class_map
            metrics[f"mar_100_{class_name}"] = class_mar
        metrics = {k: round(v.item(), 4) for k, v in metrics.items()}
        metrics["predictions_seen"] = self.predictions_seen
        self.metric.reset()
        self.predictions_seen = 0
        return metrics


def hashable_by_datasets(transform) -> bool:
    """Whether ``datasets`` can fingerprint the transform (else it warns and uses a random hash, after
    copying by value whatever dill cannot find by name)."""
    from datasets.fingerprint import Hasher

    try:
        Hasher.hash(transform)
    except Exception:  # noqa: BLE001 - what datasets' own fingerprinting catches
        return False
    return True


def main(model_path: str, dataset_path: str, output_dir: str, trust_remote_code: bool) -> dict:
    dataset = load_from_disk(dataset_path)
    label2id = dataset["train"][0]["semantic_class_to_id"]
    id2label = {v: k for k, v in label2id.items()}
    model = AutoModelForUniversalSegmentation.from_pretrained(
        model_path, label2id=label2id, id2label=id2label, ignore_mismatched_sizes=True, token=None,
        trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(
        model_path, do_resize=True, size={"height": 64, "width": 64}, do_reduce_labels=False, reduce_labels=False,
        token=None, trust_remote_code=trust_remote_code)
    transform = partial(augment_and_transform_batch, image_processor=image_processor)
    hashed = hashable_by_datasets(transform)
    train_set, eval_set = dataset["train"].with_transform(transform), dataset["validation"].with_transform(transform)
    args = TrainingArguments(output_dir=output_dir, max_steps=4, per_device_train_batch_size=2,
                             per_device_eval_batch_size=2, learning_rate=1e-4, report_to="none", use_cpu=True,
                             eval_do_concat_batches=False, batch_eval_metrics=True, remove_unused_columns=False,
                             save_strategy="no", logging_steps=1, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=image_processor, data_collator=collate_fn,
                      compute_metrics=Evaluator(image_processor, id2label, threshold=0.0))
    trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate(eval_dataset=eval_set, metric_key_prefix="test")
    saved = json.loads((Path(output_dir) / "config.json").read_text())
    return {"metrics": metrics, "model_class": f"{type(model).__module__}.{type(model).__name__}",
            "processor_class": f"{type(image_processor).__module__}.{type(image_processor).__name__}",
            "saved_auto_map": saved.get("auto_map"), "saved_id2label": saved.get("id2label"),
            "transform_fingerprinted": hashed}


if __name__ == "__main__":
    model_path, dataset_path, output_dir = sys.argv[1:4]
    result = main(model_path, dataset_path, output_dir, trust_remote_code="--without-package" in sys.argv)
    print(json.dumps(result))
