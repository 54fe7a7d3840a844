#!/usr/bin/env python
"""The second half of ``make demo``: after ``scripts/train.py --config demo`` has trained and evaluated
a model, run ``pipeline("image-segmentation")`` on held-out images and draw what happened.

    python scripts/demo_report.py --run demo_output --num_images 6

Writes into the run folder: ``overlays/*.png`` (image | ground truth | panoptic prediction from the
pipeline, drawn by ``maskformer_hf.visualize``: one colour per class, shades per instance, outlines
between segments, legends), ``loss_curve.png`` (training loss and evaluation mIoU / PQ against
steps) and prints the final metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import pipeline  # noqa: E402

import maskformer_hf  # noqa: E402,F401  (registers the model with the Auto classes and the pipeline)
from maskformer_hf import visualize  # noqa: E402
from maskformer_hf.data import read_label_map  # noqa: E402
from maskformer_hf.training import TrainConfig, load_splits  # noqa: E402

logger = logging.getLogger("demo_report")


def draw_overlays(run: Path, dataset, metadata, num_images: int) -> list[Path]:
    """Image | ground truth | the pipeline's panoptic output, drawn by :mod:`maskformer_hf.visualize`."""
    segmenter = pipeline("image-segmentation", model=str(run / "model"))
    label2id = {name: i for i, name in metadata.id2label.items()}
    written = []
    (run / "overlays").mkdir(exist_ok=True)
    for index in range(min(num_images, len(dataset))):
        example = dataset[index]
        image = example["image"].convert("RGB")
        ids = read_label_map(example["annotation"], metadata.task)
        if metadata.task == "panoptic":
            truth = visualize.draw_panoptic(image, ids, example["segments_info"], metadata.id2label)
        else:
            truth = visualize.draw_semantic(image, ids, metadata.id2label, ignore_index=metadata.ignore_index)
        predicted = visualize.draw_segments(image, segmenter(image, subtask="panoptic", threshold=0.5), label2id)
        path = run / "overlays" / f"{example['image_id']}.png"
        visualize.side_by_side([image, truth, predicted], ["image", "ground truth", "pipeline (panoptic)"]).save(path)
        written.append(path)
    return written


def draw_curves(run: Path) -> Path:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [r for r in records if "mean_iou" in r]
    figure, left = plt.subplots(figsize=(6, 3.5))
    left.plot(*zip(*train), label="training loss", color="tab:blue")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    if evals:
        right = left.twinx()
        right.plot([r["step"] for r in evals], [r["mean_iou"] for r in evals], "o-", color="tab:green", label="mIoU")
        if "pq" in evals[0]:
            right.plot([r["step"] for r in evals], [r["pq"] for r in evals], "s-", color="tab:red", label="PQ")
        right.set_ylim(0, 1)
        right.legend(loc="center right")
    left.legend(loc="upper right")
    figure.tight_layout()
    path = run / "loss_curve.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="demo_output", help="output_dir of the training run")
    parser.add_argument("--num_images", type=int, default=6)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = Path(args.run)
    state = sorted((run / "checkpoints").glob("step_*/trainer_state.json"))[-1]
    config = TrainConfig(**json.loads(state.read_text())["config"])
    _, validation, metadata = load_splits(config)
    overlays = draw_overlays(run, validation, metadata, args.num_images)
    curve = draw_curves(run)
    metrics = json.loads((run / "metrics.json").read_text())
    headline = {k: round(metrics[k], 4) for k in ("mean_iou", "pq", "sq", "rq") if k in metrics}
    logger.info("overlays: %s\nloss curve: %s\nmetrics (%s split): %s", ", ".join(map(str, overlays)), curve,
                config.eval_split, json.dumps(headline))


if __name__ == "__main__":
    main()
