"""Keep freed memory in the process, so a forward pass does not page its activations in again
every time.

With glibc's default settings malloc gives every block above its mmap threshold a fresh
``mmap`` and unmaps it on free, and returns free memory at the top of a heap to the OS once it
exceeds the trim threshold (128 KiB at start; glibc raises both after a large block is freed,
to that block's size and twice it). A CNN allocates and frees activations of several MB per
frame in its first layers (hundreds of MB per tensor for a 64-frame adaptation batch), so its
forward passes keep handing memory back and page-faulting it in again, and the kernel zeroes
every page on its first touch: thousands of page faults per single-frame forward pass of
EfficientNet-Lite0 (none with the settings below; test/test_allocator.py counts them), and on
a 64-frame batch the page faults cost more than the arithmetic (docs/RESULTS.md §2.4l). What it
costs in the node's latency: docs/RESULTS.md §4.

:func:`keep_freed_memory` sets, with ``mallopt``:

* the mmap threshold to 32 MiB (the largest glibc accepts), so a frame's activations come
  from the heap; and no mmap'd blocks (``M_MMAP_MAX`` 0), so an adaptation batch's larger ones
  do too, in the main heap. A thread's own heap (glibc gives each new thread one, up to 8 per
  CPU) cannot hold a block above 64 MiB, and glibc maps those whatever the setting; see
  :func:`share_one_heap`;
* no trimming (trim threshold -1): free memory at the top of a heap is never handed back. An
  adaptation step of EfficientNet-Lite0 on 64 frames peaks at about 1.1 GiB of tensors; with
  the 1 GiB threshold used before, each step's frees handed that back and the next step
  faulted it in again (docs/RESULTS.md §2.4m).

The process's resident memory therefore stays at its high-water mark instead of falling back
between steps. Written here rather than taken from a library: the allocators that do this out
of the box (jemalloc, tcmalloc) must be preloaded with ``LD_PRELOAD`` before the process
starts, which a ROS node launched by others cannot rely on; ``mallopt`` is three calls at run
time. It is process-wide and cannot be undone.

:func:`share_one_heap` (``M_ARENA_MAX`` 1) makes the threads a process starts from then on
allocate from the main heap too, so the settings reach a batch adapted on a worker thread, as
in ``zoa_node``: without it, a 16-frame batch of EfficientNet-Lite0 on a worker thread
page-faults tens of thousands of times per forward pass; with it, at most a tenth of that
(test/test_allocator.py). The threads then take turns at that heap's lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

M_TRIM_THRESHOLD = -1          # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20      # the largest glibc accepts on 64-bit systems
MMAP_MAX = 0                   # blocks above it come from the heap too
TRIM_THRESHOLD = -1            # glibc reads it as the largest size: never trim

_lock = threading.Lock()
_applied = False
_one_heap = False


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or ``None`` where the C library has none (macOS, musl, Windows)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD,
                      trim_threshold: int = TRIM_THRESHOLD, mmap_max: int = MMAP_MAX) -> bool:
    """Raise glibc's mmap threshold, turn off trimming and cap its mmap'd blocks for this process;
    ``True`` once they are set (now or by an earlier call), ``False`` where the C library has
    no glibc ``mallopt`` or refuses a value (then the settings before it are kept)."""
    global _applied
    with _lock:
        if _applied:
            return True
        mallopt = _mallopt()
        if mallopt is None:
            return False
        _applied = (mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
                    and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
                    and mallopt(M_MMAP_MAX, mmap_max) == 1)
        return _applied


def share_one_heap() -> bool:
    """Make the threads this process starts from now on allocate from the main heap (glibc
    ``M_ARENA_MAX`` 1); ``True`` once set. Call it before the process starts any thread (for a
    ROS node: before it imports rclpy, whose tracing library starts two threads as it loads):
    glibc hands a new thread one of the heaps that exist, in turn, and a thread keeps the heap
    it was given. Process-wide, one-way; ``False`` without glibc ``mallopt``."""
    global _one_heap
    with _lock:
        if not _one_heap:
            mallopt = _mallopt()
            _one_heap = mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1
        return _one_heap


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _applied
