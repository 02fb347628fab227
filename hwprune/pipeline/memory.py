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
from collections.abc import Callable
from functools import cache


def release() -> None:
    """Collect garbage (cycles hold modules and their tensors) and return the heap's free pages."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # no C library found, or one without malloc_trim (not glibc)
        return None
