"""``maskformer-hf train`` that SIGKILLs itself at a named point: the deterministic kill moments of
tests/test_reliability_training.py (a timer's kill lands wherever the machine's load puts it).

    MASKFORMER_HF_TEST_FAULT=checkpoint:2 python tests/workers/train_with_fault.py --config ...
    MASKFORMER_HF_TEST_FAULT=step:5 torchrun --nproc_per_node 2 tests/workers/train_with_fault.py ...

``checkpoint:N``: inside this launch's N-th checkpoint write, once every process has written its state
into ``step_N.partial`` and before the folder is published. ``step:N``: as this launch's N-th optimizer
step begins (its forward and backward done). ``final``: inside the final model's write, its weights in
``model.partial`` and nothing published. The main process kills itself; a ``torchrun`` agent then
takes the other workers down. Without the variable, this is ``maskformer-hf train``.
"""

from __future__ import annotations

import os
import signal
import sys

import accelerate
from accelerate.optimizer import AcceleratedOptimizer

from maskformer_hf.cli import main
from maskformer_hf.modeling_maskformer import MaskFormerHfPreTrainedModel


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def install(fault: str) -> None:
    kind, _, count = fault.partition(":")
    calls = {"n": 0}

    def counted() -> bool:
        calls["n"] += 1
        return calls["n"] == int(count)

    if kind == "checkpoint":
        save_state = accelerate.Accelerator.save_state

        def save_state_then_die(self, output_dir=None, **kwargs):
            result = save_state(self, output_dir, **kwargs)
            if counted():
                self.wait_for_everyone()  # every process's part is in the partial folder
                if main_process():
                    die()
            return result
        accelerate.Accelerator.save_state = save_state_then_die
    elif kind == "step":
        step = AcceleratedOptimizer.step

        def die_then_step(self, *args, **kwargs):
            if counted() and main_process():
                die()
            return step(self, *args, **kwargs)
        AcceleratedOptimizer.step = die_then_step
    elif kind == "final":
        save_pretrained = MaskFormerHfPreTrainedModel.save_pretrained

        def save_then_die(self, save_directory, *args, **kwargs):
            result = save_pretrained(self, save_directory, *args, **kwargs)
            if os.path.basename(os.fspath(save_directory)) == "model.partial":
                die()
            return result
        MaskFormerHfPreTrainedModel.save_pretrained = save_then_die
    else:
        raise ValueError(f"MASKFORMER_HF_TEST_FAULT: expected checkpoint:N, step:N or final, got {fault!r}")


if __name__ == "__main__":
    if os.environ.get("MASKFORMER_HF_TEST_FAULT"):
        install(os.environ["MASKFORMER_HF_TEST_FAULT"])
    sys.exit(main(["train", *sys.argv[1:]]))
