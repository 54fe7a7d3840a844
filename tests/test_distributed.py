"""Data parallelism: 2 CPU processes give the gradients of one process on the whole batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import distributed_case

pytestmark = pytest.mark.system

WORKER = Path(__file__).parent / "workers" / "distributed_gradients.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_whole_batch_gradients(tmp_path):
    out = tmp_path / "grads.pt"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = torch.load(out)

    model, pixel_values, mask_labels, class_labels = distributed_case()
    model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # Every parameter takes part (a parameter without a gradient would stall DDP's reduction).
    assert len(single) == len(list(model.parameters())) and distributed.keys() == single.keys()
    for name, grad in single.items():
        # 1e-5 of the gradient's scale (float32 sums in another order give ~1e-6 of it)
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(distributed[name], grad, atol=1e-5 * scale, rtol=0, msg=name)
