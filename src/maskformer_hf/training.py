"""The training recipe (SPEC §5) as small pieces shared by ``scripts/train.py`` (accelerate) and the
``Trainer`` route: the typed recipe config, optimizer parameter groups, the poly schedule, the
distributed ``num_masks``.

Read with ``scripts/train.py``, which wires them into a loop; nothing here touches global state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).parent / "recipes"

# Parameters that never get weight decay (SPEC §5): normalisation layers, embeddings, position tables.
NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Embedding)
NO_DECAY_NAMES = ("relative_position_bias_table", "position_embeddings", "absolute_pos_embed", "pos_embed")
NONFINITE_LOSS_MODES = ("stop", "skip")  # TrainConfig.nonfinite_loss
# TrainConfig.variant -> MaskFormerConfig fields (num_queries = K is added for the one-query-per-class ones).
VARIANTS: dict[str, dict[str, Any]] = {
    "maskformer": {"segmentation_type": "mask_classification", "fixed_matching": False},
    "maskformer-fixed": {"segmentation_type": "mask_classification", "fixed_matching": True},
    "per-pixel": {"segmentation_type": "per_pixel", "fixed_matching": False},
    "per-pixel-plus": {"segmentation_type": "per_pixel_plus", "fixed_matching": False},
}


def variant_overrides(variant: str | None, num_labels: int) -> dict[str, Any]:
    """The MaskFormerConfig fields of a :data:`VARIANTS` name for ``num_labels`` classes ({} for None)."""
    if variant is None:
        return {}
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    fields = dict(VARIANTS[variant])
    if variant != "maskformer":
        fields["num_queries"] = num_labels
    return fields


class NonFiniteLossError(FloatingPointError):
    """A training step met a non-finite loss (or gradient) and ``nonfinite_loss="stop"``: ``step`` is
    the optimizer step (1-based) that would have taken it, ``image_ids`` the offending batch's images."""

    def __init__(self, step: int, image_ids: list, what: str = "loss") -> None:
        self.step, self.image_ids = step, list(image_ids)
        super().__init__(f"step {step}: non-finite {what} on images {self.image_ids}; training stopped before "
                         f"the optimizer step (nonfinite_loss='skip' skips such steps instead)")


def copy_buffers(model: nn.Module) -> list[Tensor]:
    """Copies of the model's buffers (BatchNorm running statistics), which a NaN forward pass
    corrupts: :func:`restore_buffers` puts them back when a step is skipped."""
    return [buffer.detach().clone() for buffer in model.buffers()]


def restore_buffers(model: nn.Module, saved: list[Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


def nonfinite_outcome(mode: str, step: int, image_ids: list, what: str, log: logging.Logger | None) -> None:
    """A step met a non-finite ``what`` (loss or gradient): ``stop`` raises :class:`NonFiniteLossError`,
    ``skip`` warns on ``log`` (the caller's logger; None on processes other than the main one) and returns."""
    if mode == "stop":
        raise NonFiniteLossError(step, image_ids, what)
    if log is not None:
        log.warning("step %d: non-finite %s on images %s; step skipped (no optimizer step)", step, what, image_ids)


def _crop_size(value: Any) -> int | list[int]:
    """``TrainConfig.crop_size`` normalised: an int (square crop) or ``[height, width]``; a one-element
    list (what ``--crop_size 512`` parses to) is its int. Strings of digits are accepted (the CLI)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        sides = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"TrainConfig.crop_size must be a side or [height, width] in pixels, got {value!r}") from None
    if len(sides) not in (1, 2) or min(sides) < 1 or any(isinstance(v, float) and v != int(v) for v in items):
        raise ValueError(f"TrainConfig.crop_size must be a side or [height, width] of positive ints, got {value!r}")
    return sides[0] if len(sides) == 1 else sides


def _arg(default: Any, help: str) -> Any:  # noqa: A002
    """A recipe field with its one-line help (the ``--flag``'s help in ``maskformer-hf train --help``);
    a ``list`` or ``dict`` default means a fresh empty one."""
    if default in (list, dict):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a training run; a recipe file (YAML or JSON) fills it, flags override it."""

    # Data
    dataset: str = _arg("synthetic", "synthetic | ade20k | ade20k-parquet | ade20k-panoptic | ade20k-full | "
                        "coco-panoptic | coco-instances | coco-stuff | cityscapes | cityscapes-panoptic | "
                        "mapillary-vistas | semantic-folder | panoptic-folder (docs/data.md: each one's folder)")
    data_dir: str | None = _arg(None, "the dataset's root folder (synthetic: where it is generated; "
                                "ade20k-parquet: a Hub name or folder)")
    train_split: str = _arg("train", "split to train on")
    eval_split: str = _arg("validation", "split to evaluate on")
    synthetic_num_train: int = _arg(400, "synthetic dataset: training images")
    synthetic_num_val: int = _arg(100, "synthetic dataset: validation images")
    synthetic_size: int = _arg(128, "synthetic dataset: image side in pixels")
    synthetic_scenes: list[int] = _arg(list, "synthetic dataset: empty for the demo's 6 classes, or STUFF THINGS "
                                       "for a SceneGenerator set of that many stuff and thing classes")
    synthetic_scenes_seed: int = _arg(0, "synthetic dataset: the SceneGenerator's seed (its textures, shapes, colours)")
    image_column: str = _arg("image", "parquet datasets: the image column")
    annotation_column: str = _arg("annotation", "parquet datasets: the label-map column")
    max_train_samples: int | None = _arg(None, "use only the first N training examples")
    max_eval_samples: int | None = _arg(None, "evaluate on only the first N examples")
    augmentation: str = _arg("ade20k", "ade20k (scale jitter + crop + flip + colour) | coco-panoptic (DETR) | none")
    crop_size: int | list[int] = _arg(512, "training crop in pixels: a side, or HEIGHT WIDTH (Cityscapes: 512 1024) "
                                      "(ade20k augmentation)")
    min_scale: float = _arg(0.5, "smallest scale jitter, as a multiple of scale_base (ade20k augmentation)")
    max_scale: float = _arg(2.0, "largest scale jitter, as a multiple of scale_base (ade20k augmentation)")
    scale_base: int | None = _arg(None, "short side at scale 1 of the jitter (None: the crop's longer side, the "
                                  "paper's convention; Mapillary Vistas: 2048 with 1280 crops); the long side stays "
                                  "<= 4 x scale_base (ade20k augmentation)")
    eval_size: int | None = _arg(None, "shortest edge at evaluation (None: a new model sees images as they are, "
                                 "a checkpoint keeps its processor's size)")
    num_workers: int = _arg(2, "DataLoader worker processes (0: load in the main process)")
    # Model
    model: str = _arg("swin-tiny", "a preset of maskformer_hf.PRESETS, a local checkpoint or a Hub id "
                      "(a checkpoint is fine-tuned; its classifier is re-sized to the dataset's classes)")
    model_overrides: dict[str, Any] = _arg(dict, "MaskFormerConfig fields, as JSON (e.g. '{\"num_queries\": 50}')")
    variant: str | None = _arg(None, "maskformer | maskformer-fixed | per-pixel | per-pixel-plus: the paper's Table 4 "
                               "models (the baselines and fixed matching use one query per class); None: the model's own")
    pretrained_backbone: bool = _arg(True, "ImageNet backbone weights for a preset (downloads once)")
    # Optimisation (SPEC §5)
    max_steps: int = _arg(160_000, "optimizer steps in the whole run")
    per_device_batch_size: int = _arg(16, "images per process and forward pass")
    gradient_accumulation_steps: int = _arg(1, "forward passes per optimizer step")
    learning_rate: float = _arg(1e-4, "AdamW learning rate (peak, after warm-up)")
    weight_decay: float = _arg(1e-4, "AdamW weight decay (never on norms, embeddings, position tables)")
    backbone_lr_multiplier: float = _arg(0.1, "backbone learning rate factor: 0.1 for CNN backbones, 1.0 for Swin")
    transformer_lr_multiplier: float = _arg(1.0, "learning rate factor of the transformer module (decoder, "
                                                 "queries) and the class and mask heads (not in the paper)")
    warmup_steps: int = _arg(0, "linear warm-up steps before the poly decay")
    poly_power: float = _arg(0.9, "power of the poly learning-rate decay")
    max_grad_norm: float | None = _arg(0.01, "full-model gradient clipping (L2 norm); None disables")
    mixed_precision: str = _arg("no", "no | bf16 | fp16 (bf16 on a CPU without native support falls back to no)")
    seed: int = _arg(42, "seed of initialisation, data order and augmentation")
    use_cpu: bool = _arg(False, "train on the CPU even where a GPU is present (as TrainingArguments.use_cpu)")
    # Bookkeeping
    output_dir: str = _arg("outputs/maskformer", "where checkpoints/, model/, log.jsonl and metrics.json go")
    eval_every: int = _arg(0, "evaluate every N steps (0: only at the end)")
    save_every: int = _arg(0, "checkpoint every N steps (0: only at the end)")
    logging_every: int = _arg(10, "log the training loss every N steps")
    log_with: list[str] = _arg(list, "accelerate trackers, e.g. tensorboard wandb")
    resume_from: str | None = _arg(None, "a checkpoint folder, or latest (the newest complete one in output_dir)")
    run_steps: int | None = _arg(None, "stop this invocation after N steps (checkpointed); resume later")
    push_to_hub: bool = _arg(False, "push the final model, processor and card to the Hub")
    hub_model_id: str | None = _arg(None, "the Hub repository (owner/name) for push_to_hub")
    tta: bool = _arg(False, "evaluate with multi-scale + flip test-time augmentation (semantic)")
    nonfinite_loss: str = _arg("stop", "on a non-finite loss or gradient: stop (NonFiniteLossError naming the "
                               "step and image ids) | skip (no optimizer step, a warning naming the image ids)")

    def __post_init__(self) -> None:
        self.crop_size = _crop_size(self.crop_size)
        positive = ("max_steps", "per_device_batch_size", "gradient_accumulation_steps")
        if self.scale_base is not None:
            positive += ("scale_base",)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.nonfinite_loss not in NONFINITE_LOSS_MODES:
            raise ValueError(f"TrainConfig.nonfinite_loss must be stop or skip, got {self.nonfinite_loss!r}")
        if self.variant is not None and self.variant not in VARIANTS:
            raise ValueError(f"TrainConfig.variant must be one of {sorted(VARIANTS)} or None, got {self.variant!r}")
        try:
            self.synthetic_scenes = [int(n) for n in self.synthetic_scenes]
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig.synthetic_scenes must be [] or [STUFF, THINGS] integers, "
                             f"got {self.synthetic_scenes!r}") from None
        if self.synthetic_scenes and (len(self.synthetic_scenes) != 2 or self.synthetic_scenes[0] < 1
                                      or self.synthetic_scenes[1] < 0):
            raise ValueError(f"TrainConfig.synthetic_scenes must be [] or [STUFF >= 1, THINGS >= 0], "
                             f"got {self.synthetic_scenes}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"TrainConfig: need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a recipe (``.yaml``/``.yml``/``.json``, or the name of a shipped recipe such as
        ``ade20k-swin-tiny``), then apply ``overrides`` (None values are ignored)."""
        path = Path(path)
        if not path.exists() and (RECIPES_DIR / f"{path}.yaml").exists():
            path = RECIPES_DIR / f"{path}.yaml"
        if not path.exists():
            shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
            raise ValueError(f"recipe {str(path)!r}: no such file and not a shipped recipe ({', '.join(shipped)})")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"recipe {path}: unknown fields {unknown}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_no_decay(name: str, module: nn.Module) -> bool:
    """True for parameters of norm layers and embeddings, and for position tables."""
    return isinstance(module, NO_DECAY_MODULES) or any(key in name for key in NO_DECAY_NAMES)


TRANSFORMER_PREFIXES = ("model.transformer_module.", "class_predictor.", "mask_embedder.")


def parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float,
                     backbone_lr_multiplier: float = 1.0, backbone_prefix: str = "model.backbone.",
                     transformer_lr_multiplier: float = 1.0,
                     transformer_prefixes: tuple[str, ...] = TRANSFORMER_PREFIXES) -> list[dict]:
    """AdamW parameter groups: backbone parameters at ``learning_rate * backbone_lr_multiplier``, the
    transformer module and heads (``transformer_prefixes``) at ``learning_rate *
    transformer_lr_multiplier``, the rest (pixel decoder) at ``learning_rate``; no weight decay on
    norms, embeddings and position tables. Empty groups are left out; with
    ``transformer_lr_multiplier == 1`` the groups are those of earlier versions (checkpoints resume)."""
    owner = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owner[f"{module_name}.{param_name}" if module_name else param_name] = module
    factors = (1.0, backbone_lr_multiplier, transformer_lr_multiplier)  # by part: other, backbone, transformer
    groups: dict[tuple[int, bool], list[Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = 1 if name.startswith(backbone_prefix) else 0
        if transformer_lr_multiplier != 1.0 and name.startswith(transformer_prefixes):
            part = 2
        groups.setdefault((part, is_no_decay(name, owner[name])), []).append(param)
    return [
        {"params": params, "lr": learning_rate * factors[part], "weight_decay": 0.0 if no_decay else weight_decay}
        for (part, no_decay), params in sorted(groups.items())
    ]


def _fused_adamw_available() -> bool:
    """True where the parameters will live on the CPU or a CUDA device (PyTorch's fused AdamW kernels);
    False for other accelerators (MPS, XPU, XLA), which get the default implementation."""
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return accelerator is None or accelerator.type == "cuda"


def create_optimizer_and_scheduler(model: nn.Module, config: TrainConfig, num_training_steps: int | None = None):
    """AdamW over :func:`parameter_groups` and a linear warm-up + poly decay (power 0.9) schedule.
    AdamW runs fused (one kernel over all parameters) where PyTorch has that kernel (CPU, CUDA): on
    the 2-core CPU a ResNet-18 step of it takes 10 ms instead of 61 ms."""
    from transformers import get_polynomial_decay_schedule_with_warmup

    groups = parameter_groups(model, config.learning_rate, config.weight_decay, config.backbone_lr_multiplier,
                              transformer_lr_multiplier=config.transformer_lr_multiplier)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=_fused_adamw_available())
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=num_training_steps or config.max_steps,
        lr_end=0.0, power=config.poly_power,
    )
    return optimizer, scheduler


def global_num_masks(class_labels: Iterable[Tensor], reduce_sum: Callable[[Tensor], Tensor] | None = None,
                     world_size: int = 1) -> Tensor:
    """The ``num_masks`` to pass to the model under data parallelism: the number of segments in the
    global batch divided by the number of processes, so that averaging the processes' gradients
    gives the gradient of the whole batch. ``reduce_sum`` sums a tensor over processes (e.g.
    ``lambda t: accelerator.reduce(t, "sum")``); without it the local count is returned."""
    local = torch.tensor(float(sum(labels.numel() for labels in class_labels)))
    if reduce_sum is None or world_size == 1:
        return local
    return reduce_sum(local) / world_size


# --- data -----------------------------------------------------------------------------------------
# TrainConfig.dataset names read by a maskformer_hf.data loader given only the folder.
FOLDER_LOADERS = {
    "ade20k": "load_ade20k", "ade20k-panoptic": "load_ade20k_panoptic", "ade20k-full": "load_ade20k_full",
    "coco-panoptic": "load_coco_panoptic", "coco-stuff": "load_coco_stuff", "cityscapes": "load_cityscapes",
    "cityscapes-panoptic": "load_cityscapes_panoptic", "mapillary-vistas": "load_mapillary_vistas",
    "semantic-folder": "load_semantic_folder", "panoptic-folder": "load_panoptic_folder",
}
DATASETS = ("synthetic", "ade20k", "ade20k-parquet", "coco-panoptic", "semantic-folder", "panoptic-folder",
            "coco-instances", "ade20k-panoptic", "ade20k-full", "coco-stuff", "cityscapes", "cityscapes-panoptic",
            "mapillary-vistas")


def synthetic_root(config: TrainConfig) -> Path:
    """The COCO-panoptic root of ``config``'s synthetic set, generated on first use. The folder keeps
    what generated it (``synthetic.json``): another label space there is a ``ValueError``; another
    draw of the same classes (counts, size, seed) is reused with a warning."""
    from .data.synthetic import write_synthetic_dataset

    root = Path(config.data_dir) / "coco"
    spec = {"num_train": config.synthetic_num_train, "num_val": config.synthetic_num_val,
            "size": config.synthetic_size, "seed": config.seed, "scenes": config.synthetic_scenes,
            "scenes_seed": config.synthetic_scenes_seed if config.synthetic_scenes else None}
    spec_file = Path(config.data_dir) / "synthetic.json"
    if not (root / "annotations" / "panoptic_val2017.json").exists():
        scenes = None
        if config.synthetic_scenes:
            from .data.synthetic_scenes import SceneGenerator

            scenes = SceneGenerator(*config.synthetic_scenes, seed=config.synthetic_scenes_seed)
        write_synthetic_dataset(config.data_dir, config.synthetic_num_train, config.synthetic_num_val,
                                config.synthetic_size, seed=config.seed, layouts=("coco",), scenes=scenes)
        spec_file.write_text(json.dumps(spec))
        return root
    found = json.loads(spec_file.read_text()) if spec_file.exists() else spec
    classes = ("scenes", "scenes_seed")
    if any(found.get(k) != spec[k] for k in classes):
        raise ValueError(f"TrainConfig.data_dir {config.data_dir} holds a synthetic set of other classes "
                         f"({ {k: found.get(k) for k in classes} }, not { {k: spec[k] for k in classes} }); "
                         "use another data_dir")
    if found != spec:
        logger.warning("data_dir %s holds a synthetic set generated with %s; reusing it (not %s)",
                       config.data_dir, found, spec)
    return root


def load_splits(config: TrainConfig):
    """``(train, eval, metadata)`` for ``config.dataset`` (the synthetic one is generated on first use)."""
    from . import data

    if config.dataset not in DATASETS:
        raise ValueError(f"TrainConfig.dataset must be one of {DATASETS}, got {config.dataset!r}")
    if config.data_dir is None and config.dataset != "ade20k-parquet":
        raise ValueError(f"TrainConfig.data_dir: dataset {config.dataset!r} needs its folder")
    if config.dataset == "synthetic":
        splits = data.load_coco_panoptic(synthetic_root(config))
    elif config.dataset == "ade20k-parquet":
        splits = data.load_ade20k_parquet(config.data_dir, image_column=config.image_column,
                                          annotation_column=config.annotation_column)
    elif config.dataset == "coco-instances":
        from .data.coco_instances import load_coco_instances_root

        splits = load_coco_instances_root(config.data_dir)
    else:
        splits = getattr(data, FOLDER_LOADERS[config.dataset])(config.data_dir)
    for split in (config.train_split, config.eval_split):
        if split not in splits:
            raise ValueError(f"dataset {config.dataset!r} at {config.data_dir}: no split {split!r} "
                             f"(found {sorted(splits)})")
    train, evaluation = splits[config.train_split], splits[config.eval_split]
    if config.max_train_samples:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if config.max_eval_samples:
        evaluation = evaluation.select(range(min(config.max_eval_samples, len(evaluation))))
    return train, evaluation, data.get_metadata(train)


def train_transforms(config: TrainConfig):
    """The augmentation pipeline named by ``config.augmentation`` (None for "none")."""
    from .data.transforms import ade20k_train_transforms, coco_panoptic_train_transforms

    if config.augmentation == "ade20k":
        return ade20k_train_transforms(config.crop_size, (config.min_scale, config.max_scale),
                                       scale_base=config.scale_base)
    if config.augmentation == "coco-panoptic":
        return coco_panoptic_train_transforms()
    if config.augmentation == "none":
        return None
    raise ValueError(f"TrainConfig.augmentation must be ade20k, coco-panoptic or none, got {config.augmentation!r}")


class AugmentedDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` seen through a transform whose randomness depends only on
    ``(seed, epoch, index)``: the same example gets the same augmentation whichever worker loads it,
    and a resumed run sees exactly the data of an uninterrupted one. Indexed by ``(epoch, index)``
    pairs, as :class:`EpochBatchSampler` yields them."""

    def __init__(self, dataset: Any, transform: Callable[[Any], dict], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        from .data.schema import read_example  # an undecodable file: a ValueError naming it

        if not isinstance(key, tuple):  # a plain index (e.g. from Trainer's sampler): unseeded randomness
            return self.transform(read_example(self.dataset, key))
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
            return self.transform(read_example(self.dataset, index))


class EpochBatchSampler(torch.utils.data.Sampler):
    """This process's batches of ``(epoch, index)`` pairs: a fresh permutation per epoch seeded by
    ``(seed, epoch)``, global batches of ``batch_size * num_processes`` (the incomplete last one
    dropped), process ``rank`` taking its slice of each. ``start`` skips batches (resuming)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 shuffle: bool = True) -> None:
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.num_processes, self.shuffle = rank, num_processes, shuffle
        self.epoch, self.start = 0, 0
        if len(self) == 0:
            raise ValueError(f"{num_examples} training examples cannot fill one global batch of "
                             f"{batch_size} x {num_processes} processes")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_examples // (self.batch_size * self.num_processes)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_examples)
        step = self.batch_size * self.num_processes
        for batch in range(self.start, len(self)):
            first = batch * step + self.rank * self.batch_size
            yield [(self.epoch, int(i)) for i in order[first:first + self.batch_size]]


# --- model -----------------------------------------------------------------------------------------
def build_model_and_processor(config: TrainConfig, metadata: Any):
    """A MaskFormer for the dataset's classes and its processor: a preset (``config.model`` in
    ``PRESETS``) built fresh, or a checkpoint fine-tuned. A checkpoint's classifier is re-sized when
    the classes differ, and everything that names classes follows the dataset: the model config's
    ``id2label`` and ``stuff_label_ids``, the processor's ``num_labels``, ``ignore_index`` and
    ``label_ids_to_fuse``. The processor keeps the checkpoint's resizing and normalisation unless
    ``config.eval_size`` is set."""
    from . import PRESETS, MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
    from .image_inputs import shortest_edge_size

    id2label = {int(k): v for k, v in metadata.id2label.items()}
    overrides = config.model_overrides
    given = overrides.get("num_labels", len(overrides.get("id2label") or id2label))
    if given != len(id2label):
        raise ValueError(f"TrainConfig.model_overrides: {given} classes, but the dataset has {len(id2label)}; the "
                         "classes come from the dataset, leave num_labels / id2label out of model_overrides")
    stuff = [i for i in id2label if i not in set(metadata.thing_ids)] if metadata.thing_ids else None
    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()}, stuff_label_ids=stuff)
    overrides = {**config.model_overrides, **variant_overrides(config.variant, len(id2label))}
    resize = shortest_edge_size(config.eval_size) if config.eval_size else None
    if config.model in PRESETS:
        model_config = MaskFormerConfig.from_preset(
            config.model, use_pretrained_backbone=config.pretrained_backbone, **{**labels, **overrides})
        model = MaskFormerForUniversalSegmentation(model_config)
        processor = MaskFormerImageProcessor(do_resize=resize is not None, size=resize, size_divisor=32)
    else:
        model = MaskFormerForUniversalSegmentation.from_pretrained(config.model, ignore_mismatched_sizes=True,
                                                                   **{**labels, **overrides})
        processor = MaskFormerImageProcessor.from_pretrained(config.model)
        if resize is not None:
            processor.do_resize, processor.size = True, resize
    processor.num_labels, processor.ignore_index = len(id2label), metadata.ignore_index
    processor.label_ids_to_fuse = model.config.stuff_label_ids
    return model, processor


__all__ = [
    "AugmentedDataset",
    "NonFiniteLossError",
    "EpochBatchSampler",
    "TrainConfig",
    "VARIANTS",
    "build_model_and_processor",
    "create_optimizer_and_scheduler",
    "global_num_masks",
    "is_no_decay",
    "load_splits",
    "parameter_groups",
    "train_transforms",
    "variant_overrides",
]
