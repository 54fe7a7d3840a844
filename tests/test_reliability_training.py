"""Training faults lose nothing, and reduced precision cannot break the matcher.

* A real ``maskformer-hf train`` process (and a ``torchrun`` pair of them) is SIGKILLed several times
  at hook points (inside a checkpoint write, at a seeded step, inside the final save), and restarted with
  ``--resume_from latest`` each time: it goes on from the last complete checkpoint (every checkpoint
  that looks complete is), and its final weights and log equal an uninterrupted run's, bit for bit.
* A NaN injected for one image is reported by its id: skipped (no optimizer step, buffers restored,
  the weights of the step before) or stopped with :class:`NonFiniteLossError`.
* bf16 autocast trains 50 steps with finite losses and fp32 matching costs; fp16/bf16 logits of
  ±inf, NaN and huge values never make the cost matrix infeasible.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_learns
from maskformer_hf import matching
from maskformer_hf.precision import NATIVE_BF16_ENV
from maskformer_hf.train_loop import latest_checkpoint, tidy_checkpoints, train
from maskformer_hf.training import EpochBatchSampler, NonFiniteLossError, TrainConfig, load_splits

RECIPE = dict(dataset="synthetic", synthetic_num_train=16, synthetic_num_val=2, synthetic_size=64,
              augmentation="ade20k", crop_size=64, model="test-tiny",
              pretrained_backbone=False, per_device_batch_size=2, learning_rate=1e-3, num_workers=0,
              logging_every=1)
CHILD_ENV = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", MASKFORMER_HF_COMPILE="0",
                 TQDM_DISABLE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
SEED = 15  # of the kill moments


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """The synthetic data set, generated once (16 training, 2 validation images of 64x64)."""
    folder = str(tmp_path_factory.mktemp("synthetic"))
    load_splits(TrainConfig(**RECIPE, data_dir=folder))
    return folder


def flags(values: dict) -> list[str]:
    out = []
    for name, value in values.items():
        out += [f"--{name}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


USED_PORTS: set[int] = set()


def free_port() -> int:
    """A free port not handed out before (two runs start side by side; each binds its port seconds later)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in USED_PORTS:
            USED_PORTS.add(port)
            return port


WORKER = Path(__file__).parent / "workers" / "train_with_fault.py"  # maskformer-hf train, killed at a hook


def train_command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, str(WORKER)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), str(WORKER)]


def launch(processes: int, recipe: dict, log: Path, fault: str | None = None) -> subprocess.Popen:
    """A training launch; ``fault`` (tests/workers/train_with_fault.py) names where it kills itself."""
    env = dict(CHILD_ENV, **({"MASKFORMER_HF_TEST_FAULT": fault} if fault else {}))
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([*train_command(processes), *flags(recipe)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the process and all its descendants (torchrun starts its workers in sessions of their own)."""
    try:
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.wait(timeout=30)


def partial_checkpoint(run: Path):
    folder = run / "checkpoints"

    def check() -> bool:
        try:
            return any(entry.name.endswith(".partial") for entry in os.scandir(folder))
        except FileNotFoundError:
            return False
    return check


def check_complete_checkpoints(run: Path, processes: int, keys: set[str]) -> list[int]:
    """Every checkpoint ``latest_checkpoint`` could take is complete and loads: its state, weights,
    optimizer, schedule and every process's random state. Returns their steps."""
    steps = []
    for folder in sorted((run / "checkpoints").iterdir()):
        if not (folder.name[5:].isdigit() and (folder / "trainer_state.json").is_file()):
            continue  # never taken: *.partial, *.replaced
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["step"] == int(folder.name[5:]), folder
        assert set(load_file(folder / "model.safetensors")) == keys, folder
        optimizer = torch.load(folder / "optimizer.bin", weights_only=True)
        assert optimizer["state"] and all(s["step"] == state["step"] for s in optimizer["state"].values()), folder
        assert torch.load(folder / "scheduler.bin", weights_only=True)["last_epoch"] == state["step"], folder
        for rank in range(processes):  # torch.save archives (pickled RNG states: checked, not unpickled)
            with zipfile.ZipFile(folder / f"random_states_{rank}.pkl") as archive:
                assert archive.testzip() is None and any(n.endswith("data.pkl") for n in archive.namelist())
        steps.append(state["step"])
    latest = latest_checkpoint(run)
    assert (latest is None and not steps) or int(latest.name[5:]) == max(steps)
    return steps


def log_records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "log.jsonl").read_text().splitlines()]


def kill_and_resume(tmp_path: Path, data_dir: str, processes: int, recipe: dict, plan: list[str]) -> dict:
    """Run ``recipe`` uninterrupted (alongside) and again with a SIGKILL at each moment of ``plan``, each
    restart with ``--resume_from latest``; then compare. The kills come from inside the process, at hook
    points (tests/workers/train_with_fault.py), so each lands where the plan says whatever the load:
    "checkpoint": inside the launch's second checkpoint write (its files in ``step_N.partial``);
    "random": as a seeded optimizer step of the launch begins, after its first checkpoint;
    "final": inside the final model's write. Returns the figures."""
    rng = random.Random(SEED + processes)
    reference_run, run = tmp_path / "uninterrupted", tmp_path / "killed"
    common = {**recipe, "data_dir": data_dir, "resume_from": "latest"}
    reference = launch(processes, {**common, "output_dir": str(reference_run)}, tmp_path / "uninterrupted.txt")
    save_every = recipe["save_every"]
    proc = None
    try:
        keys = None
        kills, during_checkpoint, resumed_at, launches = [], 0, [], 0
        plan = list(plan)
        while True:
            launches += 1
            output = tmp_path / f"launch{launches}.txt"
            moment = plan.pop(0) if plan else None
            fault = {"checkpoint": "checkpoint:2", "random": f"step:{rng.randint(save_every + 1, 2 * save_every)}",
                     "final": "final", None: None}[moment]
            proc = launch(processes, {**common, "output_dir": str(run)}, output, fault)
            code = proc.wait(timeout=600)
            if moment is None:
                assert code == 0, output.read_text()[-4000:]
                break
            assert code != 0, f"{fault}: the launch finished without reaching its kill\n{output.read_text()[-2000:]}"
            kill_all(proc)  # a torchrun worker its agent has not taken down yet
            landed_in_write = partial_checkpoint(run)()
            assert landed_in_write == (moment == "checkpoint"), (moment, landed_in_write)
            during_checkpoint += landed_in_write
            if moment == "final":  # the final model was being written: only its partial folder exists
                assert (run / "model.partial").is_dir() and not (run / "model").exists()
            if keys is None and latest_checkpoint(run):
                keys = set(load_file(latest_checkpoint(run) / "model.safetensors"))
            steps = check_complete_checkpoints(run, processes, keys) if keys else []
            kills.append({"moment": fault, "during_checkpoint_write": landed_in_write,
                          "latest_complete_step": max(steps, default=0)})
            resumed_at.append(max(steps, default=0))
    except BaseException:  # a failing test leaves no training process behind
        for leftover in (proc, reference):
            if leftover is not None and leftover.poll() is None:
                kill_all(leftover)
        raise
    # Each restart went on from the last complete checkpoint of the run killed before it.
    starts = [int(m.group(1)) if (m := re.search(r"resumed from \S+ at step (\d+)", (tmp_path / f"launch{i}.txt")
                                                   .read_text())) else 0 for i in range(2, launches + 1)]
    assert starts == resumed_at
    assert reference.wait(timeout=300) == 0, (tmp_path / "uninterrupted.txt").read_text()[-4000:]
    # Nothing half-written is left, and the result is the uninterrupted run's, bit for bit.
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if "." in p.name and p.is_dir()]
    a = load_file(reference_run / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 50
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, unequal[:5]
    assert log_records(run) == log_records(reference_run)
    assert [r["step"] for r in log_records(run) if "loss" in r] == list(range(1, recipe["max_steps"] + 1))
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference_run / "metrics.json").read_text())
    return {"kills": len(kills), "during_checkpoint_write": during_checkpoint, "launches": launches,
            "detail": kills}


# MASKFORMER_HF_KILLS=N: a stress run with about N kills per test instead of 3 and 2 (docs/reliability.md).
STRESS_KILLS = int(os.environ.get("MASKFORMER_HF_KILLS", "0"))


def kill_plan(default: list[str], max_steps: int, save_every: int) -> tuple[list[str], int]:
    """The kill moments and the run length: the default, or for a stress run alternating checkpoint and
    random kills (then the final one), with 3 steps of run per kill."""
    if STRESS_KILLS <= len(default):
        return default, max_steps
    plan = (["checkpoint", "random"] * STRESS_KILLS)[: STRESS_KILLS - 1] + ["final"]
    return plan, max(max_steps, 3 * save_every * len(plan))


@pytest.mark.system
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_weights(tmp_path, data_dir, record_property):
    plan, max_steps = kill_plan(["checkpoint", "random", "final"], 24, 3)
    recipe = {**RECIPE, "max_steps": max_steps, "save_every": 3}
    figures = kill_and_resume(tmp_path, data_dir, 1, recipe, plan)
    record_property("kills", figures)
    print(f"single process: {figures['kills']} SIGKILLs survived, {figures['during_checkpoint_write']} during a "
          f"checkpoint write: {figures['detail']}")
    assert figures["kills"] == len(plan) and figures["during_checkpoint_write"] == plan.count("checkpoint")


@pytest.mark.system
def test_sigkilled_torchrun_run_resumes_to_the_uninterrupted_weights(tmp_path, data_dir, record_property):
    # One kill, inside a checkpoint write (where two processes must agree; a kill at a random step is the
    # single-process test's); the stress run alternates both.
    plan, max_steps = kill_plan(["checkpoint"], 16, 2)
    recipe = {**RECIPE, "max_steps": max_steps, "save_every": 2}
    figures = kill_and_resume(tmp_path, data_dir, 2, recipe, plan)
    record_property("kills", figures)
    print(f"torchrun, 2 processes: {figures['kills']} SIGKILLs survived, {figures['during_checkpoint_write']} "
          f"during a checkpoint write: {figures['detail']}")
    assert figures["kills"] == len(plan) and figures["during_checkpoint_write"] == plan.count("checkpoint")
    # The uninterrupted 2-process run is the check of a plain torchrun run too: it learns and scores.
    reference = tmp_path / "uninterrupted"
    assert_learns(reference)
    assert {"mean_iou", "pq"} <= set(json.loads((reference / "metrics.json").read_text()))
    assert (reference / "model" / "config.json").is_file()
    # One schedule step per global step, as with one process (not one per process).
    lrs = [r["lr"] for r in log_records(tmp_path / "killed") if "lr" in r]
    assert lrs == pytest.approx([1e-3 * (1 - step / max_steps) ** 0.9 for step in range(1, max_steps + 1)], rel=1e-6)


def test_interrupted_renames_leave_a_complete_checkpoint(tmp_path):
    """The moments a random kill rarely hits: between moving the old step_N aside and renaming the new
    one in (the old one comes back), after both (the old one goes), inside a ``*.partial`` folder."""
    checkpoints = tmp_path / "checkpoints"
    for name in ("step_0000002", "step_0000004.replaced", "step_0000006", "step_0000006.replaced",
                 "step_0000008.partial"):
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "trainer_state.json").write_text(json.dumps({"step": int(name[5:12])}))
    assert latest_checkpoint(tmp_path).name == "step_0000006"  # never a *.partial nor a *.replaced
    tidy_checkpoints(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000002", "step_0000004", "step_0000006"]


# --- non-finite losses -----------------------------------------------------------------------------
SENTINEL = 1234.5  # a finite pixel value no normalised image holds


def poison(monkeypatch, module: str, image_id: str) -> dict:
    """``image_id``'s pixels become SENTINEL in every batch, and the backbone's first convolution turns
    a training batch holding them into NaN (which then also goes through BatchNorm statistics).
    Returns the count of such batches."""
    import maskformer_hf.data.collate as collate

    state = {"poisoned_batches": 0}

    class PoisonedCollator(collate.MaskFormerCollator):
        def __call__(self, examples):
            batch = super().__call__(examples)
            for b, example in enumerate(examples):
                if example.get("image_id") == image_id:
                    batch["pixel_values"][b] = SENTINEL
                    state["poisoned_batches"] += 1
            return batch

    target = __import__(f"maskformer_hf.{module}", fromlist=["build_model_and_processor"])
    build = target.build_model_and_processor

    def nan_on_sentinel(module, inputs, output):
        if module.training and bool((inputs[0] == SENTINEL).any()):
            return output * float("nan")
        return None

    def build_poisoned(config, metadata):
        model, processor = build(config, metadata)
        first_conv = next(m for m in model.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(nan_on_sentinel)
        return model, processor

    monkeypatch.setattr(collate, "MaskFormerCollator", PoisonedCollator)
    monkeypatch.setattr(target, "build_model_and_processor", build_poisoned)
    return state


def steps_holding(index: int, num_examples: int, batch_size: int, seed: int, steps: int) -> list[int]:
    """The (1-based) steps whose batch holds example ``index``, in the loop's data order."""
    sampler, found, step = EpochBatchSampler(num_examples, batch_size, seed), [], 0
    for epoch in range(steps // len(sampler) + 1):
        sampler.set_epoch(epoch)
        for batch in sampler:
            step += 1
            if step <= steps and index in [i for _, i in batch]:
                found.append(step)
    return found


def nan_recipe(tmp_path, data_dir, **overrides) -> TrainConfig:
    return TrainConfig(**{**RECIPE, "synthetic_num_train": 16, "data_dir": data_dir, "max_steps": 10,
                          "save_every": 1, "output_dir": str(tmp_path / "run"), **overrides})


@pytest.fixture
def compile_off(monkeypatch):
    """In-process training as the child processes run: uncompiled, one thread (two threads on a
    2-core machine shared with other work spend most of their time waiting for each other)."""
    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nonfinite_loss_skip_keeps_the_weights_of_the_step_before(tmp_path, data_dir, monkeypatch, caplog,
                                                                   compile_off):
    config = nan_recipe(tmp_path, data_dir, nonfinite_loss="skip")
    train_set, _, _ = load_splits(config)
    index = 5
    image_id = train_set[index]["image_id"]
    expected = steps_holding(index, len(train_set), config.per_device_batch_size, config.seed, config.max_steps)
    assert expected and expected[0] > 1  # (so that there is a step before it to compare with)
    state = poison(monkeypatch, "train_loop", image_id)
    with caplog.at_level(logging.WARNING, logger="maskformer_hf.train_loop"):
        metrics = train(config)
    assert "mean_iou" in metrics  # training went to the end
    assert state["poisoned_batches"] == len(expected)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == len(expected) and all(f"'{image_id}'" in w and "skipped" in w for w in warnings)
    run = Path(config.output_dir)
    final = json.loads((run / "checkpoints" / f"step_{config.max_steps:07d}" / "trainer_state.json").read_text())
    assert final["skipped_steps"] == len(expected)
    records = log_records(run)
    assert [r["step"] for r in records if "lr" in r and "loss" not in r] == expected
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    for step in expected:  # a skipped step leaves weights and buffers (BatchNorm statistics) exactly as they were
        before = load_file(run / "checkpoints" / f"step_{step - 1:07d}" / "model.safetensors")
        after = load_file(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before)
    optimizer = torch.load(run / "checkpoints" / f"step_{config.max_steps:07d}" / "optimizer.bin", weights_only=True)
    assert {s["step"].item() for s in optimizer["state"].values()} == {config.max_steps - len(expected)}
    weights = load_file(run / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    running_means = [k for k in weights if k.endswith("running_mean")]
    assert running_means  # the poisoned forward pass went through BatchNorm, whose statistics were restored


def test_nonfinite_loss_stop_names_the_step_and_the_image(tmp_path, data_dir, monkeypatch, compile_off):
    config = nan_recipe(tmp_path, data_dir)  # the default: stop
    assert config.nonfinite_loss == "stop"
    train_set, _, _ = load_splits(config)
    index = 5
    image_id = train_set[index]["image_id"]
    first = steps_holding(index, len(train_set), config.per_device_batch_size, config.seed, config.max_steps)[0]
    poison(monkeypatch, "train_loop", image_id)
    with pytest.raises(NonFiniteLossError, match=rf"step {first}: non-finite loss on images \[.*'{image_id}'") as error:
        train(config)
    assert error.value.step == first and image_id in error.value.image_ids
    assert latest_checkpoint(config.output_dir).name == f"step_{first - 1:07d}"  # nothing saved after the fault


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_trainer_route_skips_or_stops_a_nonfinite_step(mode, tmp_path, data_dir, monkeypatch, caplog, compile_off):
    from maskformer_hf.trainer import train_with_trainer

    config = nan_recipe(tmp_path, data_dir, nonfinite_loss=mode, max_steps=8, save_every=0)
    train_set, _, _ = load_splits(config)
    image_id = train_set[3]["image_id"]  # (not a validation image's id)
    state = poison(monkeypatch, "trainer", image_id)
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=rf"non-finite loss on images \[.*'{image_id}'"):
            train_with_trainer(config)
        assert state["poisoned_batches"] == 1 and not (Path(config.output_dir) / "model").exists()
        return
    with caplog.at_level(logging.WARNING, logger="maskformer_hf.trainer"):
        metrics = train_with_trainer(config)
    assert "eval_mean_iou" in metrics and state["poisoned_batches"] == 1  # 8 steps of 2: each image once
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and f"'{image_id}'" in warnings[0] and "skipped" in warnings[0]
    weights = load_file(Path(config.output_dir) / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


class TwoProcesses:
    """An accelerator of process 0 of 2 whose partner process reports ``partner_faults`` non-finite steps
    and the batch ``partner_report`` (what the all-reduce and the gather would bring)."""

    num_processes, is_main_process, device, scaler = 2, True, torch.device("cpu"), None

    def __init__(self, partner_faults: int) -> None:
        self.partner_faults = partner_faults

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + self.partner_faults


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_nonfinite_decision_is_taken_by_all_processes_together(mode, monkeypatch, caplog):
    """A process whose own batch is fine skips (or stops) with its partner, naming the partner's images."""
    import accelerate.utils

    from maskformer_hf.train_loop import _NonFiniteGuard

    partner = {"loss": ["partner-7"], "batch": ["partner-7", "partner-8"]}
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objects: [*objects, partner])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    optimizer = torch.optim.AdamW(model.parameters())
    for partner_faults in (0, 1):
        guard = _NonFiniteGuard(model, TwoProcesses(partner_faults), TrainConfig(nonfinite_loss=mode))
        guard.begin_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = model(torch.randn(8, 3)).square().mean()
        loss.backward()
        guard.add(loss.detach(), ["mine-1", "mine-2"])
        assert torch.isfinite(loss)
        if not partner_faults:
            assert guard.step_is_finite(5, grad_norm=None)  # nobody had a fault: the step is taken
            continue
        if mode == "stop":
            with pytest.raises(NonFiniteLossError, match=r"step 5: non-finite loss on images \['partner-7'\]"):
                guard.step_is_finite(5, grad_norm=None)
            continue
        with caplog.at_level(logging.WARNING, logger="maskformer_hf.train_loop"):
            assert not guard.step_is_finite(5, grad_norm=None)
        assert "partner-7" in caplog.text and "mine-1" not in caplog.text
        guard.undo(optimizer, unscaled=False)
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats restored


def test_nonfinite_loss_field_is_checked():
    from maskformer_hf.cli import config_from_args, train_parser

    with pytest.raises(ValueError, match=r"nonfinite_loss.*'ignore'"):
        TrainConfig(nonfinite_loss="ignore")
    assert config_from_args(train_parser().parse_args(["--nonfinite_loss", "skip"])).nonfinite_loss == "skip"
    assert config_from_args(train_parser().parse_args([])).nonfinite_loss == "stop"


# --- numerics --------------------------------------------------------------------------------------
def test_bf16_training_is_finite_and_matches_in_fp32(tmp_path, data_dir, monkeypatch, compile_off):
    import maskformer_hf.loss_maskformer as loss_module

    seen = {"logits": set(), "costs": set(), "solver": set(), "finite": True}
    match, solve, lsa = loss_module.hungarian_match, matching.solve_assignment, matching.linear_sum_assignment

    def spy_match(class_logits, mask_logits, *args, **kwargs):
        seen["logits"].add((class_logits.dtype, mask_logits.dtype))
        return match(class_logits, mask_logits, *args, **kwargs)

    def spy_solve(cost):
        seen["costs"].add(cost.dtype)
        return solve(cost)

    def spy_lsa(cost):
        seen["solver"].add(cost.dtype)
        seen["finite"] &= bool(np.isfinite(cost).all())
        return lsa(cost)

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # the bf16 path on every CPU (emulated where it is not native)
    monkeypatch.setattr(loss_module, "hungarian_match", spy_match)
    monkeypatch.setattr(matching, "solve_assignment", spy_solve)
    monkeypatch.setattr(matching, "linear_sum_assignment", spy_lsa)
    config = TrainConfig(**{**RECIPE, "data_dir": data_dir, "max_steps": 50, "mixed_precision": "bf16",
                            "output_dir": str(tmp_path / "run")})
    train(config)
    losses = [r["loss"] for r in log_records(Path(config.output_dir)) if "loss" in r]
    assert len(losses) == 50 and all(np.isfinite(losses))
    assert seen["logits"] == {(torch.bfloat16, torch.bfloat16)}  # autocast was on ...
    # ... but not for the matcher: fp32 costs, solved in float64, all finite
    assert seen["costs"] == {torch.float32} and seen["solver"] == {np.dtype("float64")} and seen["finite"]
    info = json.loads((Path(config.output_dir) / "model" / "training_info.json").read_text())
    assert "mixed precision bf16" in info["hardware"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e4, 6e4, 3e38])
@pytest.mark.parametrize("num_points", [0, 16])
def test_extreme_low_precision_logits_never_make_the_cost_infeasible(dtype, value, num_points, monkeypatch):
    solver_inputs = []
    lsa = matching.linear_sum_assignment
    monkeypatch.setattr(matching, "linear_sum_assignment", lambda cost: solver_inputs.append(cost) or lsa(cost))
    generator = torch.Generator().manual_seed(0)
    layers, batch, queries, classes, segments = 2, 3, 6, 5, 4
    class_logits = torch.randn(layers, batch, queries, classes + 1, generator=generator).to(dtype)
    mask_logits = torch.randn(layers, batch, queries, 8, 8, generator=generator).to(dtype)
    class_logits[:, 0] = value  # image 0: every logit extreme
    mask_logits[:, 0] = value
    class_logits[:, 1, ::2] = value  # image 1: half the queries, with the opposite sign in one pixel
    mask_logits[:, 1, 1::2] = value
    mask_logits[:, 1, 1, 0, 0] = -value
    class_logits[:, 2, :, 0] = value  # image 2: one class logit of every query, and its mask logits' top row
    mask_logits[:, 2, :, 0] = value
    mask_labels = [(torch.rand(segments, 16, 16, generator=generator) > 0.5).float() for _ in range(batch)]
    class_labels = [torch.tensor([0, 1, 2, 0])] * batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matches = matching.hungarian_match(class_logits, mask_logits, mask_labels, class_labels,
                                           num_points=num_points, generator=generator)
    assert len(solver_inputs) == layers * batch and all(np.isfinite(c).all() for c in solver_inputs)
    for layer in matches:
        for queries_taken, segments_taken in layer:
            assert sorted(segments_taken.tolist()) == list(range(segments))  # every segment gets a query
            assert len(set(queries_taken.tolist())) == segments
            assert 0 <= queries_taken.min() <= queries_taken.max() < queries


def test_nan_and_infinite_costs_rank_last():
    """NaN and +inf mean "worst pair", -inf "best"; absurdly large finite costs never overflow the solver."""
    cost = torch.tensor([[float("nan"), 0.5], [0.2, float("inf")], [0.3, 0.4]])
    rows, cols = matching.solve_assignment(cost)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 2}
    rows, cols = matching.solve_assignment(torch.tensor([[0.0, float("-inf")], [0.0, 0.0], [1e308, -1e308]]))
    assert len(set(cols.tolist())) == 2 and dict(zip(cols.tolist(), rows.tolist()))[1] in (0, 2)
