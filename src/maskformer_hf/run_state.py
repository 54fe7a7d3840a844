"""Each training run gets accelerate's process-wide state of its own.

accelerate keeps one ``AcceleratorState`` (mixed precision, device, plugins) and one ``GradientState``
per process, set by the first ``Accelerator`` and refused to change afterwards ("AcceleratorState has
already been initialized and cannot be changed"): a notebook that trains in fp32 and then in bf16, or
on another device, fails on its second run. :func:`own_accelerate_state` gives a run fresh state and
puts back what was there before (an ``Accelerator`` the caller made keeps working). ``PartialState``
(the process group, the device) is included only when no process group exists: a ``torchrun`` /
``accelerate launch`` job keeps its processes, whatever its runs change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def own_accelerate_state() -> Iterator[None]:
    """Run the body with empty accelerate state; restore the state found on entry when it ends."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    shared = [AcceleratorState._shared_state, GradientState._shared_state]
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        shared.append(PartialState._shared_state)
    saved = [dict(state) for state in shared]
    for state in shared:  # in place: every state object shares these dicts
        state.clear()
    try:
        yield
    finally:
        for state, before in zip(shared, saved):
            state.clear()
            state.update(before)
