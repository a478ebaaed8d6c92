"""Process-wide settings that make bound computations fast on a CPU.

Bound passes allocate and free coefficient tensors of tens to hundreds of MB many times per call.
glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB by default) with a fresh
``mmap`` and unmaps it on ``free``, so each such tensor is page-faulted and zeroed by the kernel anew,
and it gives freed heap memory back to the system once more than the trim threshold is free.  On
branch and bound over a 23k-neuron ReLU layer (``bench/vnncomp.py``, verivital) a batch of 256
domains took 8.2 s before and 2.8 s after :func:`tune_allocator`; CROWN on the medium CNN of
``bench/linear.py`` 37.8 s before and 24.7 s after.  The cost: up to ``limit`` bytes of freed memory
stay with the process.

The ``boundc`` command line and the benchmarks call :func:`tune_allocator`; a program that embeds
boundc (a training loop) can call it once at start.  Setting ``MALLOC_MMAP_THRESHOLD_`` in the
environment (glibc's own knob) leaves the allocator as configured.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameters (``<malloc.h>``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, and up to this much freed memory stays there.
HEAP_BLOCK_LIMIT = 1 << 30


def tune_allocator(limit: int = HEAP_BLOCK_LIMIT) -> bool:
    """Serve blocks up to ``limit`` bytes from glibc's heap and keep up to ``limit`` freed bytes there.

    Returns whether the settings took effect: ``False`` off Linux, with a C library without
    ``mallopt`` (musl), or when ``MALLOC_MMAP_THRESHOLD_`` is set in the environment.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))


__all__ = ["HEAP_BLOCK_LIMIT", "tune_allocator"]
