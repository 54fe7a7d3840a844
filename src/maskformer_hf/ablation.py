"""The paper's central comparisons in miniature (Table 4 and the queries ablation, SPEC §6).

:func:`run_ablation` trains every variant of :data:`maskformer_hf.training.VARIANTS` with one
budget on synthetic semantic sets whose class count grows (textured classes from
:class:`maskformer_hf.data.synthetic_scenes.SceneGenerator`) and on the demo data, sweeps the
number of queries, repeats each run over seeds, and :func:`write_results` turns the records into
``RESULTS.md`` tables (mean ± std) and PNG plots. Every number in ``RESULTS.md`` comes from a record
written by a run; nothing is typed by hand. Finished runs are kept (``runs/<name>/record.json``) and
not trained again, so an interrupted ablation resumes.

``python scripts/ablation.py`` or ``maskformer-hf ablate`` run it; ``--quick`` trains every variant
for a few steps on tiny sets (the test suite runs it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The paper's numbers (SPEC §6), ADE20K-150 val, R50 backbone, single scale.
PAPER_TABLE4 = {"per-pixel": (39.2, None), "per-pixel-plus": (41.9, None), "maskformer-fixed": (43.7, 30.3),
                "maskformer": (44.2, 33.4)}  # mIoU, PQ_St
PAPER_QUERIES = {20: 42.9, 50: 43.9, 100: 44.5, 150: 44.2, 300: 43.5, 1000: 35.4}
VARIANT_NAMES = {"per-pixel": "PerPixelBaseline", "per-pixel-plus": "PerPixelBaseline+",
                 "maskformer-fixed": "MaskFormer-fixed", "maskformer": "MaskFormer (bipartite)"}


@dataclass
class AblationPlan:
    """What :func:`run_ablation` trains. Every run uses the demo recipe's model and optimiser
    (ResNet-18 from scratch, batch 8) with ``steps`` steps, evaluated ``curve_points`` times."""

    out_dir: str = "ablation_output"
    variants: list[str] = field(default_factory=lambda: ["per-pixel", "per-pixel-plus", "maskformer-fixed",
                                                         "maskformer"])
    class_counts: list[int] = field(default_factory=lambda: [10, 30, 100])
    queries: list[int] = field(default_factory=lambda: [10, 20, 50, 100])
    queries_classes: int = 30  # the set the queries sweep trains on
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    demo: bool = True  # also compare the variants on the demo's own panoptic set
    steps: int = 180
    batch_size: int = 8
    num_train: int = 400
    num_val: int = 50
    size: int = 64
    curve_points: int = 3
    num_workers: int = 1

    @classmethod
    def quick(cls, out_dir: str = "ablation_output") -> "AblationPlan":
        """Every variant for a few steps on tiny sets: minutes, for the test suite."""
        return cls(out_dir=out_dir, class_counts=[4, 8], queries=[4, 8], queries_classes=4, seeds=[0], steps=4,
                   batch_size=2, num_train=8, num_val=4, size=64, curve_points=2, num_workers=0)


MASKFORMER_QUERIES = 20  # MaskFormer (bipartite) outside the queries sweep: N need not equal K


def _runs(plan: AblationPlan) -> list[dict[str, Any]]:
    """Every training run of the plan: ``{"name", "experiment", "variant", "data", "classes", "queries", "seed"}``.
    A run is named by what it trains (data, variant, queries, seed), so one that two experiments
    share (the sweep's 20 queries on a set of the classes experiment) is trained once."""
    runs = {}

    def add(experiment: str, variant: str, data: str, classes: int, queries: int | None, seed: int) -> None:
        run = {"experiment": experiment, "variant": variant, "data": data, "classes": classes, "queries": queries,
               "seed": seed}
        run["name"] = "-".join(str(run[k]) for k in ("data", "variant", "queries", "seed") if run[k] is not None)
        runs.setdefault(run["name"], run)

    for seed in plan.seeds:
        for classes in plan.class_counts:
            for variant in plan.variants:
                add("classes", variant, f"textures-{classes}", classes,
                    MASKFORMER_QUERIES if variant == "maskformer" else None, seed)
        if plan.demo:
            for variant in plan.variants:
                add("demo", variant, "demo", 6, MASKFORMER_QUERIES if variant == "maskformer" else None, seed)
        for queries in plan.queries:
            add("queries", "maskformer", f"textures-{plan.queries_classes}", plan.queries_classes, queries, seed)
    return list(runs.values())


def _dataset(plan: AblationPlan, data: str, classes: int) -> Path:
    """Write (once) and return the ADE20K-layout root of a set; semantic supervision for every variant."""
    from .data.synthetic import write_synthetic_dataset
    from .data.synthetic_scenes import SceneGenerator

    root = Path(plan.out_dir) / "data" / f"{data}-{plan.size}px-{plan.num_train}"
    ade = root / "ADEChallengeData2016"
    if not (ade / "classes.json").exists():
        scenes = None if data == "demo" else SceneGenerator(classes, 0, seed=1000 + classes)
        write_synthetic_dataset(root, plan.num_train, plan.num_val, plan.size, seed=classes,
                                layouts=("ade20k",), scenes=scenes)
    return ade


def _budget(plan: AblationPlan) -> dict[str, int]:
    """What a run's numbers depend on besides its name: a record is reused only under the same budget."""
    return {k: getattr(plan, k) for k in ("steps", "batch_size", "num_train", "num_val", "size", "curve_points")}


def _train_one(plan: AblationPlan, run: dict[str, Any]) -> dict[str, Any]:
    from .train_loop import train
    from .training import TrainConfig

    folder = Path(plan.out_dir) / "runs" / run["name"]
    record_path = folder / "record.json"
    budget = _budget(plan)
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("budget") == budget:
            return record
        logger.info("%s: trained with %s, not %s; training it again", run["name"], record.get("budget"), budget)
    values = TrainConfig.from_file("demo").to_dict()
    overrides = dict(values["model_overrides"])
    if run["queries"] is not None:
        overrides["num_queries"] = run["queries"]
    every = max(1, plan.steps // plan.curve_points)
    values.update(
        dataset="ade20k", data_dir=str(_dataset(plan, run["data"], run["classes"])), variant=run["variant"],
        model_overrides=overrides, max_steps=plan.steps, per_device_batch_size=plan.batch_size, seed=run["seed"],
        crop_size=plan.size, eval_size=plan.size, warmup_steps=min(values["warmup_steps"], plan.steps // 10),
        eval_every=every, save_every=0, logging_every=every, num_workers=plan.num_workers,
        output_dir=str(folder / "train"), synthetic_num_train=plan.num_train,
    )
    start = time.perf_counter()
    metrics = train(TrainConfig(**values))
    seconds = time.perf_counter() - start
    curve = []
    for line in (folder / "train" / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "mean_iou" in entry:
            curve.append([entry["step"], entry["mean_iou"]])
    record = {**run, "mean_iou": float(metrics["mean_iou"]), "pq_stuff": float(metrics["pq_stuff"]),
              "curve": curve, "seconds": seconds, "budget": budget}
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(record_path)
    return record


def run_ablation(plan: AblationPlan, results: str | Path | None = None) -> list[dict[str, Any]]:
    """Train every run of ``plan`` (finished ones are read back), then write ``results``
    (default ``OUT_DIR/RESULTS.md``) with its plots beside it. Returns the records."""
    runs = _runs(plan)
    start = time.perf_counter()
    records = []
    for index, run in enumerate(runs, 1):
        logger.info("ablation run %d/%d: %s", index, len(runs), run["name"])
        records.append(_train_one(plan, run))
    wall = time.perf_counter() - start
    write_results(records, plan, Path(results) if results else Path(plan.out_dir) / "RESULTS.md", wall)
    return records


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def _group(records: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def _plots(records: list[dict[str, Any]], plan: AblationPlan, folder: Path) -> list[str]:
    """mIoU against the number of classes per variant, and learning curves; returns the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for variant in plan.variants:
        means, stds = [], []
        for classes in plan.class_counts:
            values = [r["mean_iou"] * 100 for r in _group(records, experiment="classes", variant=variant, classes=classes)]
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        axis.errorbar(plan.class_counts, means, yerr=stds, marker="o", capsize=3, label=VARIANT_NAMES[variant])
    axis.set_xscale("log")
    axis.set_xticks(plan.class_counts, [str(k) for k in plan.class_counts])
    axis.set_xlabel("number of classes K")
    axis.set_ylabel("mIoU (%)")
    axis.set_title(f"{plan.steps} steps, {plan.num_train} images of {plan.size}²")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "ablation_classes.png", dpi=110)
    plt.close(figure)
    names.append("ablation_classes.png")

    figure, axes = plt.subplots(1, len(plan.class_counts), figsize=(3.2 * len(plan.class_counts), 3.2), sharey=True,
                                squeeze=False)
    for axis, classes in zip(axes[0], plan.class_counts):
        for variant in plan.variants:
            group = _group(records, experiment="classes", variant=variant, classes=classes)
            steps = [point[0] for point in group[0]["curve"]]
            mean = [statistics.fmean(r["curve"][i][1] * 100 for r in group) for i in range(len(steps))]
            axis.plot(steps, mean, marker=".", label=VARIANT_NAMES[variant])
        axis.set_title(f"K = {classes}")
        axis.set_xlabel("step")
    axes[0][0].set_ylabel("mIoU (%)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "ablation_curves.png", dpi=110)
    plt.close(figure)
    names.append("ablation_curves.png")
    return names


def write_results(records: list[dict[str, Any]], plan: AblationPlan, path: Path, wall_seconds: float) -> None:
    """``RESULTS.md`` (and its PNGs beside it) from the run records."""
    import torch

    from .model_card import describe_hardware

    path.parent.mkdir(parents=True, exist_ok=True)
    plots = _plots(records, plan, path.parent)
    seeds = len(plan.seeds)
    lines = [
        "# The paper's comparisons in miniature",
        "",
        "Written by `maskformer-hf ablate` (`maskformer_hf.ablation`) from its run records; do not edit by hand.",
        "",
        f"- Machine: {describe_hardware()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        f"- Wall time of this invocation: {wall_seconds / 60:.1f} min; training time of all runs: "
        f"{sum(r['seconds'] for r in records) / 60:.1f} min.",
        f"- Every run: the demo recipe's model (ResNet-18 from scratch, hidden size 128, 3 decoder layers), "
        f"AdamW lr 1e-3, batch {plan.batch_size}, {plan.steps} steps, {plan.num_train} training and "
        f"{plan.num_val} validation images of {plan.size}², semantic supervision.",
        f"- mean ± std over {seeds} seed{'s' if seeds > 1 else ''} ({', '.join(map(str, plan.seeds))}), in %.",
        "- Sets: `textures-K` are `SceneGenerator(K, 0)` sets (K stuff classes told apart by texture, random "
        "colours); `demo` is the demo's 6-class generator (`maskformer_hf.data.synthetic`).",
        f"- Queries: MaskFormer (bipartite) has {MASKFORMER_QUERIES} outside the queries sweep (N need not equal K; "
        "the sweep's run with as many is the same run); the other three variants have one per class (N = K).",
        "",
        "## Table 4: per-pixel vs mask classification",
        "",
        "| model | paper mIoU (ADE20K) | paper PQ_St | " + " | ".join(
            f"mIoU K={k} | PQ_St K={k}" for k in plan.class_counts) + (" | mIoU demo | PQ_St demo |" if plan.demo else " |"),
        "|---|---|---|" + "---|---|" * (len(plan.class_counts) + int(plan.demo)),
    ]
    for variant in plan.variants:
        paper_miou, paper_pq = PAPER_TABLE4[variant]
        cells = [VARIANT_NAMES[variant], f"{paper_miou}", "–" if paper_pq is None else f"{paper_pq}"]
        for classes in plan.class_counts:
            group = _group(records, experiment="classes", variant=variant, classes=classes)
            cells += [_mean_std([r["mean_iou"] for r in group]), _mean_std([r["pq_stuff"] for r in group])]
        if plan.demo:
            group = _group(records, experiment="demo", variant=variant)
            cells += [_mean_std([r["mean_iou"] for r in group]), _mean_std([r["pq_stuff"] for r in group])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![mIoU against the number of classes]({plots[0]})", "",
              f"![learning curves]({plots[1]})", "",
              f"## Queries (MaskFormer, K = {plan.queries_classes})", "",
              "| queries | paper mIoU (ADE20K) | mIoU | PQ_St |", "|---|---|---|---|"]
    for queries in plan.queries:
        group = _group(records, variant="maskformer", data=f"textures-{plan.queries_classes}", queries=queries)
        lines.append(f"| {queries} | {PAPER_QUERIES.get(queries, '–')} | {_mean_std([r['mean_iou'] for r in group])} | "
                     f"{_mean_std([r['pq_stuff'] for r in group])} |")
    lines += ["", "## Runs", "", "| run | mIoU | PQ_St | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['mean_iou'] * 100:.1f} | {r['pq_stuff'] * 100:.1f} | {r['seconds']:.0f} |"
              for r in records]
    lines += ["", "Command:", "", "```text", f"maskformer-hf ablate --out {plan.out_dir} "
              + " ".join(_plan_flags(plan)), "```", ""]
    path.write_text("\n".join(lines))


def _plan_flags(plan: AblationPlan) -> list[str]:
    defaults = AblationPlan(out_dir=plan.out_dir)
    flags = []
    for item in dataclasses.fields(AblationPlan):
        value, default = getattr(plan, item.name), getattr(defaults, item.name)
        if item.name == "out_dir" or value == default:
            continue
        flag = "--" + item.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{item.name.replace('_', '-')}")
        elif isinstance(value, list):
            flags.append(f"{flag} {' '.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return flags


def ablation_parser(parser: Any = None) -> Any:
    import argparse

    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = AblationPlan()
    parser.add_argument("--out", default=defaults.out_dir, help="output folder (data, runs, RESULTS.md)")
    parser.add_argument("--results", default=None, help="where RESULTS.md goes (default OUT/RESULTS.md)")
    parser.add_argument("--quick", action="store_true", help="every variant for a few steps on tiny sets")
    for item in dataclasses.fields(AblationPlan):
        if item.name == "out_dir":
            continue
        flag, value = "--" + item.name.replace("_", "-"), getattr(defaults, item.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{'also ' if value else ''}the {item.name} runs (default {value})")
        elif isinstance(value, list):
            kind = str if item.name == "variants" else int
            parser.add_argument(flag, nargs="+", type=kind, default=None, help=f"default {value}")
        else:
            parser.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    return parser


def plan_from_args(args: Any) -> AblationPlan:
    from .training import VARIANTS

    plan = AblationPlan.quick(args.out) if args.quick else AblationPlan(out_dir=args.out)
    for item in dataclasses.fields(AblationPlan):
        value = getattr(args, item.name, None)
        if item.name != "out_dir" and value is not None:
            setattr(plan, item.name, value)
    unknown = [v for v in plan.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    if plan.steps < 1 or not plan.seeds or not plan.class_counts:
        raise ValueError("--steps must be >= 1 and --seeds, --class-counts non-empty")
    return plan


def main(argv: list[str] | None = None) -> int:
    args = ablation_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = plan_from_args(args)
    run_ablation(plan, args.results)
    print(f"results: {Path(args.results) if args.results else Path(plan.out_dir) / 'RESULTS.md'}")
    return 0


__all__ = ["AblationPlan", "ablation_parser", "main", "plan_from_args", "run_ablation", "write_results"]
