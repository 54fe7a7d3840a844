"""scripts/train.py (accelerate loop), the Trainer route and `maskformer-hf evaluate`, end to end on
the synthetic dataset with a tiny model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_learns

from maskformer_hf import visualize
from maskformer_hf.cli import main as cli_main
from maskformer_hf.data import read_label_map
from maskformer_hf.train_loop import train
from maskformer_hf.training import TrainConfig, load_splits

ROOT = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(dataset="synthetic", data_dir=str(tmp_path.parent / "synthetic"), synthetic_num_train=8,
                  synthetic_num_val=4, synthetic_size=64, augmentation="ade20k", crop_size=64, model="test-tiny",
                  model_overrides={"backbone": "resnet18"}, pretrained_backbone=False, max_steps=4,
                  per_device_batch_size=2,
                  learning_rate=1e-3, num_workers=0, logging_every=1, output_dir=str(tmp_path / "run"))
    values.update(overrides)
    return TrainConfig(**values)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    straight = tiny_recipe(tmp_path / "a")
    train(straight)
    interrupted = tiny_recipe(tmp_path / "b", run_steps=2)
    assert train(interrupted) == {"step": 2}
    assert sorted(p.name for p in (Path(interrupted.output_dir) / "checkpoints").iterdir()) == ["step_0000002"]
    metrics = train(tiny_recipe(tmp_path / "b", resume_from="latest"))
    a = load_file(Path(straight.output_dir) / "model" / "model.safetensors")
    b = load_file(Path(interrupted.output_dir) / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = [json.loads(line) for line in (Path(straight.output_dir) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    assert_learns(Path(straight.output_dir))
    # The recorded metrics are those of the saved model, evaluated afresh by the command line.
    report = tmp_path / "report.json"
    cli_main(["evaluate", "--model", f"{straight.output_dir}/model", "--dataset", "synthetic", "--data_dir",
              straight.data_dir, "--output", str(report)])
    evaluated = json.loads(report.read_text())
    assert evaluated["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-9)
    assert evaluated["pq"] == pytest.approx(metrics["pq"], abs=1e-9)
    saved = json.loads((Path(straight.output_dir) / "metrics.json").read_text())
    assert saved["mean_iou"] == pytest.approx(metrics["mean_iou"])
    card = (Path(straight.output_dir) / "model" / "README.md").read_text()
    assert "mean_iou" in card and "pipeline_tag: image-segmentation" in card
    check_demo_report(Path(straight.output_dir))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_demo_report(run: Path) -> None:
    """The second half of `make demo` on a finished run: overlays through the pipeline and the loss curve."""
    report = load_script("demo_report")
    report.main(["--run", str(run), "--num_images", "2"])
    overlays = sorted((run / "overlays").glob("*.png"))
    assert len(overlays) == 2 and (run / "loss_curve.png").stat().st_size > 0
    with Image.open(overlays[0]) as picture:
        assert picture.size[0] > 3 * 64 and picture.size[1] > 64  # three panels of the 64-pixel images
        panels = np.asarray(picture)
    # The middle panel is visualize's ground truth picture of the first validation image.
    state = sorted((run / "checkpoints").glob("step_*/trainer_state.json"))[-1]
    _, validation, metadata = load_splits(TrainConfig(**json.loads(state.read_text())["config"]))
    example = validation[0]
    truth = np.asarray(visualize.draw_panoptic(example["image"].convert("RGB"),
                                               read_label_map(example["annotation"], "panoptic"),
                                               example["segments_info"], metadata.id2label))
    assert any(np.array_equal(panels[top:top + truth.shape[0], left:left + truth.shape[1]], truth)
               for top in range(0, 40) for left in range(64, 90))


def test_trainer_route_and_evaluate_command(tmp_path):
    from maskformer_hf.trainer import train_with_trainer

    config = tiny_recipe(tmp_path, max_steps=2, eval_every=2)
    metrics = train_with_trainer(config)
    assert "eval_loss" in metrics
    report = tmp_path / "report.json"
    cli_main(["evaluate", "--model", f"{config.output_dir}/model", "--dataset", "synthetic", "--data_dir",
              config.data_dir, "--output", str(report)])
    result = json.loads(report.read_text())
    # Trainer's batched compute_metrics (at the processed resolution) and the evaluate command (at the
    # images' own) score the same model alike: two routes to one number.
    assert result["images"] == 4
    assert result["mean_iou"] == pytest.approx(metrics["eval_mean_iou"], abs=1e-6)
    assert result["pq"] == pytest.approx(metrics["eval_pq"], abs=1e-6)
    # The Trainer route saves the same final folder as the accelerate loop: metrics, record, card.
    from huggingface_hub import ModelCard

    folder = Path(config.output_dir) / "model"
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["mean_iou"] == pytest.approx(metrics["eval_mean_iou"])
    assert json.loads((folder / "training_info.json").read_text())["steps"] == 2
    results = {r.metric_type: r.metric_value for r in ModelCard.load(folder / "README.md").data.eval_results}
    assert results["mean_iou"] == pytest.approx(metrics["eval_mean_iou"]) and "pq" in results

def test_fine_tuning_a_checkpoint_on_other_classes(tmp_path):
    """The commonest flow: a trained 6-class checkpoint fine-tuned on a data set with 12 other classes,
    through the CLI and through the Trainer route. Model and processor both follow the new classes."""
    from conftest import write_coco_panoptic_fixture

    from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
    from maskformer_hf.trainer import train_with_trainer

    base = tiny_recipe(tmp_path / "base", max_steps=1)
    train(base)
    checkpoint = Path(base.output_dir) / "model"
    assert MaskFormerImageProcessor.from_pretrained(checkpoint).num_labels == 6
    names = write_coco_panoptic_fixture(tmp_path / "twelve", num_classes=12, num_things=8)
    flags = ["--model", str(checkpoint), "--dataset", "coco-panoptic", "--data_dir", str(tmp_path / "twelve"),
             "--max_steps", "2", "--per_device_batch_size", "2", "--crop_size", "64", "--num_workers", "0",
             "--learning_rate", "1e-3"]
    cli_main(["train", *flags, "--output_dir", str(tmp_path / "cli")])
    trainer_config = TrainConfig(model=str(checkpoint), dataset="coco-panoptic", data_dir=str(tmp_path / "twelve"),
                                 max_steps=2, per_device_batch_size=2, crop_size=64, num_workers=0,
                                 output_dir=str(tmp_path / "trainer"))
    metrics = train_with_trainer(trainer_config)
    assert {"eval_mean_iou", "eval_pq"} <= set(metrics)
    for run in ("cli", "trainer"):
        model = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path / run / "model")
        processor = MaskFormerImageProcessor.from_pretrained(tmp_path / run / "model")
        assert model.config.num_labels == 12 and model.class_predictor.out_features == 13
        assert [model.config.id2label[i] for i in range(12)] == names
        assert model.config.stuff_label_ids == list(range(8, 12))
        assert processor.num_labels == 12 and processor.label_ids_to_fuse == list(range(8, 12))
    # Both runs evaluate on the data's 12 classes: 8 things, 4 stuff.
    recorded = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert len(recorded["per_category_iou"]) == 12 and recorded["n_things"] + recorded["n_stuff"] == recorded["n"]
