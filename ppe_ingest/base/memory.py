"""Give freed memory back to the system between the big phases of a run: `release_memory`.

glibc keeps freed heap memory for reuse: after a phase that made many mid-sized allocations (a
store's reads, an LSTM's training steps), a process measured 1,200 MB resident of which 700 MB was
free heap; `malloc_trim` returned it (498 MB after). Without it the next phase (the evaluation, the
inversion) adds its own peak on top of that free memory.
"""
from __future__ import annotations

import ctypes
import gc
import sys

_libc = None


def release_memory() -> None:
    """Collect garbage and return free heap pages to the system (glibc's malloc_trim; elsewhere gc only)."""
    global _libc
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - musl and others lack it
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
