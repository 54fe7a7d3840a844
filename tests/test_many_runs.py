"""One process, many runs: a notebook trains in fp32, then in bf16, then with another seed or engine,
and every run gives what it gives in a fresh process (accelerate's process-wide state is each run's
own, :mod:`maskformer_hf.run_state`). Native bf16 is forced on and off (``MASKFORMER_HF_NATIVE_BF16``)
so that these tests take the same path on every CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskformer_hf.precision import NATIVE_BF16_ENV
from maskformer_hf.run_state import own_accelerate_state
from maskformer_hf.train_loop import train
from maskformer_hf.trainer import train_with_trainer
from maskformer_hf.training import TrainConfig

RECIPE = dict(dataset="synthetic", synthetic_num_train=8, synthetic_num_val=2, synthetic_size=64,
              augmentation="ade20k", crop_size=64, model="test-tiny",
              pretrained_backbone=False, per_device_batch_size=2, learning_rate=1e-3, num_workers=0,
              logging_every=1, max_steps=3, seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True)
def no_compile(monkeypatch):
    monkeypatch.setenv("MASKFORMER_HF_COMPILE", "0")


def run(train_fn, data_dir: str, output_dir: Path, **fields) -> dict[str, torch.Tensor]:
    """Train with `train_fn`; the final weights."""
    train_fn(TrainConfig(**{**RECIPE, "data_dir": data_dir, "output_dir": str(output_dir), **fields}))
    return load_file(output_dir / "model" / "model.safetensors")


def precision_of(output_dir: Path) -> str:
    return json.loads((output_dir / "model" / "training_info.json").read_text())["hardware"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.system
def test_fp32_then_bf16_then_another_seed_in_one_process_as_in_fresh_ones(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # a CPU with native bf16 (AMX, AVX512-BF16)
    first = run(train, data_dir, tmp_path / "fp32")
    bf16 = run(train, data_dir, tmp_path / "bf16", mixed_precision="bf16")  # failed: AcceleratorState initialised
    other_seed = run(train, data_dir, tmp_path / "seed1", seed=1)
    again = run(train, data_dir, tmp_path / "fp32-again")
    assert "mixed precision bf16" in precision_of(tmp_path / "bf16")
    assert "mixed precision no" in precision_of(tmp_path / "fp32-again")
    assert same(first, again)  # nothing of the bf16 run or the other seed stayed behind
    assert not same(first, bf16) and not same(first, other_seed)
    # The bf16 run, started after an fp32 one, equals a bf16 run in a fresh process.
    script = ("import json, sys; from maskformer_hf.train_loop import train; from maskformer_hf.training import "
              "TrainConfig; train(TrainConfig(**json.loads(sys.argv[1])))")
    fields = {**RECIPE, "data_dir": data_dir, "output_dir": str(tmp_path / "fresh"), "mixed_precision": "bf16"}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(fields)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert same(bf16, load_file(tmp_path / "fresh" / "model" / "model.safetensors"))


def test_bf16_falls_back_to_fp32_without_native_bf16(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")  # an AVX2-only CPU: bf16 would be emulated, far slower
    fp32 = run(train, data_dir, tmp_path / "fp32")
    requested_bf16 = run(train, data_dir, tmp_path / "bf16", mixed_precision="bf16")
    assert "mixed precision no" in precision_of(tmp_path / "bf16")
    assert same(fp32, requested_bf16)


def test_trainer_route_twice_with_other_precisions(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    first = run(train_with_trainer, data_dir, tmp_path / "fp32")
    bf16 = run(train_with_trainer, data_dir, tmp_path / "bf16", mixed_precision="bf16")
    again = run(train_with_trainer, data_dir, tmp_path / "fp32-again")
    assert "mixed precision bf16" in precision_of(tmp_path / "bf16")
    assert same(first, again) and not same(first, bf16)
    # and the accelerate loop after the Trainer route, in the same process
    loop = run(train, data_dir, tmp_path / "loop", mixed_precision="bf16")
    assert "mixed precision bf16" in precision_of(tmp_path / "loop") and loop.keys() == first.keys()


def test_a_callers_accelerator_keeps_its_state(tmp_path, data_dir, monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    with own_accelerate_state():  # the test's own Accelerator leaves nothing behind for the other tests
        accelerator = Accelerator(mixed_precision="no", cpu=True)
        run(train, data_dir, tmp_path / "bf16", mixed_precision="bf16")
        assert accelerator.mixed_precision == "no" and AcceleratorState().mixed_precision == "no"
        assert accelerator.device.type == "cpu"


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
def test_native_bf16_can_be_forced(monkeypatch, value, expected):
    from maskformer_hf.precision import cpu_supports_bf16

    monkeypatch.setenv(NATIVE_BF16_ENV, value)
    assert cpu_supports_bf16() is expected
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=NATIVE_BF16_ENV):
        cpu_supports_bf16()
