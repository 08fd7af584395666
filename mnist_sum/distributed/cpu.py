"""CPU training speed: threads and the C allocator.

Two settings that a bare `python loop.py` gets by luck and `accelerate launch train.py` does not:
- `accelerate launch` sets OMP_NUM_THREADS=1 on a machine without GPUs, one thread where the machine has more
  (docs/benchmarks.md: CPU settings, has the measured cost);
- glibc's malloc hands large blocks (a batch's activations are megabytes) back to the kernel when they are
  freed and maps them again on the next step, so every step pays page faults. How often depends on the
  process's allocation history, which in train.py (datasets, W&B, checkpoints) makes it slower than the same
  loop in a fresh script. Keeping freed memory in the heap removes that (bench/speed.py; docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems
_KEEP = 1 << 30  # freed memory up to this much stays in the heap for the next step
_GROW = 64 << 20  # grow the heap in steps this large, so a step's allocations rarely ask the kernel


def set_threads(threads: int = 0) -> None:
    """Use `threads` (0: this machine's cores shared by its local processes) for torch's CPU ops."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // local))


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse instead of unmapping them. True if applied (glibc only);
    elsewhere (macOS, musl) it does nothing, and nothing is needed."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, _GROW)))
