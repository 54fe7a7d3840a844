"""Which reduced precision this machine runs natively (bf16 autocast is only a speed-up with hardware support)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# "1" or "0" forces the answer of cpu_supports_bf16 (tests run both paths on every CPU; a user can
# opt in to emulated bf16 or out of native bf16). Unset: the CPU's flags decide.
NATIVE_BF16_ENV = "MASKFORMER_HF_NATIVE_BF16"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), or when
    ``MASKFORMER_HF_NATIVE_BF16`` says so ("1"/"0").

    Without them PyTorch emulates bf16 on CPU and ``torch.autocast("cpu", dtype=torch.bfloat16)``
    runs far *slower* than fp32 on large models, so callers fall back to fp32.
    """
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV}: expected 0 or 1 (or unset: detect), got {forced!r}")
        return forced == "1"
    return _cpu_has_bf16_instructions()


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_instructions() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
        return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
