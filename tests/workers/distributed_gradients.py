"""Worker of tests/test_distributed.py: one data-parallel training step, gradients written by rank 0.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/workers/distributed_gradients.py OUT.pt

Each process takes its share of a fixed batch; the mask terms are normalised by the global segment
count divided by the world size, reduced explicitly through accelerate and passed as ``num_masks``.
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator

from maskformer_hf.training import global_num_masks

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # tests/ for conftest
from conftest import distributed_case  # noqa: E402


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)

    model, pixel_values, mask_labels, class_labels = distributed_case()
    model = accelerator.prepare(model)
    share = pixel_values.shape[0] // accelerator.num_processes
    mine = slice(accelerator.process_index * share, (accelerator.process_index + 1) * share)
    num_masks = global_num_masks(class_labels[mine], lambda t: accelerator.reduce(t, reduction="sum"),
                                 accelerator.num_processes)
    out = model(pixel_values[mine], mask_labels=mask_labels[mine], class_labels=class_labels[mine], num_masks=num_masks)
    accelerator.backward(out.loss)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        torch.save({n: p.grad for n, p in unwrapped.named_parameters() if p.grad is not None}, out_path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
