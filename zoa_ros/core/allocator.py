"""Keep freed memory in the process, so classifying a frame does not page its activations in
again every time.

With glibc's default settings malloc gives every block above its mmap threshold a fresh
``mmap`` and unmaps it on free, and returns free memory at the top of a heap to the OS once it
exceeds the trim threshold (128 KiB at start; glibc raises both after a large block is freed,
to that block's size and twice it). A CNN that classifies one frame allocates and frees
activations of several MB in its first layers, so its forward passes keep handing memory back
and page-faulting it in again (thousands of page faults per single-frame forward pass of
EfficientNet-Lite0, none with the thresholds raised: test/test_allocator.py counts them),
and the kernel zeroes every page on its first touch. What that costs in latency: docs/RESULTS.md
§4.

:func:`keep_freed_memory` raises both thresholds with ``mallopt``. Blocks up to 32 MiB (a
frame's activations; not an adaptation batch's) then come from the heap and stay there when
freed, up to 256 MiB of free heap per arena. Written here rather than taken from a library: the
allocators that do this out of the box (jemalloc, tcmalloc) must be preloaded with
``LD_PRELOAD`` before the process starts, which a ROS node launched by others cannot rely on;
``mallopt`` is two calls at run time. It is process-wide and cannot be undone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_TRIM_THRESHOLD = -1          # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20      # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 256 << 20

_lock = threading.Lock()
_applied = False


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD,
                      trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; ``True`` once they are set
    (now or by an earlier call), ``False`` where the C library has no glibc ``mallopt`` or
    refuses a value (nothing is changed then, or only the first threshold)."""
    global _applied
    with _lock:
        if _applied:
            return True
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):   # not glibc (macOS, musl without mallopt, Windows)
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _applied = (mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
                    and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1)
        return _applied


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _applied
