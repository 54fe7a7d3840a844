#!/usr/bin/env python
"""Write ``model_cards/``: one card per paper preset (ADE20K-150 and COCO panoptic; R50, R101,
Swin-T/S/B/L) and one for the demo, all from the one template of ``maskformer_hf.model_card``.

    python scripts/make_model_cards.py            # (re)write model_cards/*.md
    python scripts/make_model_cards.py --check    # exit 1 when a committed card differs from what this writes

The figures of the preset cards are the paper's (Cheng et al., NeurIPS 2021: Table 1 for ADE20K-150
val, Table 3 for COCO panoptic val), obtained by the authors with the original weights and
detectron2; every card says so, and its ``model-index`` cites the paper as the source. The demo's
figures are the ones `make demo` measured here (its run, machine and date are named in the card).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from maskformer_hf import PRESETS
from maskformer_hf.model_card import PAPER, CardContent, ResultRow, base_model_of, render_card
from maskformer_hf.training import TrainConfig


# preset -> (paper's name, crop, mIoU s.s., mIoU m.s., params, GFLOPs, fps on a V100, transformers' Hub copy).
# Swin-B/L: the paper's ImageNet-22k rows (†), whose backbones our presets name.
ADE20K = {
    "resnet50": ("R50", 512, "44.5 ± 0.5", "46.7 ± 0.6", "41M", 53, 24.5, "facebook/maskformer-resnet50-ade"),
    "resnet101": ("R101", 512, "45.5 ± 0.5", "47.2 ± 0.2", "60M", 73, 19.5, "facebook/maskformer-resnet101-ade"),
    "swin-tiny": ("Swin-T", 512, "46.7 ± 0.7", "48.8 ± 0.6", "42M", 55, 22.1, "facebook/maskformer-swin-tiny-ade"),
    "swin-small": ("Swin-S", 512, "49.8 ± 0.4", "51.0 ± 0.4", "63M", 79, 19.6, "facebook/maskformer-swin-small-ade"),
    "swin-base": ("Swin-B†", 640, "52.7 ± 0.4", "53.9 ± 0.2", "102M", 195, 12.6, "facebook/maskformer-swin-base-ade"),
    "swin-large": ("Swin-L†", 640, "54.1 ± 0.2", "55.6 ± 0.1", "212M", 375, 7.9, "facebook/maskformer-swin-large-ade"),
}
# preset -> (paper's name, PQ, PQ things, PQ stuff, SQ, RQ, params, GFLOPs, fps, transformers' Hub copy or None).
COCO = {
    "resnet50-6enc": ("R50 + 6 Enc", 46.5, 51.0, 39.8, 80.4, 56.8, "45M", 181, 17.6, None),
    "resnet101-6enc": ("R101 + 6 Enc", 47.6, 52.5, 40.3, 80.7, 58.0, "64M", 248, 14.0, None),
    "swin-tiny": ("Swin-T", 47.7, 51.7, 41.7, 80.4, 58.3, "42M", 179, 17.0, "facebook/maskformer-swin-tiny-coco"),
    "swin-small": ("Swin-S", 49.7, 54.4, 42.6, 80.9, 60.4, "63M", 259, 12.4, "facebook/maskformer-swin-small-coco"),
    "swin-base": ("Swin-B†", 51.8, 56.9, 44.1, 81.4, 62.6, "102M", 411, 8.4, "facebook/maskformer-swin-base-coco"),
    "swin-large": ("Swin-L†", 52.7, 58.5, 44.0, 81.8, 63.5, "212M", 792, 5.2, "facebook/maskformer-swin-large-coco"),
}
# The recipe each preset trains with: a shipped one, plus the flags that turn it into this preset.
RECIPES = {
    ("ade20k", "resnet50"): ("ade20k-resnet50", []), ("ade20k", "resnet101"): ("ade20k-resnet50", ["--model", "resnet101"]),
    ("coco", "resnet50-6enc"): ("coco-panoptic-resnet50", []),
    ("coco", "resnet101-6enc"): ("coco-panoptic-resnet50", ["--model", "resnet101-6enc"]),
}
# What `make demo` measured (fresh clone, `make demo`, 2-core CPU without GPU, 2026-12-01; demo_output/metrics.json).
DEMO_MEASURED = {"mean_iou": 0.8816, "pq": 0.8397, "sq": 0.9164, "rq": 0.9130}
PAPER_SOURCE = "MaskFormer paper"
LIMITATIONS_PRESET = (
    "- The figures are the paper's, for the original weights evaluated with detectron2; converted weights\n"
    "  give the same outputs up to float rounding, but this card does not claim figures measured here.\n"
    "- {dataset} classes only; other domains and classes need fine-tuning (see docs/fine_tune_custom_data.md).\n"
    "- Masks are predicted at a quarter of the input resolution: small and thin objects are the weakest."
)


def recipe_for(dataset: str, preset: str) -> tuple[str, list[str], dict]:
    recipe, flags = RECIPES.get((dataset, preset), (f"{'ade20k' if dataset == 'ade20k' else 'coco-panoptic'}-swin-tiny",
                                                   [] if preset == "swin-tiny" else ["--model", preset]))
    if dataset == "ade20k" and ADE20K[preset][1] != 512:
        flags = flags + ["--crop_size", str(ADE20K[preset][1]), "--eval_size", str(ADE20K[preset][1])]
    overrides = dict(zip(flags[::2], flags[1::2]))
    config = TrainConfig.from_file(recipe, **{k.removeprefix("--"): (int(v) if v.isdigit() else v)
                                              for k, v in overrides.items()})
    return recipe, flags, config.to_dict()


def ade20k_card(preset: str) -> tuple[str, CardContent]:
    name, crop, ss, ms, params, gflops, fps, hf_id = ADE20K[preset]
    recipe, flags, values = recipe_for("ade20k", preset)
    folder = hf_id.split("/")[1]
    table = f"Table 1 (ADE20K-150 val, crop {crop}; mIoU in %, mean ± standard deviation)"
    results = [ResultRow(task="semantic", metric="mean_iou", value=float(v.split()[0]), dataset="ADE20K-150",
                         dataset_id="zhoubolei/scene_parse_150", split="validation", tta=tta,
                         source=f"{PAPER_SOURCE}, Table 1", source_url=PAPER) for v, tta in ((ss, False), (ms, True))]
    content = CardContent(
        title=f"MaskFormer {name} — ADE20K-150 semantic segmentation (paper preset `{preset}`)",
        description=(f"The paper's MaskFormer with a {name} backbone for ADE20K-150 (150 classes), as maskformer_hf "
                     f"preset `{preset}`. Single scale {ss} mIoU, multi-scale {ms} mIoU; {gflops} GFLOPs, "
                     f"{fps} fps on a V100 (all the paper's figures). Load the official weights with the "
                     "converter below; train it again with the recipe below."),
        backbone=name, num_queries=100, num_labels=150, parameters=f"{params} (paper)", repo_id=folder,
        subtask="semantic", labels_preview="wall, building, sky, floor, tree, ceiling, road, bed, …",
        results=results, results_note=f"Published in the paper, {table}; not measured by maskformer_hf.",
        weights=_weights_text(hf_id, folder),
        command=" ".join(["maskformer-hf train --config", recipe, *flags, "--data_dir /data/ADEChallengeData2016"]),
        recipe=values, hardware="the paper's runs: 8 V100 GPUs, detectron2",
        training_note=f"Crop {crop}, global batch 16, 160k iterations, {_pretraining(preset)}.",
        license="cc-by-nc-4.0", base_model=_backbone_checkpoint(preset),
        datasets=["zhoubolei/scene_parse_150"], limitations=LIMITATIONS_PRESET.format(dataset="ADE20K-150"))
    return f"maskformer-{preset}-ade20k.md", content


def coco_card(preset: str) -> tuple[str, CardContent]:
    name, pq, pq_th, pq_st, sq, rq, params, gflops, fps, hf_id = COCO[preset]
    recipe, flags, values = recipe_for("coco", preset)
    folder = hf_id.split("/")[1] if hf_id else f"maskformer-{preset}-coco"
    figures = {"pq": pq, "pq_things": pq_th, "pq_stuff": pq_st, "sq": sq, "rq": rq}
    results = [ResultRow(task="panoptic", metric=k, value=v, dataset="COCO panoptic", dataset_id="detection-datasets/coco",
                         split="validation", source=f"{PAPER_SOURCE}, Table 3", source_url=PAPER) for k, v in figures.items()]
    content = CardContent(
        title=f"MaskFormer {name} — COCO panoptic segmentation (paper preset `{preset}`)",
        description=(f"The paper's MaskFormer {name} for COCO panoptic (133 classes: 80 things, "
                     f"53 stuff), as maskformer_hf preset `{preset}`. PQ {pq}; {gflops} GFLOPs, {fps} fps on a V100 "
                     "(the paper's figures, post-processing included)."),
        backbone=name, num_queries=100, num_labels=133, parameters=f"{params} (paper)", repo_id=folder,
        subtask="panoptic", labels_preview="person, bicycle, car, motorcycle, airplane, bus, train, truck, …",
        results=results, results_note="Published in the paper, Table 3 (COCO panoptic val, 133 classes; in %); "
                                      "not measured by maskformer_hf.",
        weights=_weights_text(hf_id, folder),
        command=" ".join(["maskformer-hf train --config", recipe, *flags, "--data_dir /data/coco"]),
        recipe=values, hardware="the paper's runs: V100 GPUs, detectron2",
        training_note=f"Global batch 64, 554k iterations, DETR's augmentation, {_pretraining(preset)}.",
        license="cc-by-nc-4.0", base_model=_backbone_checkpoint(preset), datasets=["detection-datasets/coco"],
        limitations=LIMITATIONS_PRESET.format(dataset="COCO panoptic"))
    return f"maskformer-{preset}-coco-panoptic.md", content


def demo_card() -> tuple[str, CardContent]:
    values = TrainConfig.from_file("demo").to_dict()
    results = [ResultRow(task="panoptic" if k != "mean_iou" else "semantic", metric=k, value=v,
                         dataset="maskformer_hf synthetic shapes", split="validation",
                         source="make demo, 2-core CPU, 2026-12-01") for k, v in DEMO_MEASURED.items()]
    content = CardContent(
        title="MaskFormer demo — synthetic shapes (`make demo`)",
        description=("A small MaskFormer (ResNet-18 from scratch, 10 queries, 3 decoder layers of width 128) that "
                     "`make demo` trains in about five minutes on a 2-core CPU, on the synthetic panoptic set the "
                     "package generates (6 classes: 3 things, 3 stuff; 400 training and 100 validation images of "
                     "128×128). `make demo` writes this card, with the run's own figures, to demo_output/model."),
        backbone="resnet18", num_queries=10, num_labels=6, parameters=_demo_parameters(values), repo_id="demo_output/model",
        labels_preview="ball, box, kite, sky, grass, sand", results=results,
        results_note="Measured by maskformer_hf: `make demo` from a fresh clone, 2-core CPU without GPU, 2026-12-01.",
        command="make demo   # = python scripts/train.py --config demo, then the report and `maskformer-hf segment`",
        recipe=values, hardware="CPU only, 2 cores", wall_time="about 5 min (7 min 48 s with the install)",
        license="apache-2.0", datasets=[],
        limitations=("- Learns the synthetic shapes only: a smoke test of the whole pipeline, not a model for real "
                     "images.\n- Start real work from a paper preset or a converted checkpoint."))
    return "maskformer-demo.md", content


def _backbone_checkpoint(preset: str) -> str | None:
    """The ImageNet weights the paper's model started from: Swin's (the checkpoints the presets name),
    torchvision's ResNets (on the Hub as timm's ``tv_in1k`` copies)."""
    backbone = PRESETS[preset]["backbone"]
    return backbone if "/" in backbone else f"timm/{backbone}.tv_in1k"


def _pretraining(preset: str) -> str:
    backbone = PRESETS[preset]["backbone"]
    if "in22k" in backbone:
        return f"ImageNet-22K-pretrained backbone (`{backbone}`)"
    if "/" in backbone:
        return f"ImageNet-1K-pretrained backbone (`{backbone}`)"
    ours = base_model_of({"model": preset, "pretrained_backbone": True}, PRESETS[preset])
    return (f"torchvision's ImageNet-1K {backbone} as the paper's initialisation; the recipe's "
            f"`pretrained_backbone` downloads timm's default weights (`{ours}`) instead")


def _demo_parameters(values: dict) -> str:
    from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation

    config = MaskFormerConfig.from_preset(values["model"], **values["model_overrides"], num_labels=6)
    return f"{sum(p.numel() for p in MaskFormerForUniversalSegmentation(config).parameters()) / 1e6:.1f}M"


def _weights_text(hf_id: str | None, folder: str) -> str:
    lines = ["The original weights, converted to maskformer_hf (`maskformer-hf convert` checks that every key maps):",
             "", "```bash"]
    if hf_id:
        lines.append(f"maskformer-hf convert {hf_id} {folder}        # transformers' copy on the Hub")
    lines.append(f"maskformer-hf convert model_final_XXXXXX.pkl {folder}   # the original detectron2 file "
                 "(MaskFormer model zoo)")
    lines += ["```", "", f"then `MaskFormerForUniversalSegmentation.from_pretrained(\"{folder}\")`, `pipeline(...)` "
              "or `maskformer-hf segment --model " + folder + "`. Licence: that of the original weights "
              "(CC BY-NC 4.0 for the MaskFormer model zoo, hence this card's licence)."]
    return "\n".join(lines)


def all_cards() -> dict[str, str]:
    """File name -> card text, for every card of model_cards/."""
    contents = [ade20k_card(p) for p in ADE20K] + [coco_card(p) for p in COCO] + [demo_card()]
    return {name: str(render_card(content)) + "\n" for name, content in contents}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="model_cards", help="the folder of the cards (run from the repository root)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cards = all_cards()
    if args.check:
        drifted = [name for name, text in cards.items()
                   if not (out / name).is_file() or (out / name).read_text() != text]
        for name in drifted:
            old = (out / name).read_text().splitlines() if (out / name).is_file() else []
            sys.stdout.writelines(line + "\n" for line in difflib.unified_diff(
                old, cards[name].splitlines(), f"committed/{name}", f"generated/{name}", lineterm="", n=1))
        extra = sorted(p.name for p in out.glob("*.md") if p.name not in cards)
        if drifted or extra:
            print(f"model cards out of date: {drifted}; not generated by this script: {extra}. "
                  "Run python scripts/make_model_cards.py", file=sys.stderr)
            return 1
        print(f"{len(cards)} model cards up to date")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in cards.items():
        (out / name).write_text(text)
    print(f"wrote {len(cards)} model cards to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
