"""``maskformer-hf``: the command line over the library.

    maskformer-hf train --config ade20k-swin-tiny --data_dir /data/ADEChallengeData2016
    maskformer-hf train --config my_recipe.yaml --max_steps 1000 --engine trainer
    accelerate launch -m maskformer_hf.cli train --config coco-panoptic-swin-tiny --data_dir /data/coco
    maskformer-hf evaluate --model outputs/run/model --dataset ade20k --data_dir /data/ADE... --tta
    maskformer-hf recipes

Every field of :class:`~maskformer_hf.training.TrainConfig` is a ``--flag``; a recipe file (or a
shipped recipe's name) given with ``--config`` fills them first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .training import RECIPES_DIR, TrainConfig


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(text: str, kind: type) -> Any:
    return None if text.lower() in ("none", "null") else kind(text)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return field.default


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` per :class:`TrainConfig` field, its help taken from the field's own (one source).
    Defaults are None: a value not given comes from the recipe (``--config``), else from the field."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("recipe fields (TrainConfig; each overrides the recipe's value)")
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        text = str(hint)
        help_text = f"{field.metadata['help']} [default: {_field_default(field)!r}]".replace("%", "%%")
        if "dict" in text:
            kind: Any = json.loads
        elif "list" in text:
            group.add_argument(f"--{field.name}", nargs="*", default=None, help=help_text)
            continue
        elif hint is bool:
            kind = _parse_bool
        elif "int" in text and "float" not in text:
            kind = lambda t: _optional(t, int)  # noqa: E731
        elif "float" in text:
            kind = lambda t: _optional(t, float)  # noqa: E731
        else:
            kind = lambda t: _optional(t, str)  # noqa: E731
        group.add_argument(f"--{field.name}", type=kind, default=None, metavar=field.name.upper(),
                           help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig(**overrides)


def train_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description="Train MaskFormer (accelerate or Trainer).")
    parser.add_argument("--config", help="a recipe file (.yaml/.json) or a shipped recipe's name")
    parser.add_argument("--engine", choices=["accelerate", "trainer"], default="accelerate",
                        help="the accelerate loop (default) or transformers' Trainer")
    add_config_arguments(parser)
    return parser


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    if args.engine == "trainer":
        from .trainer import train_with_trainer

        return train_with_trainer(config)
    from .train_loop import train

    return train(config)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from . import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
    from .evaluation import evaluate_segmentation
    from .train_loop import _summary
    from .training import load_splits

    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, eval_split=args.split,
                         train_split=args.split, max_eval_samples=args.max_samples,
                         image_column=args.image_column, annotation_column=args.annotation_column)
    _, dataset, metadata = load_splits(config)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = MaskFormerForUniversalSegmentation.from_pretrained(args.model).to(device)
    processor = MaskFormerImageProcessor.from_pretrained(args.model)
    metrics = _summary(evaluate_segmentation(model, processor, dataset, metadata, batch_size=args.batch_size,
                                             threshold=args.threshold, tta=args.tta))
    report = {"model": args.model, "dataset": args.dataset, "split": args.split, "images": len(dataset),
              "tta": args.tta, **metrics}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    headline = {k: report[k] for k in ("mean_iou", "pq", "sq", "rq") if k in report}
    print(json.dumps(headline))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="maskformer-hf", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser(commands.add_parser("train", help="train a model (accelerate loop or Trainer)"))
    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on a dataset split, write a JSON report")
    evaluate.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    evaluate.add_argument("--dataset", required=True, help="synthetic, ade20k, coco-panoptic, ... (as in train)")
    evaluate.add_argument("--data_dir", help="the dataset's folder (or parquet name)")
    evaluate.add_argument("--split", default="validation")
    evaluate.add_argument("--max_samples", type=int)
    evaluate.add_argument("--batch_size", type=int, default=4)
    evaluate.add_argument("--threshold", type=float, default=0.8, help="panoptic: minimum class probability")
    evaluate.add_argument("--tta", action="store_true", help="semantic: multi-scale + flip")
    evaluate.add_argument("--image_column", default="image")
    evaluate.add_argument("--annotation_column", default="annotation")
    evaluate.add_argument("--device")
    evaluate.add_argument("--output", default="evaluation.json")
    commands.add_parser("recipes", help="list the shipped training recipes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "train":
        run_train(args)
    elif args.command == "evaluate":
        run_evaluate(args)
    else:
        for path in sorted(RECIPES_DIR.glob("*.yaml")):
            print(path.stem)


if __name__ == "__main__":
    sys.exit(main())
