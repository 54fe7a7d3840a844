"""The accelerate training loop behind ``scripts/train.py`` and ``maskformer-hf train``.

Runs unchanged with ``python``, ``accelerate launch`` (multi-GPU, multi-node) and ``torchrun``, on CPU
or GPU: the recipe of SPEC §5 (see :mod:`maskformer_hf.training`), mixed precision, gradient
accumulation (``no_sync`` between the steps), periodic evaluation, checkpoints written atomically and resumed exactly
(``save_state`` / ``load_state`` plus data order and augmentation that depend only on the step),
a tqdm bar, accelerate's trackers, and ``--push_to_hub``.

Layout of ``output_dir``: ``checkpoints/step_XXXXXXX/`` (accelerate state + ``trainer_state.json``),
``model/`` (the final model, processor and model card), ``log.jsonl`` (one line per logging step
and per evaluation), ``metrics.json`` (the final evaluation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .evaluation import evaluate_segmentation
from .model_card import training_info
from .precision import cpu_supports_bf16
from .training import (AugmentedDataset, EpochBatchSampler, TrainConfig, build_model_and_processor,
                       create_optimizer_and_scheduler, global_num_masks, load_splits, train_transforms)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def _mixed_precision(requested: str, use_cpu: bool) -> str:
    if requested == "bf16" and use_cpu and not cpu_supports_bf16():
        logger.warning("mixed_precision=bf16: this CPU has no native bf16 (it would be slower); training in fp32")
        return "no"
    return requested


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most advanced complete checkpoint under ``output_dir/checkpoints`` (None if there is none)."""
    folder = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in folder.glob("step_*") if (p / "trainer_state.json").exists() and "." not in p.name)
    return done[-1] if done else None


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, config: TrainConfig,
                    wall_time_seconds: float = 0.0) -> Path:
    """``accelerator.save_state`` into a temporary folder renamed into place once complete, so that
    an interrupted save never leaves a checkpoint that looks valid."""
    final = output_dir / CHECKPOINTS / f"step_{step:07d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps({"step": step, "config": config.to_dict(),
                                                                  "wall_time_seconds": wall_time_seconds}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}


def train(config: TrainConfig, datasets: tuple | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate, save; returns the final metrics. ``datasets`` = ``(train, eval, metadata)``
    replaces loading by ``config`` (a seam for tests and notebooks). ``command``: the command line
    that launched the run, for the model card (default: the recipe as ``maskformer-hf train`` flags)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if config.push_to_hub:  # before hours of training, not after
        check_push(config)
    wall_started = time.perf_counter()

    from .data.collate import MaskFormerCollator
    from .data.transforms import SegmentationTransform

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision, use_cpu),
        log_with=config.log_with or None,
        project_dir=config.output_dir,
    )
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set, metadata = datasets if datasets is not None else load_splits(config)
    model, processor = build_model_and_processor(config, metadata)

    transform = SegmentationTransform(metadata, train_transforms(config), drop_crowd=True)
    sampler = EpochBatchSampler(len(train_set), config.per_device_batch_size, config.seed,
                                accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(
        AugmentedDataset(train_set, transform, config.seed), batch_sampler=sampler, num_workers=config.num_workers,
        collate_fn=MaskFormerCollator(processor, metadata.ignore_index), persistent_workers=config.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # a new iterator must not draw from the global RNG
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.log_with:
        accelerator.init_trackers("maskformer_hf", config={k: v for k, v in config.to_dict().items()
                                                          if isinstance(v, (int, float, str, bool))})

    step = 0
    resume = latest_checkpoint(output_dir) if config.resume_from == "latest" else config.resume_from
    if resume:
        accelerator.load_state(str(resume))
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
        step = state["step"]
        wall_started -= state.get("wall_time_seconds", 0.0)  # the card reports the whole run's wall time
        logger.info("resumed from %s at step %d", resume, step)

    log_path = output_dir / "log.jsonl"
    if not resume and accelerator.is_main_process and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log
    accumulation = config.gradient_accumulation_steps
    batches_per_epoch = len(sampler)
    reduce_sum = lambda t: accelerator.reduce(t, reduction="sum")  # noqa: E731
    bar = tqdm(total=config.max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    model.train()
    running, started = [], time.perf_counter()
    stop = min(config.max_steps, step + config.run_steps) if config.run_steps else config.max_steps
    consumed = step * accumulation  # batches seen so far by each process; data order depends on it only
    while step < stop:
        sampler.set_epoch(consumed // batches_per_epoch, start=consumed % batches_per_epoch)
        for batch in loader:
            consumed += 1
            sync = consumed % accumulation == 0
            batch = _to_device(batch, accelerator.device)
            num_masks = global_num_masks(batch["class_labels"], reduce_sum, accelerator.num_processes)
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = model(**batch, num_masks=num_masks.to(accelerator.device))
                accelerator.backward(out.loss / accumulation)
            running.append(out.loss.detach())
            if not sync:
                continue
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % config.logging_every == 0 or step == config.max_steps:
                loss = reduce_sum(torch.stack(running).mean()).item() / accelerator.num_processes
                record = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                          "seconds": time.perf_counter() - started}
                running.clear()
                bar.set_postfix(loss=f"{loss:.3f}")
                accelerator.log({"train/loss": loss, "train/lr": record["lr"]}, step=step)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                _evaluate_and_log(accelerator, model, processor, eval_set, metadata, config, step, log_path)
            if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                save_checkpoint(accelerator, output_dir, step, config, time.perf_counter() - wall_started)
            if step >= stop:
                break
    bar.close()
    save_checkpoint(accelerator, output_dir, step, config, time.perf_counter() - wall_started)
    if step < config.max_steps:  # an intermediate invocation (run_steps): resume with resume_from="latest"
        accelerator.end_training()
        return {"step": step}
    metrics = _evaluate_and_log(accelerator, model, processor, eval_set, metadata, config, step, log_path)
    if accelerator.is_main_process:
        (output_dir / "metrics.json").write_text(json.dumps(_summary(metrics), indent=1))
        info = training_info(config, wall_time_seconds=time.perf_counter() - wall_started, steps=step,
                             num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
                             command=command or recipe_command(config))
        save_final_model(accelerator.unwrap_model(model), processor, output_dir / "model", metrics, info)
        if config.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(output_dir / "model", config.hub_model_id)
    accelerator.end_training()
    return metrics


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly metrics (tensors and arrays become lists, NaN stays NaN)."""
    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value
    return {k: plain(v) for k, v in metrics.items()}


def _evaluate_and_log(accelerator, model, processor, dataset, metadata, config, step, log_path) -> dict[str, Any]:
    metrics = evaluate_segmentation(
        accelerator.unwrap_model(model), processor, dataset, metadata, batch_size=config.per_device_batch_size,
        tta=config.tta, rank=accelerator.process_index, num_processes=accelerator.num_processes,
        reduce_sum=lambda t: accelerator.reduce(t, reduction="sum"), progress=accelerator.is_local_main_process,
    )
    scalars = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))
               and not (isinstance(v, float) and math.isnan(v))}
    accelerator.log(scalars, step=step)
    if accelerator.is_main_process:
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        with log_path.open("a") as f:
            f.write(json.dumps({"step": step, **{k.removeprefix("eval/"): v for k, v in scalars.items()}}) + "\n")
    return metrics


def check_push(config: TrainConfig) -> None:
    """``push_to_hub`` needs an ``owner/name`` repo id and a token: checked when training starts."""
    from .hub import check_repo_id, check_token

    if not config.hub_model_id:
        raise ValueError("push_to_hub: set hub_model_id to the repository, as owner/name")
    check_repo_id(config.hub_model_id)
    check_token()


def recipe_command(config: TrainConfig) -> list[str]:
    """``maskformer-hf train`` with a flag for every recipe field that differs from its default."""
    defaults = TrainConfig()
    command = ["maskformer-hf", "train"]
    for name, value in config.to_dict().items():
        if value != getattr(defaults, name):
            if isinstance(value, list):
                command += [f"--{name}", *map(str, value)]
            else:
                command += [f"--{name}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return command


def save_final_model(model: Any, processor: Any, folder: Path, metrics: dict[str, Any],
                     info: dict[str, Any]) -> None:
    """``save_pretrained`` of model and processor, ``metrics.json`` and ``training_info.json`` beside
    them, and the model card made from those (``maskformer-hf card`` remakes it from the same files)."""
    from .model_card import METRICS_FILE, TRAINING_INFO_FILE, write_model_card

    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / METRICS_FILE).write_text(json.dumps(_summary(metrics), indent=1))
    (folder / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=1))
    write_model_card(folder, repo_id=info["recipe"].get("hub_model_id"))


__all__ = ["check_push", "latest_checkpoint", "recipe_command", "save_checkpoint", "save_final_model", "train"]
