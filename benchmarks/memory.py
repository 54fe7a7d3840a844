"""Peak memory of one call, for the benchmarks (Linux; None elsewhere)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def peak_extra_memory(fn: Callable[[], Any]) -> float | None:
    """Bytes the resident set grows to during one call of `fn`, above its size before (Linux)."""
    clear = Path("/proc/self/clear_refs")
    if not clear.exists():
        return None
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # hand freed heap memory back, so that the call's own working memory shows
    clear.write_text("5")  # resets VmHWM to the current resident set
    before = _rss("VmRSS")
    fn()
    return _rss("VmHWM") - before
