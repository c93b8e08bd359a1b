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
a 64-frame batch the page faults cost more than the arithmetic (docs/lab/streaming-statistics.md
§2.4l). What it
costs in the node's latency: docs/lab/node-latency.md §4.

:func:`keep_freed_memory` sets, with ``mallopt``:

* the mmap threshold to 32 MiB (the largest glibc accepts), so a frame's activations come
  from the heap; and no mmap'd blocks (``M_MMAP_MAX`` 0), so on the main thread an adaptation
  batch's larger ones do too. A thread's own heap (glibc gives each new thread one, up to 8 per
  CPU) cannot hold a block above 64 MiB, and glibc maps those whatever the setting, so batches
  adapt fastest on the main thread;
* no trimming (trim threshold -1): free memory at the top of a heap is never handed back. An
  adaptation step of EfficientNet-Lite0 on 64 frames peaks at about 1.1 GiB of tensors; with
  the 1 GiB threshold used before, each step's frees handed that back and the next step
  faulted it in again (docs/lab/streaming-statistics.md §2.4m).

The process's resident memory therefore stays at its high-water mark instead of falling back
between steps. Written here rather than taken from a library: the allocators that do this out
of the box (jemalloc, tcmalloc) must be preloaded with ``LD_PRELOAD`` before the process
starts, which a ROS node launched by others cannot rely on; ``mallopt`` is three calls at run
time. It is process-wide and cannot be undone.

A thread's own heap cannot hold a block above 64 MiB, and glibc maps those whatever the
settings: an adaptation thread, on batches of 32 frames, page-faulted its largest activations in
at every forward pass (a soak counted 1.8-4.5 million faults in every minute of adaptation;
``python test/test_allocator.py`` measures faults and time per pass on a worker thread against
the main thread). So ``zoa_node`` adapts on its main thread, whose heap holds any block
(:mod:`zoa_ros.ros.adaptation_worker`), and gives every other thread a heap of its own
(:func:`heap_per_thread`): once glibc's limit of heaps is reached (8 per CPU) a new thread shares
one, the first such thread the main thread's, and would wait for that heap's lock while the
adapting main thread, at idle priority, holds it without a CPU. One heap for all threads (glibc
``M_ARENA_MAX`` 1) stops the faults too, but puts every thread behind that lock; it was tried in
``zoa_node`` and taken out again (docs/lab/robustness.md §9.4).
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
HEAPS = 256                    # more than a node has threads

_lock = threading.Lock()
_applied = False


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


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):   # not glibc (macOS, musl without mallopt, Windows)
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def heap_per_thread(heaps: int = HEAPS) -> bool:
    """Let up to ``heaps`` threads have a heap of their own (glibc ``M_ARENA_MAX``); ``False``
    where there is no glibc ``mallopt``. Call it before the process starts its threads: glibc
    fixes its limit when the ninth heap is made (by default 8 per CPU), and once it is reached
    a new thread shares a heap with others, the first such thread the main thread's."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, heaps) == 1


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _applied
