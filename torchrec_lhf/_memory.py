"""Handing freed memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes


def trim_heap() -> None:
    """Return glibc's freed heap to the system (``malloc_trim``), so that memory a step
    freed (a stage's model, the export's spilled tables) leaves the resident set instead
    of waiting in the allocator's free lists; nothing where libc is not glibc."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
