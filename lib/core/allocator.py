"""Memory allocator tuning for CPU runs: keep freed memory in the process instead of handing it back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc to serve blocks up to ``mmap_threshold`` from the heap and to keep up to ``trim_threshold`` of freed
    memory, so the model's activations reuse pages instead of faulting fresh ones in after every batch.

    In ``benchmarks/overhead.py`` those page faults made whole-image inference up to a third slower than the model
    alone on the same windows; this is what PyTorch's CPU performance guide gets from jemalloc or tcmalloc, with no
    extra dependency. Called once per process by train.py, predict.py (through the Segmenter) and the benchmarks.

    Returns:
        True where the C library took both settings (glibc); False elsewhere (nothing changes).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
