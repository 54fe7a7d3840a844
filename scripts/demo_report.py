#!/usr/bin/env python
"""The second half of ``make demo``: after ``scripts/train.py --config demo`` has trained and evaluated
a model, run ``pipeline("image-segmentation")`` on held-out images and draw what happened.

    python scripts/demo_report.py --run demo_output --num_images 6

Writes into the run folder: ``overlays/*.png`` (image | ground truth | panoptic prediction from the
pipeline, one colour per class, white lines between segments), ``loss_curve.png`` (training loss and evaluation mIoU / PQ against steps) and prints the
final metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from transformers import pipeline  # noqa: E402

import maskformer_hf  # noqa: E402,F401  (registers the model with the Auto classes and the pipeline)
from maskformer_hf.data import read_label_map  # noqa: E402
from maskformer_hf.training import TrainConfig, load_splits  # noqa: E402

logger = logging.getLogger("demo_report")


def class_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """`(num_classes + 1, 3)` uint8: entry 0 (void) black, then one fixed colour per class, so that a
    class has the same colour in every panel."""
    palette = np.random.default_rng(seed).integers(40, 255, size=(num_classes + 1, 3), dtype=np.uint8)
    palette[0] = 0
    return palette


def render(class_map: np.ndarray, segment_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """`(H, W)` class ids + 1 (0 = void) and `(H, W)` segment ids -> `(H, W, 3)` uint8: class colours,
    with white lines where one segment meets another (so that instances of a class stay apart)."""
    picture = palette[class_map].copy()
    edge = np.zeros(segment_map.shape, dtype=bool)
    edge[:, 1:] |= segment_map[:, 1:] != segment_map[:, :-1]
    edge[1:, :] |= segment_map[1:, :] != segment_map[:-1, :]
    picture[edge] = 255
    return picture


def pipeline_panoptic_maps(results: list[dict], label2id: dict[str, int],
                           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's list of ``{"label", "mask", "score"}`` -> `(H, W)` maps of class id + 1 and of
    segment index + 1 (0 = void in both)."""
    classes, segments = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    for index, segment in enumerate(results, start=1):
        inside = np.array(segment["mask"]) > 0
        classes[inside] = label2id[segment["label"]] + 1
        segments[inside] = index
    return classes, segments


def draw_overlays(run: Path, dataset, metadata, num_images: int) -> list[Path]:
    segmenter = pipeline("image-segmentation", model=str(run / "model"))
    label2id = {name: i for i, name in metadata.id2label.items()}
    palette = class_palette(len(label2id))
    written = []
    (run / "overlays").mkdir(exist_ok=True)
    for index in range(min(num_images, len(dataset))):
        example = dataset[index]
        image = example["image"].convert("RGB")
        ids = read_label_map(example["annotation"], metadata.task)
        if metadata.task == "panoptic":
            truth = np.zeros_like(ids)
            for segment in example["segments_info"]:
                truth[ids == segment["id"]] = segment["label_id"] + 1
        else:
            ids = np.where(ids == metadata.ignore_index, -1, ids)
            truth = ids + 1
        predicted = pipeline_panoptic_maps(segmenter(image, subtask="panoptic", threshold=0.5), label2id, ids.shape)
        figure, axes = plt.subplots(1, 3, figsize=(9, 3.6))
        panels = (np.asarray(image), render(truth, ids, palette), render(*predicted, palette))
        for axis, picture, title in zip(axes, panels, ("image", "ground truth", "pipeline (panoptic)")):
            axis.imshow(picture)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        names = [metadata.id2label[i] for i in sorted(metadata.id2label)]
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i + 1] / 255) for i in range(len(names))]
        figure.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8, frameon=False)
        path = run / "overlays" / f"{example['image_id']}.png"
        figure.tight_layout(rect=(0, 0.08, 1, 1))
        figure.savefig(path, dpi=80)
        plt.close(figure)
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
