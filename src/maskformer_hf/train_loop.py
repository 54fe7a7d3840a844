"""The accelerate training loop behind ``scripts/train.py`` and ``maskformer-hf train``.

Runs unchanged with ``python``, ``accelerate launch`` (multi-GPU, multi-node) and ``torchrun``, on CPU
or GPU: the recipe of SPEC §5 (see :mod:`maskformer_hf.training`), mixed precision, gradient
accumulation (``no_sync`` between the steps), periodic evaluation, checkpoints written atomically and resumed exactly
(``save_state`` / ``load_state`` plus data order and augmentation that depend only on the step),
a tqdm bar, accelerate's trackers, and ``--push_to_hub``.

Layout of ``output_dir``: ``checkpoints/step_XXXXXXX/`` (accelerate state + ``trainer_state.json``),
``model/`` (the final model, processor and model card), ``log.jsonl`` (one line per logging step
and per evaluation), ``metrics.json`` (the final evaluation, written last).

A run killed at any moment (SIGKILL included, checkpoint writing included) and started again with
``resume_from="latest"`` continues from its last complete checkpoint and ends with the weights and
the log of an uninterrupted run: checkpoints and the final model are written into ``*.partial``
folders and renamed into place (a replaced folder is first moved aside as ``*.replaced``), so a
folder without a suffix is always complete; :func:`tidy_checkpoints` clears what a kill leaves.
A non-finite loss or gradient stops the run or skips the step (``nonfinite_loss``), decided by all
processes together, and never reaches the weights.
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
from .run_state import own_accelerate_state
from .training import (AugmentedDataset, EpochBatchSampler, TrainConfig, build_model_and_processor, copy_buffers,
                       create_optimizer_and_scheduler, global_num_masks, load_splits, nonfinite_outcome,
                       restore_buffers, train_transforms)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
PARTIAL, REPLACED = ".partial", ".replaced"  # a folder being written; a complete one moved aside to be replaced


def _mixed_precision(requested: str, use_cpu: bool) -> str:
    if requested == "bf16" and use_cpu and not cpu_supports_bf16():
        logger.warning("mixed_precision=bf16: this CPU has no native bf16 (it would be slower); training in fp32")
        return "no"
    return requested


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most advanced complete checkpoint under ``output_dir/checkpoints`` (None if there is none):
    a ``step_N`` folder holding ``trainer_state.json``; ``*.partial`` and ``*.replaced`` folders never count."""
    folder = Path(output_dir) / CHECKPOINTS
    done = [p for p in folder.glob("step_*") if p.name[5:].isdigit() and (p / TRAINER_STATE).is_file()]
    return max(done, key=lambda p: int(p.name[5:]), default=None)


def tidy_checkpoints(output_dir: str | Path) -> None:
    """Clear what an interrupted :func:`save_checkpoint` leaves under ``output_dir/checkpoints``:
    ``*.partial`` folders are removed; a ``*.replaced`` folder (a complete checkpoint moved aside) is
    removed where its successor is in place, else renamed back. Main process, before the others look."""
    folder = Path(output_dir) / CHECKPOINTS
    for aside in sorted(folder.glob(f"*{REPLACED}")):
        final = aside.with_name(aside.name.removesuffix(REPLACED))
        if final.exists():
            shutil.rmtree(aside)
        else:
            os.replace(aside, final)
    for partial in sorted(folder.glob(f"*{PARTIAL}")):
        shutil.rmtree(partial)


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk, so that a rename published after it never
    exposes data still in the page cache (a power cut, not only a killed process)."""
    for path in [*sorted(p for p in folder.rglob("*") if p.is_file()), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(partial: Path, final: Path) -> None:
    """Rename the complete folder ``partial`` to ``final``; an existing ``final`` is moved aside (an
    atomic rename) first and removed last, so that at every moment one of them is complete."""
    _fsync_tree(partial)
    aside = final.with_name(final.name + REPLACED)
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
    os.replace(partial, final)
    if aside.exists():
        shutil.rmtree(aside)


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, config: TrainConfig,
                    wall_time_seconds: float = 0.0, state: dict[str, Any] | None = None) -> Path:
    """``accelerator.save_state`` into ``step_N.partial``, renamed to ``step_N`` once every process has
    written its part, so that an interrupted save never leaves a checkpoint that looks valid.
    ``state``: more entries for ``trainer_state.json`` (written last, by the main process)."""
    final = output_dir / CHECKPOINTS / f"step_{step:07d}"
    partial = final.with_name(final.name + PARTIAL)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's files (random_states_<rank>.pkl) are in
    if accelerator.is_main_process:
        (partial / TRAINER_STATE).write_text(json.dumps({"step": step, "config": config.to_dict(),
                                                         "wall_time_seconds": wall_time_seconds, **(state or {})},
                                                        indent=1))
        _publish(partial, final)
    accelerator.wait_for_everyone()
    return final


class _RunLog:
    """``log.jsonl``, written by the main process only; ``lines`` counts its records, so that a
    checkpoint can record how much of the log it covers and a resumed run can cut the rest."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.lines = path, enabled, 0

    def fresh(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def resume(self, keep: int | None, step: int) -> None:
        """Keep the first ``keep`` records, those written before the checkpoint a run resumes from (a
        checkpoint without the count: the records up to its ``step``); atomic, as a rename."""
        if not self.enabled:
            return
        kept = []
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                break
            if (keep is not None and len(kept) >= keep) or (keep is None and record.get("step", 0) > step):
                break
            kept.append(line)
        temporary = self.path.with_name(self.path.name + PARTIAL)
        temporary.write_text("".join(f"{line}\n" for line in kept))
        os.replace(temporary, self.path)
        self.lines = len(kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self.lines += 1


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}


def train(config: TrainConfig, datasets: tuple | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate, save; returns the final metrics. ``datasets`` = ``(train, eval, metadata)``
    replaces loading by ``config`` (a seam for tests and notebooks). ``command``: the command line
    that launched the run, for the model card (default: the recipe as ``maskformer-hf train`` flags).

    Callable again in the same process with another mixed precision, device or seed, with the result
    of a fresh process: each call runs on accelerate state of its own (:func:`own_accelerate_state`)."""
    with own_accelerate_state():
        return _train(config, datasets, command)


def _train(config: TrainConfig, datasets: tuple | None, command: list[str] | None) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if config.push_to_hub:  # before hours of training, not after
        check_push(config)
    wall_started = time.perf_counter()

    from .data.collate import MaskFormerCollator
    from .data.transforms import SegmentationTransform

    use_cpu = config.use_cpu or not torch.cuda.is_available() or \
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=_mixed_precision(config.mixed_precision, use_cpu),
        log_with=config.log_with or None,
        project_dir=config.output_dir,
        # One schedule step per optimizer step: max_steps counts global steps (accelerate's default
        # steps the schedule once per process, which would end it after max_steps / num_processes).
        step_scheduler_with_optimizer=False,
    )
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        tidy_checkpoints(output_dir)  # what a killed run left; before any process looks for "latest"
    with accelerator.main_process_first():  # the synthetic data set is generated once, by the main process
        train_set, eval_set, metadata = datasets if datasets is not None else load_splits(config)
    model, processor = build_model_and_processor(config, metadata)

    transform = SegmentationTransform(metadata, train_transforms(config), drop_crowd=True)
    sampler = EpochBatchSampler(len(train_set), config.per_device_batch_size, config.seed,
                                accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(
        AugmentedDataset(train_set, transform, config.seed), batch_sampler=sampler, num_workers=config.num_workers,
        collate_fn=MaskFormerCollator(processor, metadata.ignore_index, return_image_ids=True),
        persistent_workers=config.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # a new iterator must not draw from the global RNG
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.log_with:
        accelerator.init_trackers("maskformer_hf", config={k: v for k, v in config.to_dict().items()
                                                          if isinstance(v, (int, float, str, bool))})

    step, skipped = 0, 0
    log = _RunLog(output_dir / "log.jsonl", enabled=accelerator.is_main_process)
    resume = latest_checkpoint(output_dir) if config.resume_from == "latest" else config.resume_from
    if resume:
        accelerator.load_state(str(resume))
        state = json.loads((Path(resume) / TRAINER_STATE).read_text())
        step, skipped = state["step"], state.get("skipped_steps", 0)
        wall_started -= state.get("wall_time_seconds", 0.0)  # the card reports the whole run's wall time
        log.resume(state.get("log_lines"), step)  # what a killed run logged after its checkpoint goes
        logger.info("resumed from %s at step %d", resume, step)
    else:
        log.fresh()
    saved_step = step if resume else None

    def checkpoint() -> None:
        save_checkpoint(accelerator, output_dir, step, config, time.perf_counter() - wall_started,
                        state={"skipped_steps": skipped, "log_lines": log.lines})

    accumulation = config.gradient_accumulation_steps
    batches_per_epoch = len(sampler)
    reduce_sum = lambda t: accelerator.reduce(t, reduction="sum")  # noqa: E731
    guard = _NonFiniteGuard(model, accelerator, config)
    bar = tqdm(total=config.max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    model.train()
    running, started = [], time.perf_counter()
    stop = min(config.max_steps, step + config.run_steps) if config.run_steps else config.max_steps
    consumed = step * accumulation  # batches seen so far by each process; data order depends on it only
    while step < stop:
        sampler.set_epoch(consumed // batches_per_epoch, start=consumed % batches_per_epoch)
        for batch in loader:
            if consumed % accumulation == 0:
                guard.begin_step()
            consumed += 1
            sync = consumed % accumulation == 0
            image_ids = batch.pop("image_ids")
            batch = _to_device(batch, accelerator.device)
            num_masks = global_num_masks(batch["class_labels"], reduce_sum, accelerator.num_processes)
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = model(**batch, num_masks=num_masks.to(accelerator.device))
                accelerator.backward(out.loss / accumulation)
            guard.add(out.loss.detach(), image_ids)
            if not sync:
                continue
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) \
                if config.max_grad_norm else None
            if guard.step_is_finite(step + 1, grad_norm):
                optimizer.step()
                running.extend(guard.losses)
            else:  # nonfinite_loss="skip" (with "stop" the guard has raised)
                skipped += 1
                guard.undo(optimizer, unscaled=bool(config.max_grad_norm))
            scheduler.step()  # a skipped step still counts: data order and schedule follow the step only
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % config.logging_every == 0 or step == config.max_steps:
                record: dict[str, Any] = {"step": step}
                if running:  # every process skips the same steps: all have losses here, or none has
                    record["loss"] = reduce_sum(torch.stack(running).mean()).item() / accelerator.num_processes
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                record.update(lr=scheduler.get_last_lr()[0], seconds=time.perf_counter() - started)
                if skipped:
                    record["skipped_steps"] = skipped
                running.clear()
                accelerator.log({f"train/{k}": v for k, v in record.items() if k in ("loss", "lr", "skipped_steps")},
                                step=step)
                log.write(record)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                _evaluate_and_log(accelerator, model, processor, eval_set, metadata, config, step, log)
            if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                checkpoint()
                saved_step = step
            if step >= stop:
                break
    bar.close()
    if saved_step != step:  # (a run resumed at its last step has nothing new to save)
        checkpoint()
    if step < config.max_steps:  # an intermediate invocation (run_steps): resume with resume_from="latest"
        accelerator.end_training()
        return {"step": step}
    metrics = _evaluate_and_log(accelerator, model, processor, eval_set, metadata, config, step, log)
    if accelerator.is_main_process:
        info = training_info(config, wall_time_seconds=time.perf_counter() - wall_started, steps=step,
                             num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
                             command=command or recipe_command(config))
        save_final_model(accelerator.unwrap_model(model), processor, output_dir / "model", metrics, info)
        (output_dir / "metrics.json").write_text(json.dumps(_summary(metrics), indent=1))  # last: the run is done
        if config.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(output_dir / "model", config.hub_model_id)
    accelerator.end_training()
    return metrics


class _NonFiniteGuard:
    """Keeps non-finite losses and gradients out of the weights (``TrainConfig.nonfinite_loss``).

    Per optimizer step: :meth:`begin_step` (``skip``: a copy of the buffers, e.g. BatchNorm running
    statistics, which a NaN forward pass corrupts), :meth:`add` per micro-batch, then
    :meth:`step_is_finite`, a decision all processes take together (one all-reduce of a flag; the
    offending image ids are gathered only when it is raised): True, or False for ``skip`` (then
    :meth:`undo` before the step is counted), or :class:`NonFiniteLossError` on every process for
    ``stop``. Under fp16 the grad scaler already skips steps whose gradients overflow, so only losses
    are checked there.
    """

    def __init__(self, model: torch.nn.Module, accelerator: Any, config: TrainConfig) -> None:
        self.model, self.accelerator, self.mode = model, accelerator, config.nonfinite_loss
        self.scaled = accelerator.scaler is not None
        self.losses: list[torch.Tensor] = []
        self.image_ids: list[list] = []
        self.saved_buffers: list[torch.Tensor] = []

    def begin_step(self) -> None:
        self.losses, self.image_ids = [], []
        if self.mode == "skip":
            self.saved_buffers = copy_buffers(self.model)

    def add(self, loss: torch.Tensor, image_ids: list) -> None:
        self.losses.append(loss)
        self.image_ids.append(list(image_ids))

    def step_is_finite(self, step: int, grad_norm: torch.Tensor | None) -> bool:
        finite_losses = torch.stack([torch.isfinite(loss) for loss in self.losses]).cpu()  # (accumulation,)
        finite_grads = True
        if not self.scaled:
            if grad_norm is None:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            finite_grads = bool(torch.isfinite(grad_norm))
        local_fault = float(not (finite_losses.all() and finite_grads))
        faults = self.accelerator.reduce(torch.tensor(local_fault, device=self.accelerator.device), reduction="sum")
        if faults.item() == 0:
            return True
        report = {"loss": [i for ids, ok in zip(self.image_ids, finite_losses.tolist()) if not ok for i in ids],
                  "batch": [i for ids in self.image_ids for i in ids]}
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            reports = gather_object([report])
        else:
            reports = [report]
        loss_ids = [i for r in reports for i in r["loss"]]
        what, ids = ("loss", loss_ids) if loss_ids else ("gradient", [i for r in reports for i in r["batch"]])
        nonfinite_outcome(self.mode, step, ids, what, logger if self.accelerator.is_main_process else None)
        return False

    def undo(self, optimizer: Any, unscaled: bool) -> None:
        """Drop the step's gradients and restore the buffers its forward passes changed."""
        optimizer.zero_grad(set_to_none=True)
        restore_buffers(self.model, self.saved_buffers)
        if self.scaled and unscaled:  # clip_grad_norm_ unscaled the gradients: the scaler expects update()
            self.accelerator.scaler.update()


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


def _evaluate_and_log(accelerator, model, processor, dataset, metadata, config, step, log: _RunLog) -> dict[str, Any]:
    from accelerate.utils import gather_object

    metrics = evaluate_segmentation(
        accelerator.unwrap_model(model), processor, dataset, metadata, batch_size=config.per_device_batch_size,
        tta=config.tta, rank=accelerator.process_index, num_processes=accelerator.num_processes,
        reduce_sum=lambda t: accelerator.reduce(t, reduction="sum"), progress=accelerator.is_local_main_process,
        gather_object=lambda obj: gather_object([obj]),
    )
    scalars = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))
               and not (isinstance(v, float) and math.isnan(v))}
    accelerator.log(scalars, step=step)
    if accelerator.is_main_process:
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
    log.write({"step": step, **{k.removeprefix("eval/"): v for k, v in scalars.items()}})
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
    them, and the model card made from those (``maskformer-hf card`` remakes it from the same files).
    Written into ``folder.partial`` and renamed into place: ``folder`` is always complete."""
    from .model_card import METRICS_FILE, TRAINING_INFO_FILE, write_model_card

    folder = Path(folder)
    partial = folder.with_name(folder.name + PARTIAL)
    if partial.exists():
        shutil.rmtree(partial)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / METRICS_FILE).write_text(json.dumps(_summary(metrics), indent=1))
    (partial / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=1))
    if (folder / "README.md").is_file():  # what a user wrote outside the generated block stays
        shutil.copy2(folder / "README.md", partial / "README.md")
    write_model_card(partial, repo_id=info["recipe"].get("hub_model_id") or str(folder))  # the card names `folder`
    _publish(partial, folder)


__all__ = ["check_push", "latest_checkpoint", "recipe_command", "save_checkpoint", "save_final_model",
           "tidy_checkpoints", "train"]
