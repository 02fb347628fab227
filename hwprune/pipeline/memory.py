"""Memory a step freed handed back to the system before the next step.

glibc keeps freed blocks below its mmap threshold in its heap for reuse, and that threshold rises to 32 MB
as large blocks are freed: every weight matrix of a 0.5B decoder. A compile that realises, exports and times
such a model round after round would carry gigabytes it no longer uses into the next step (measured on the
0.5B decoder: 12.3 GB resident after a round, 8.1 GB once trimmed). Elsewhere (no glibc) this only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

COLLECT_ABOVE_BYTES = 2 << 30


def release() -> None:
    """Return the heap's free pages; in a process over 2 GiB, collect garbage first (cycles hold modules and
    their tensors). A full collection costs time in proportion to the Python objects alive, not to what it
    frees (it doubled the time of a test process's small compiles), so it runs only where the memory is."""
    if _resident_bytes() > COLLECT_ABOVE_BYTES:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): collect, as before
        return COLLECT_ABOVE_BYTES + 1


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # no C library found, or one without malloc_trim (not glibc)
        return None
