"""``maskformer-hf``: the command line over the library.

    maskformer-hf segment photos/ --model demo_output/model --task panoptic --out segmented
    maskformer-hf train --config ade20k-swin-tiny --data_dir /data/ADEChallengeData2016
    maskformer-hf train --config my_recipe.yaml --max_steps 1000 --engine trainer
    accelerate launch -m maskformer_hf.cli train --config coco-panoptic-swin-tiny --data_dir /data/coco
    maskformer-hf evaluate --model outputs/run/model --dataset ade20k --data_dir /data/ADE... --tta
    maskformer-hf push outputs/run/model --repo-id my-org/maskformer-ade20k
    maskformer-hf card outputs/run/model
    maskformer-hf convert facebook/maskformer-swin-base-ade ./maskformer-swin-base-ade
    maskformer-hf export outputs/run/model --format onnx --with-postprocess semantic --out model.onnx
    maskformer-hf segment photos/ --model outputs/run/model --fast
    maskformer-hf recipes

Every field of :class:`~maskformer_hf.training.TrainConfig` is a ``--flag``; a recipe file (or a
shipped recipe's name) given with ``--config`` fills them first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .export import DEFAULT_OPSET, FORMATS, POSTPROCESS
from .optimize import MODES
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


def run_train(args: argparse.Namespace, command: list[str] | None = None) -> dict[str, Any]:
    """Train from parsed flags; ``command`` (program first) is recorded in the model card."""
    config = config_from_args(args)
    if args.engine == "trainer":
        from .trainer import train_with_trainer

        return train_with_trainer(config, command=command)
    from .train_loop import train

    return train(config, command=command)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluation import evaluate_segmentation
    from .segment import load_segmenter
    from .train_loop import _summary
    from .training import load_splits

    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, eval_split=args.split,
                         train_split=args.split, max_eval_samples=args.max_samples,
                         image_column=args.image_column, annotation_column=args.annotation_column)
    slide = _slide(args.slide)
    _, dataset, metadata = load_splits(config)
    model, processor = load_segmenter(args.model, args.device)
    metrics = _summary(evaluate_segmentation(model, processor, dataset, metadata, batch_size=args.batch_size,
                                             threshold=args.threshold, tta=args.tta, slide=slide,
                                             mask_ap=True if args.mask_ap else None))
    report = {"model": args.model, "dataset": args.dataset, "split": args.split, "images": len(dataset),
              "tta": args.tta, "slide": list(slide) if slide else None, **metrics}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    headline = {k: report[k] for k in ("mean_iou", "pq", "sq", "rq", "map", "map_50", "map_75") if k in report}
    print(json.dumps(headline))
    return report


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _slide(values: Sequence[int] | None) -> tuple[int, int] | None:
    """``--slide CROP STRIDE`` checked before anything loads: ValueError (exit 2) unless 1 <= STRIDE <= CROP."""
    if values is None:
        return None
    crop, stride = values
    if crop < 1 or stride < 1 or stride > crop:
        raise ValueError(f"--slide CROP STRIDE: expected 1 <= STRIDE <= CROP (overlapping or touching windows), "
                         f"got CROP={crop} STRIDE={stride}")
    return crop, stride


SLIDE_HELP = ("run the model on CROP x CROP windows STRIDE pixels apart over each (resized) image and blend them "
              "(images larger than the training crop; docs/inference.md)")


def _device(text: str) -> str:
    from .segment import resolve_device

    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def run_segment(args: argparse.Namespace) -> int:
    """``maskformer-hf segment``: exit status 0 when at least one image was segmented, 1 when none
    could be, 2 when the model cannot be loaded (argparse also exits 2 on bad flags)."""
    from tqdm.auto import tqdm

    from .segment import find_images, load_segmenter, segment_files

    slide = _slide(args.slide)
    paths, problems = find_images(args.inputs, exclude=args.out)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    if not paths:
        print("nothing to segment", file=sys.stderr)
        return 1
    try:
        model, processor = load_segmenter(args.model, args.device)
    except (OSError, ValueError) as error:  # from_pretrained: no such folder / repo, not a checkpoint
        print(f"--model {args.model}: could not load a checkpoint ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    if args.fast or args.fast_mode:
        from .optimize import calibration_batch, calibration_size, optimize

        if model.device.type != "cpu":
            print(f"--fast: CPU modes; the model is on {model.device} (use --device cpu)", file=sys.stderr)
            return 2
        example = None if args.fast_mode else calibration_batch(size=calibration_size(processor, args.size))
        model = optimize(model, args.fast_mode or "auto", example=example)
        print(f"fast inference: {model.mode}", file=sys.stderr)
    run = segment_files(paths, model, processor, args.out, task=args.task, batch_size=args.batch_size,
                        threshold=args.threshold, mask_threshold=args.mask_threshold,
                        overlap_mask_area_threshold=args.overlap_threshold, size=args.size, slide=slide,
                        progress=not args.quiet,
                        report=lambda line, skipped: tqdm.write(line, file=sys.stderr if skipped else sys.stdout))
    print(f"{len(run.segmented)} of {len(paths)} images segmented ({args.task}), {len(run.skipped)} skipped; "
          f"results in {args.out}")
    return 0 if run.segmented else 1


def segment_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_GLOB",
                        help="image files, folders (searched recursively) or glob patterns (quote them)")
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (transformers' MaskFormer too)")
    parser.add_argument("--task", choices=["semantic", "instance", "panoptic"], default="panoptic",
                        help="which result to compute and write")
    parser.add_argument("--out", default="segmented", help="output folder (created; never read as input)")
    parser.add_argument("--threshold", type=_unit_interval, default=0.5,
                        help="panoptic/instance: minimum score of a kept segment")
    parser.add_argument("--mask-threshold", "--mask_threshold", dest="mask_threshold", type=_unit_interval,
                        default=0.5, help="panoptic/instance: mask probability that counts as inside")
    parser.add_argument("--overlap-threshold", "--overlap_threshold", dest="overlap_threshold", type=_unit_interval,
                        default=0.8, help="panoptic/instance: drop a segment keeping less than this of its own mask")
    parser.add_argument("--size", type=_positive_int, default=None,
                        help="the model sees each image at this shortest edge (longest at most 4x); default: "
                             "the checkpoint's processor setting")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_positive_int, default=None,
                        help="images per forward pass (padded; results do not depend on it); default 1 on the CPU "
                             "(faster there, and a third less memory, than padded batches of mixed sizes), 4 on CUDA")
    parser.add_argument("--slide", type=int, nargs=2, metavar=("CROP", "STRIDE"), default=None, help=SLIDE_HELP)
    parser.add_argument("--device", type=_device, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--fast", action="store_true",
                        help="CPU: run through the fastest inference mode whose semantic maps agree with fp32 on "
                             ">= 99%% of pixels, measured here once (at the size the model sees the images) and cached "
                             "(maskformer_hf.optimize)")
    parser.add_argument("--fast-mode", "--fast_mode", dest="fast_mode", choices=MODES, default=None,
                        help="CPU: this inference mode instead of measuring (see docs/deployment.md)")
    return parser


def evaluate_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--dataset", required=True, help="synthetic, ade20k, coco-panoptic, ... (as in train)")
    parser.add_argument("--data_dir", help="the dataset's folder (or parquet name)")
    parser.add_argument("--split", default="validation", help="the split to evaluate")
    parser.add_argument("--max_samples", type=int, help="evaluate on only the first N examples")
    parser.add_argument("--batch_size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--threshold", type=float, default=0.8, help="panoptic: minimum class probability")
    parser.add_argument("--tta", action="store_true", help="semantic: multi-scale + flip")
    parser.add_argument("--slide", type=int, nargs=2, metavar=("CROP", "STRIDE"), default=None, help=SLIDE_HELP)
    parser.add_argument("--mask_ap", action="store_true",
                        help="also COCO mask AP of the thing classes on panoptic data (always on for coco-instances)")
    parser.add_argument("--image_column", default="image", help="parquet datasets: the image column")
    parser.add_argument("--annotation_column", default="annotation", help="parquet datasets: the label-map column")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--output", default="evaluation.json", help="where the JSON report goes")
    return parser


def push_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a checkpoint folder (e.g. <output_dir>/model)")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="the Hub repository, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    parser.add_argument("--revision", help="the branch to push to (created if missing; default: main)")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message", help="the commit's message")
    parser.add_argument("--create-pr", "--create_pr", dest="create_pr", action="store_true",
                        help="open a pull request instead of committing to the branch")
    parser.add_argument("--license", help="the card's licence (default: kept, else apache-2.0)")
    parser.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the saved login)")
    return parser


def run_push(args: argparse.Namespace) -> int:
    """``maskformer-hf push``: 0 when pushed, 2 for a bad repo id, token or folder, 1 when the Hub refuses."""
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import push_to_hub

    try:
        info = push_to_hub(args.model_dir, args.repo_id, private=args.private or None, revision=args.revision,
                           commit_message=args.commit_message, token=args.token, create_pr=args.create_pr,
                           license=args.license)
    except ValueError as error:
        print(f"push: {error}", file=sys.stderr)
        return 2
    except HfHubHTTPError as error:  # 401/403 (token, rights), 5xx ...: the Hub's own words
        print(f"push: the Hub refused or failed the push to {args.repo_id}: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.model_dir} to {args.repo_id} in one commit: {getattr(info, 'commit_url', info)}")
    return 0


def card_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a checkpoint folder (e.g. <output_dir>/model)")
    parser.add_argument("--metrics", help="a metrics JSON (default: MODEL_DIR/metrics.json, else ../metrics.json); "
                                          "a `maskformer-hf evaluate` report works too; copied to "
                                          "MODEL_DIR/metrics.json, which later pushes publish")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", help="the Hub id shown in the card's snippets")
    parser.add_argument("--license", help="the card's licence (default: apache-2.0)")
    return parser


def run_card(args: argparse.Namespace) -> int:
    """``maskformer-hf card``: (re)write MODEL_DIR/README.md; what was written outside the generated block stays."""
    from .hub import check_checkpoint
    from .model_card import METRICS_FILE, write_model_card

    try:
        folder = check_checkpoint(args.model_dir)
        metrics_path = Path(args.metrics) if args.metrics else next(
            (p for p in (folder / METRICS_FILE, folder.parent / METRICS_FILE) if p.is_file()), None)
        metrics = json.loads(metrics_path.read_text()) if metrics_path else None
        if metrics is not None and metrics_path != folder / METRICS_FILE:
            # The folder's metrics.json is what every later card (and push) is made of: keep them in step.
            (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        path = write_model_card(folder, repo_id=args.repo_id, metrics=metrics, license=args.license)
    except (ValueError, OSError) as error:
        print(f"card: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}" + (f" (metrics from {metrics_path})" if metrics_path else " (no metrics found)"))
    return 0


def convert_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("src", metavar="SRC", help="a transformers MaskFormer checkpoint (folder or Hub id), or an "
                                                   "original detectron2 file (model_final_*.pkl / .pth)")
    parser.add_argument("dst", metavar="DST", help="the output folder (a maskformer_hf checkpoint with its card)")
    parser.add_argument("--revision", help="Hub revision of a transformers SRC")
    parser.add_argument("--id2label", help="a JSON file of class names (a list, or an object id -> name)")
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """``maskformer-hf convert``: 0 when converted, 2 when SRC is not a MaskFormer checkpoint we can map."""
    from .conversion_detectron2 import convert_checkpoint
    from .model_card import write_model_card

    try:
        id2label = json.loads(Path(args.id2label).read_text()) if args.id2label else None
        model = convert_checkpoint(args.src, args.dst, id2label=id2label, revision=args.revision)
    except (ValueError, OSError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 2
    write_model_card(args.dst)  # cites the source recorded in DST/conversion_info.json
    print(f"wrote {args.dst}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{model.config.num_labels} classes, {model.config.num_queries} queries")
    return 0


def export_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or Hub id")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="graph format")
    parser.add_argument("--out", required=True, help="the file to write (.onnx, .pt, .pt2)")
    parser.add_argument("--with-postprocess", "--with_postprocess", dest="postprocess", choices=POSTPROCESS,
                        default=None, help="also put this post-processing rule in the graph (output semantic_map)")
    parser.add_argument("--no-pixel-mask", "--no_pixel_mask", dest="pixel_mask", action="store_false",
                        help="the graph takes pixel_values only")
    parser.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--no-check", "--no_check", dest="check", action="store_false",
                        help="skip running the written graph against the eager model")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """``maskformer-hf export``: 0 when written (and checked), 2 when the model cannot be loaded or
    the format's runtime is missing, 1 when the written graph disagrees with the eager model."""
    from .export import check_export, export_model
    from .segment import load_segmenter

    try:
        model, _ = load_segmenter(args.model, "cpu")
        path = export_model(model, args.out, args.format, with_pixel_mask=args.pixel_mask,
                            postprocess=args.postprocess, opset=args.opset)
    except (OSError, ValueError, ImportError) as error:
        print(f"export: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.format})")
    if not args.check:
        return 0
    report = check_export(model, path, args.format, with_pixel_mask=args.pixel_mask, postprocess=args.postprocess)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskformer-hf", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    segment_parser(commands.add_parser("segment", help="segment images; write overlays and predictions"))
    train_parser(commands.add_parser("train", help="train a model (accelerate loop or Trainer)"))
    evaluate_parser(commands.add_parser("evaluate", help="evaluate a checkpoint on a dataset split, write a JSON report"))
    push_parser(commands.add_parser("push", help="publish a checkpoint folder to the Hub in one commit, card included"))
    card_parser(commands.add_parser("card", help="(re)write a checkpoint's model card from its metrics and recipe"))
    convert_parser(commands.add_parser("convert", help="convert a transformers or original (detectron2) checkpoint"))
    export_parser(commands.add_parser("export", help="export the inference graph (ONNX, TorchScript, torch.export)"))
    from .ablation import ablation_parser

    ablation_parser(commands.add_parser("ablate", help="the paper's Table 4 and queries ablation in miniature; "
                                        "writes RESULTS.md"))
    commands.add_parser("recipes", help="list the shipped training recipes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; exit status 2 with a one-line ``maskformer-hf COMMAND: error: ...`` on bad
    input (a ``ValueError``: a missing folder, a bad recipe value, a dataset that does not load), as
    argparse does for bad flags. ``MASKFORMER_HF_DEBUG=1`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return _run(args, argv)
    except ValueError as error:
        if os.environ.get("MASKFORMER_HF_DEBUG"):
            raise
        print(f"maskformer-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if args.command == "segment":
        return run_segment(args)
    if args.command == "push":
        return run_push(args)
    if args.command == "card":
        return run_card(args)
    if args.command == "convert":
        return run_convert(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "ablate":
        from .ablation import plan_from_args, run_ablation

        plan = plan_from_args(args)
        run_ablation(plan, args.results)
        print(f"results: {args.results or Path(plan.out_dir) / 'RESULTS.md'}")
        return 0
    if args.command == "train":
        run_train(args, command=["maskformer-hf", *(sys.argv[1:] if argv is None else argv)])
    elif args.command == "evaluate":
        run_evaluate(args)
    else:
        for path in sorted(RECIPES_DIR.glob("*.yaml")):
            print(path.stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
