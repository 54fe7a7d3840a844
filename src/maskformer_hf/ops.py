"""Small numeric building blocks shared by the modeling files.

:func:`maybe_compiled` wraps a pure tensor function so that it runs through ``torch.compile``
(TorchInductor fuses a chain of elementwise steps and reductions into one or two loops), falling
back to the plain function when compilation is switched off (``MASKFORMER_HF_COMPILE=0``) or
fails (no C++ compiler, unsupported platform); the numbers are the same up to float rounding.

:func:`linear` is ``F.linear`` computed, on x86 CPUs, by oneDNN's convolution instead of the BLAS
matrix product. PyTorch's CPU ``mm``/``addmm`` call MKL, whose fp32 kernels reach about half of
oneDNN's speed on AMD processors (measured on a Zen 5 EPYC with the shapes of Swin-T: ~190 against
~400 GFLOP/s forward, ~180 against ~370 forward + backward). A linear layer over rows is a 1x1
convolution over a channels-last view of the same memory, so nothing is copied; the result is the
same fp32 (or bf16 under autocast) product up to summation order.

:func:`is_plain` tells when a module may be computed another way than by calling it (a product
through :func:`linear`, q/k/v fused into one product, a projection folded into mask embeddings): only
when calling it would run exactly its class's own ``forward`` on its own tensors. Anything that
replaces or wraps a layer (a PEFT adapter, ``torch.ao`` / bitsandbytes / torchao quantisation, a
parametrization, accelerate's offloading hooks) or listens to it (forward and backward hooks) makes
it not plain, and the module is then called as it is: a fast kernel never goes around a module that
someone else has changed. (An ``nn.Linear`` subclass running :func:`linear` in its ``forward`` would
not do: ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear})`` matches exact types and would
silently leave such layers in fp32.)
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_hooks
from torch import Tensor, nn
from torch._subclasses import FakeTensor

logger = logging.getLogger(__name__)

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
MIN_ROWS = 256  # below this the convolution's set-up costs more than it saves


def onednn_linear_available(x: Tensor) -> bool:
    """Whether :func:`linear` routes ``x`` through oneDNN (x86 CPU, fp32/bf16, oneDNN built in)."""
    return (_X86 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: `(..., K)`, `(N, K)`, `(N,)` -> `(..., N)`; through oneDNN on x86 CPUs."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if tracing() or rows < MIN_ROWS or weight.shape[0] == 0 or not onednn_linear_available(x):
        return F.linear(x, weight, bias)
    *lead, in_features = x.shape
    # (rows, K) row-major is a (1, K, rows, 1) image in channels-last layout.
    image = x.reshape(1, rows, 1, in_features).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None], bias)  # (1, N, rows, 1), channels-last as a rule
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0]).contiguous()


_PLAIN_TENSORS = (Tensor, nn.Parameter, FakeTensor)  # FakeTensor: the parameters seen by torch.export


def is_plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """Whether ``module(x)`` is exactly ``cls.forward(module, x)`` on ordinary tensors, so that a caller may
    compute the same function another way from ``module.weight`` and ``module.bias``.

    True when ``module``'s type is ``cls`` itself (not a subclass: PEFT's LoRA layers, ``torch.ao``'s and
    bitsandbytes' quantised layers and parametrized modules all change the type), no forward or backward
    hook (its own or a global one) would run, ``forward`` is not replaced on the instance (accelerate's
    offloading hooks do that) and its parameters are plain tensors (not quantised or distributed tensor
    subclasses such as torchao's or DTensor). A cheap test: a few dictionary and type look-ups.
    """
    if type(module) is not cls or "forward" in module.__dict__:
        return False
    if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
            or module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
            or module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks):
        return False
    return all(p is None or type(p) in _PLAIN_TENSORS for p in module._parameters.values())


def linear_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` for a linear layer, `(..., K)` -> `(..., N)`: through :func:`linear` (oneDNN on x86 CPUs)
    when ``layer`` is a plain ``nn.Linear`` (:func:`is_plain`), else by calling it, so that whatever
    replaced or wraps it (a LoRA adapter, a quantised layer, hooks) runs as it is."""
    if is_plain(layer, nn.Linear):
        return linear(x, layer.weight, layer.bias)
    return layer(x)


def tracing() -> bool:
    """Whether ``torch.export`` (and so ``torch.onnx.export``) or ``torch.jit.trace`` is recording the
    code: a branch on a tensor's size (pad only when a size is not a multiple of something) must
    then take its general path, else the graph holds for the traced sizes only."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def maybe_compiled(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile(dynamic=True)``, compiled on first use; ``fn`` itself when
    ``MASKFORMER_HF_COMPILE=0`` or when compiling fails (a warning says why, once)."""
    compiled, failed = None, False

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled, failed
        if failed or os.environ.get("MASKFORMER_HF_COMPILE", "1") == "0":
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True)
        try:
            return compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            # The plain function tells a caller's own error (it raises it again, compilation stays
            # on) from a compiler failure (it runs: from now on it is used instead).
            result = fn(*args, **kwargs)
            failed = True
            logger.warning("%s: torch.compile failed (%s: %s); using the uncompiled function", fn.__name__,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            return result

    return wrapper
