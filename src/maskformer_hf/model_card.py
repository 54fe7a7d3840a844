"""Model cards: ``huggingface_hub.ModelCard`` with Hub metadata (library, pipeline tag, datasets,
licence, base model, ``model-index`` results), the exact training command, recipe, hardware and
wall time, intended use and limitations.

One template (``model_card_template.md``) serves every card the project writes: trained checkpoints
(:func:`write_model_card`, from the ``metrics.json`` and ``training_info.json`` that training
saves beside the weights), converted checkpoints and the per-preset cards of ``model_cards/``.

A card has a generated block between two HTML comments (:data:`BEGIN`, :data:`END`). Rewriting a
card (:func:`merge_cards`) replaces that block and the generated metadata keys, and keeps
everything else the user wrote: the text outside the block and any metadata key of their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
BEGIN = "<!-- maskformer_hf:generated:begin"
END = "<!-- maskformer_hf:generated:end -->"
USER_PART = re.compile(r"<!-- maskformer_hf:user-part ?([0-9a-f]*) -->")  # fingerprint of what the user owns
PAPER = "https://arxiv.org/abs/2107.06278"
METRICS_FILE = "metrics.json"
TRAINING_INFO_FILE = "training_info.json"
CONVERSION_INFO_FILE = "conversion_info.json"  # written by `maskformer-hf convert`: where the weights came from
# Metadata keys the generator owns (replaced on every rewrite); "tags" are merged, the rest is the user's.
GENERATED_KEYS = ("library_name", "pipeline_tag", "model-index", "datasets", "base_model")
# metrics.json key -> (task, display name); the order of the evaluation table.
HEADLINE = {
    "mean_iou": ("semantic", "mIoU"),
    "mean_accuracy": ("semantic", "mean accuracy"),
    "overall_accuracy": ("semantic", "pixel accuracy"),
    "pq": ("panoptic", "PQ"),
    "sq": ("panoptic", "SQ"),
    "rq": ("panoptic", "RQ"),
    "pq_things": ("panoptic", "PQ things"),
    "pq_stuff": ("panoptic", "PQ stuff"),
}
TASK_NAMES = {"semantic": "Semantic segmentation", "panoptic": "Panoptic segmentation",
              "instance": "Instance segmentation"}
# TrainConfig.dataset -> (Hub dataset id for the metadata, display name).
DATASETS = {
    "ade20k": ("zhoubolei/scene_parse_150", "ADE20K-150"),
    "ade20k-parquet": ("zhoubolei/scene_parse_150", "ADE20K-150"),
    "coco-panoptic": ("detection-datasets/coco", "COCO panoptic"),
    "synthetic": (None, "maskformer_hf synthetic shapes"),
}
LIMITATIONS = (
    "- Trained and evaluated only on the data named above; expect lower quality on other domains,\n"
    "  image sizes and classes, and check it on your own validation images before relying on it.\n"
    "- Segments of classes absent from the training data are never predicted; small and thin objects\n"
    "  are the weakest (masks are predicted at a quarter of the input resolution).\n"
    "- Not for decisions about people or for safety-critical use without an evaluation of your own."
)


@dataclasses.dataclass
class ResultRow:
    """One evaluation figure: what was measured, on what, and where the number comes from."""

    task: str  # semantic | panoptic | instance
    metric: str  # metrics.json key (mean_iou, pq, ...)
    value: float
    dataset: str  # display name
    dataset_id: str | None = None  # Hub id for the metadata (None: not a Hub dataset)
    split: str = "validation"
    tta: bool = False
    source: str = "maskformer_hf evaluation"
    source_url: str | None = None

    def eval_result(self) -> EvalResult:
        name = HEADLINE.get(self.metric, (self.task, self.metric))[1]
        return EvalResult(
            task_type="image-segmentation", task_name=TASK_NAMES[self.task], dataset_type=self.dataset_id or "custom",
            dataset_name=self.dataset, dataset_split=self.split, metric_type=self.metric,
            metric_name=f"{name} (multi-scale + flip)" if self.tta else name, metric_value=self.value,
            metric_args={"test_time_augmentation": "multi-scale + flip" if self.tta else "none"},
            source_name=self.source if self.source_url else None, source_url=self.source_url)


@dataclasses.dataclass
class CardContent:
    """Everything a card says; :func:`render_card` fills the template with it."""

    title: str
    description: str
    backbone: str
    num_queries: int
    num_labels: int
    parameters: str
    repo_id: str
    subtask: str = "panoptic"
    labels_preview: str = ""
    results: list[ResultRow] = dataclasses.field(default_factory=list)
    results_note: str = "Measured by `maskformer_hf.evaluation` at the end of training."
    weights: str = ""
    command: str = ""
    recipe: dict[str, Any] | None = None
    hardware: str = ""
    wall_time: str = ""
    training_note: str = ""
    license: str = "apache-2.0"
    base_model: str | None = None
    datasets: list[str] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=lambda: ["maskformer", "maskformer_hf", "image-segmentation"])
    limitations: str = LIMITATIONS


def _format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"


def render_card(content: CardContent) -> ModelCard:
    """The card of ``content`` (metadata and text), from the one template."""
    import yaml

    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="image-segmentation", license=content.license,
        tags=list(content.tags), datasets=list(content.datasets) or None, base_model=content.base_model,
        model_name=content.title if content.results else None,
        eval_results=[r.eval_result() for r in content.results] or None)
    rows = [{"task": r.task, "dataset": r.dataset, "split": r.split,
             "metric": HEADLINE.get(r.metric, (r.task, r.metric))[1], "value": _format_value(r.value),
             "tta": "multi-scale + flip" if r.tta else "none",
             "source": f"[{r.source}]({r.source_url})" if r.source_url else r.source} for r in content.results]
    recipe = yaml.safe_dump(content.recipe, sort_keys=False).strip() if content.recipe else ""
    fields = {f.name: getattr(content, f.name) for f in dataclasses.fields(content)}
    fields.update(results=rows, recipe=recipe)
    return _with_fingerprint(ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **fields))


# ---------------------------------------------------------------------------------------------
# Merging: the generated block and keys are the generator's, everything else is the user's.
def _split_body(text: str) -> tuple[str, str, str] | None:
    """``(before, block, after)`` of a card body, or None when it has no generated block."""
    start = text.find(BEGIN)
    end = text.find(END, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[:start], text[start:end + len(END)], text[end + len(END):]


def user_part(card: ModelCard) -> tuple[dict[str, Any], str]:
    """What the user owns in a card: its metadata minus the generated keys, its text outside the block."""
    metadata = {k: v for k, v in card.data.to_dict().items() if k not in GENERATED_KEYS and k != "tags"}
    parts = _split_body(card.text)
    outside = card.text if parts is None else parts[0] + parts[2]
    return metadata, outside.strip()


def _fingerprint(card: ModelCard) -> str:
    metadata, text = user_part(card)
    return hashlib.sha256(json.dumps([metadata, text], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _with_fingerprint(card: ModelCard) -> ModelCard:
    """The card with the fingerprint of its user part recorded inside its generated block, so that a
    later rewrite can tell whether someone edited the card since (:func:`is_edited`)."""
    text = USER_PART.sub(f"<!-- maskformer_hf:user-part {_fingerprint(card)} -->", str(card), count=1)
    return ModelCard(text)


def is_edited(card: ModelCard) -> bool:
    """Whether the user part changed since maskformer_hf last wrote the card (no block: a hand-written card)."""
    parts = _split_body(card.text)
    recorded = USER_PART.search(parts[1]) if parts else None
    return recorded is None or recorded.group(1) != _fingerprint(card)


def merge_cards(generated: ModelCard, base: ModelCard | None, replace: tuple[str, ...] = (),
                other: ModelCard | None = None) -> ModelCard:
    """``base`` with the generated block and metadata keys of ``generated`` (tags: the union).

    Only keys that ``generated`` has are replaced (a ``datasets`` the user added stays when the
    generator knows none), plus the keys in ``replace`` (e.g. ``license`` when given explicitly);
    metadata keys that only ``other`` (the other copy of the card) has are kept too. A ``base``
    without a generated block (a card written by hand) keeps all its text, below the block.
    """
    if base is None:
        return _with_fingerprint(ModelCard(str(generated)))
    metadata = base.data.to_dict()
    for key, value in (other.data.to_dict() if other is not None else {}).items():
        metadata.setdefault(key, value)
    new = generated.data.to_dict()
    for key in (*GENERATED_KEYS, *replace):
        if key in new:
            metadata[key] = new[key]
    metadata["tags"] = list(dict.fromkeys(list(metadata.get("tags") or []) + list(new.get("tags") or [])))
    metadata.setdefault("license", new.get("license"))
    block = _split_body(generated.text)[1]
    parts = _split_body(base.text)
    if parts is None:
        text = f"\n{block}\n\n{base.text.strip()}\n"
    else:
        text = parts[0] + block + parts[2]
    return _with_fingerprint(ModelCard(f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n{text}"))


def choose_base(local: ModelCard | None, remote: ModelCard | None) -> ModelCard | None:
    """The card whose user part a push keeps: the one edited since maskformer_hf last wrote it (the
    local one when neither was). Both edited, differently: an error, so that nothing is lost."""
    candidates = [c for c in (local, remote) if c is not None]
    edited = [c for c in candidates if is_edited(c)]
    if len(edited) == 2 and user_part(edited[0]) != user_part(edited[1]):
        raise ValueError("model card: README.md was edited both in the folder and on the Hub, differently; "
                         "copy the Hub's edits into the local README.md (or the other way round) and push again")
    return edited[0] if edited else (candidates[0] if candidates else None)


# ---------------------------------------------------------------------------------------------
# Cards of checkpoints.
def describe_hardware() -> str:
    """The accelerators (or the CPU) of this machine, in words."""
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(f"{names.count(n)} × {n}" for n in dict.fromkeys(names))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU only, {os.cpu_count()} cores ({cpu})"


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


SWIN_NAMES = {(96, (2, 2, 6, 2)): "Swin-T", (96, (2, 2, 18, 2)): "Swin-S", (128, (2, 2, 18, 2)): "Swin-B",
              (192, (2, 2, 18, 2)): "Swin-L"}


def backbone_name(config: dict[str, Any]) -> str:
    """The backbone of a ``config.json`` in words: ``Swin-T``, ``resnet50``, ``resnet101 (deep stem)`` ..."""
    backbone_config = config.get("backbone_config") or {}
    if backbone_config:
        kind = backbone_config.get("model_type", "?")
        if "swin" in kind:
            key = (backbone_config.get("embed_dim"), tuple(backbone_config.get("depths") or ()))
            return SWIN_NAMES.get(key, f"Swin (embed_dim {key[0]}, depths {list(key[1])})")
        depths = tuple(backbone_config.get("depths") or ())
        return {(3, 4, 6, 3): "ResNet-50", (3, 4, 23, 3): "ResNet-101"}.get(depths, f"{kind} (depths {list(depths)})")
    name = str(config.get("backbone", "?"))
    return f"{name} (deep stem)" if (config.get("backbone_kwargs") or {}).get("stem_type") == "deep" else name


def base_model_of(recipe: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The Hub id the weights started from: a fine-tuned checkpoint, or the ImageNet backbone."""
    from .configuration_maskformer import PRESETS

    model = recipe.get("model")
    if model and model not in PRESETS:
        return model if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not os.path.exists(model) else None
    if not recipe.get("pretrained_backbone"):
        return None
    backbone = config.get("backbone")
    if config.get("backbone_config"):
        return backbone
    try:
        import timm

        hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
        return hub_id or None
    except Exception:  # not a timm name with a pretrained config
        return None


def _results_from_metrics(metrics: dict[str, Any], recipe: dict[str, Any]) -> list[ResultRow]:
    dataset = metrics.get("dataset") or recipe.get("dataset") or "custom data"  # an evaluate report names its own
    dataset_id, dataset_name = DATASETS.get(dataset, (None, dataset))
    if dataset == "ade20k-parquet" and recipe.get("data_dir") and not os.path.exists(recipe["data_dir"]):
        dataset_id = recipe["data_dir"]
    split = metrics.get("split") or recipe.get("eval_split", "validation")
    tta = bool(metrics.get("tta", recipe.get("tta", False)))
    rows = []
    for key, (task, _) in HEADLINE.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and value == value:  # NaN (no segment of a kind) is left out
            rows.append(ResultRow(task=task, metric=key, value=float(value), dataset=dataset_name,
                                  dataset_id=dataset_id, split=split, tta=tta and task == "semantic"))
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_card(folder: str | Path, *, repo_id: str | None = None, metrics: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, license: str | None = None) -> ModelCard:
    """The generated card of a checkpoint folder: its ``config.json``, and ``metrics.json`` /
    ``training_info.json`` (written by training) unless given; without a ``metrics.json`` of its
    own, that of the training run one folder up (``output_dir/metrics.json`` beside ``log.jsonl``)."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise ValueError(f"model card: {folder} has no config.json (not a checkpoint folder)")
    if metrics is None:  # the folder's own, else its training run's (output_dir/metrics.json, output_dir/log.jsonl)
        run = folder.parent if (folder.parent / "log.jsonl").is_file() else None
        metrics = _read_json(folder / METRICS_FILE) or (_read_json(run / METRICS_FILE) if run else None) or {}
    training = training if training is not None else _read_json(folder / TRAINING_INFO_FILE) or {}
    recipe = training.get("recipe") or {}
    labels = [str(v) for _, v in sorted(((int(k), v) for k, v in (config.get("id2label") or {}).items()))]
    backbone = backbone_name(config)
    parameters = _parameter_count(folder)
    has_panoptic = any(k in metrics for k in ("pq", "sq", "rq"))
    dataset = recipe.get("dataset")
    dataset_id, dataset_name = DATASETS.get(dataset, (None, dataset))
    title = f"MaskFormer ({backbone}) on {dataset_name}" if dataset else f"MaskFormer ({backbone})"
    steps = training.get("steps") or recipe.get("max_steps")
    conversion = _read_json(folder / CONVERSION_INFO_FILE) if not recipe else None
    content = CardContent(
        title=title,
        description=(f"MaskFormer (Cheng et al., *Per-Pixel Classification is Not All You Need for Semantic "
                     f"Segmentation*, NeurIPS 2021, [arXiv 2107.06278]({PAPER}))"
                     + (f" trained with `maskformer_hf` for {steps} steps." if steps else ".")),
        backbone=backbone, num_queries=config.get("num_queries", 100), num_labels=len(labels),
        labels_preview=", ".join(labels[:8]) + (", …" if len(labels) > 8 else ""),
        parameters=parameters, repo_id=repo_id or recipe.get("hub_model_id") or str(folder),
        subtask="panoptic" if has_panoptic or not metrics else "semantic",
        results=_results_from_metrics(metrics, recipe),
        command=training.get("command", ""), recipe=recipe or None, hardware=training.get("hardware", ""),
        wall_time=format_duration(training["wall_time_seconds"]) if training.get("wall_time_seconds") else "",
        training_note="" if recipe else "No training record was saved with these weights.",
        license=license or training.get("license") or "apache-2.0",
        base_model=base_model_of(recipe, config) if recipe else training.get("base_model"),
        datasets=[dataset_id] if dataset_id else [],
    )
    if conversion:
        _describe_conversion(content, conversion, license)
    return render_card(content)


def _describe_conversion(content: CardContent, conversion: dict[str, Any], license: str | None) -> None:
    """A converted checkpoint's card: where the weights come from, and that they were not trained here."""
    source, kind = conversion["source"], conversion.get("format", "transformers")
    content.title = f"{content.title} converted from {Path(source).name if kind == 'detectron2' else source}"
    content.description = (f"The weights of the {kind} MaskFormer checkpoint `{source}`, converted to maskformer_hf "
                           f"(Cheng et al., NeurIPS 2021, [arXiv 2107.06278]({PAPER})).")
    check = ("class and mask logits equal transformers' within 1e-4 in our parity tests" if kind == "transformers"
             else "every key of the file mapped, the config inferred from the weights' shapes")
    content.weights = f"Converted with `{conversion.get('command', 'maskformer-hf convert')}` ({check})."
    content.training_note = "Trained by the authors of the source checkpoint; see its own card for data and recipe."
    content.license = license or "other"
    content.base_model = source if kind == "transformers" and re.fullmatch(r"[\w.-]+/[\w.-]+", source) \
        and not os.path.exists(source) else None
    content.limitations = ("- Licence and training data: those of the source checkpoint (CC BY-NC 4.0 for the "
                           "MaskFormer model zoo).\n" + LIMITATIONS)


def _parameter_count(folder: Path) -> str:
    """Parameters counted from the safetensors header(s), without loading the weights."""
    from safetensors import safe_open

    files = sorted(folder.glob("model*.safetensors"))
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if not key.endswith(("running_mean", "running_var", "num_batches_tracked", "relative_position_index")):
                    total += math.prod(f.get_slice(key).get_shape())
    return f"{total / 1e6:.1f}M" if total else "unknown"


def write_model_card(folder: str | Path, *, repo_id: str | None = None, base: ModelCard | None = None,
                     license: str | None = None, **kwargs: Any) -> Path:
    """(Re)write ``folder/README.md``: the generated card merged into ``base`` (default: the
    folder's own README.md, so that what the user wrote outside the generated block stays). A
    ``license`` given here replaces the card's."""
    folder = Path(folder)
    path = folder / "README.md"
    if base is None and path.is_file():
        base = ModelCard.load(path)
    generated = checkpoint_card(folder, repo_id=repo_id, license=license, **kwargs)
    merge_cards(generated, base, replace=("license",) if license else ()).save(path)
    return path


def training_info(config: Any, *, wall_time_seconds: float, steps: int, num_processes: int,
                  mixed_precision: str, command: list[str]) -> dict[str, Any]:
    """What a card says about how the weights were made (saved as ``training_info.json``)."""
    import shlex

    import torch

    from . import __version__

    return {
        "command": " ".join(command[:1] + [shlex.quote(a) for a in command[1:]]),  # command[0]: the program
        "recipe": config.to_dict(),
        "hardware": f"{describe_hardware()}, {num_processes} process{'es' if num_processes > 1 else ''}, "
                    f"mixed precision {mixed_precision}",
        "wall_time_seconds": round(wall_time_seconds, 1),
        "steps": steps,
        "versions": {"maskformer_hf": __version__, "torch": torch.__version__},
    }


__all__ = ["BEGIN", "CONVERSION_INFO_FILE", "END", "CardContent", "ResultRow", "base_model_of", "checkpoint_card",
           "choose_base", "is_edited", "merge_cards",
           "render_card", "training_info", "user_part", "write_model_card"]
