"""CPUs for one latency-critical thread: parse a CPU list and pin threads (Linux affinity).

Unpinned, the scheduler moves a latency-critical thread between CPUs and lets the process's
other threads (DDS, executors, the camera callback) preempt it. :func:`reserve_cpus` gives the
thread CPUs of its own and every other thread of the process the rest; threads started later
inherit the CPUs of the thread that starts them. Other processes (a camera driver) are the
system's to place (``taskset``, cgroup cpusets). What it bought on two CPUs:
docs/lab/node-latency.md §4.8.

Written here because the standard library has the system calls (``os.sched_setaffinity``) but
nothing that applies them to the other threads of a process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path


def parse_cpus(value: int | str | Iterable[int]) -> frozenset[int]:
    """A CPU list as Linux writes it (``"2-3,6"``), one CPU number, or a list of numbers ->
    the CPU numbers; ``""`` and ``[]`` -> none. ValueError says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"expected CPU numbers, got {value!r}")
    if isinstance(value, int):
        items: list[int] = [value]
    elif isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            low, sep, high = part.partition("-")
            if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
                raise ValueError(f"bad CPU list {value!r}: expected e.g. 3 or 2-3,6")
            first, last = int(low), int(high) if sep else int(low)
            if last < first:
                raise ValueError(f"bad CPU range {part!r} in {value!r}: the end is below the start")
            items.extend(range(first, last + 1))
    elif isinstance(value, Iterable) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        items = list(value)
    else:
        raise ValueError(f"expected CPU numbers, got {value!r}")
    if any(c < 0 for c in items):
        raise ValueError(f"CPU numbers are >= 0, got {value!r}")
    return frozenset(items)


def format_cpus(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> ``"0-2,5"``."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and out[-1].split("-")[-1] == str(c - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def usable_cpus() -> int:
    """How many CPUs the calling thread may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def process_cpus() -> frozenset[int]:
    """The CPUs this process's main thread may run on (the process's affinity)."""
    return frozenset(os.sched_getaffinity(os.getpid()))


def thread_cpus(tid: int | None = None) -> frozenset[int]:
    """The CPUs thread ``tid`` (default: the calling thread) may run on."""
    return frozenset(os.sched_getaffinity(threading.get_native_id() if tid is None else tid))


def thread_ids() -> list[int]:
    """The kernel ids of this process's threads."""
    return [int(t.name) for t in Path(f"/proc/{os.getpid()}/task").iterdir()]


def pin_threads(cpus: Iterable[int], skip: int | None = None) -> None:
    """Let every thread of this process but ``skip`` run on ``cpus`` only."""
    cpus = frozenset(cpus)
    for tid in thread_ids():
        if tid == skip:
            continue
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:   # it ended meanwhile
            continue


def reserve_cpus(cpus: Iterable[int], allowed: Iterable[int]) -> frozenset[int]:
    """Run the calling thread on ``cpus`` only and every other thread of this process on the
    rest of ``allowed`` (the process's CPUs); returns that rest. With no rest, the other threads
    keep their CPUs. Undo with ``pin_threads(allowed)``. ValueError when ``cpus`` is empty or
    not within ``allowed``; OSError when the system refuses."""
    cpus, allowed = frozenset(cpus), frozenset(allowed)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"CPUs {format_cpus(cpus) or '(none)'} are not among this process's "
                         f"{format_cpus(allowed)}")
    me = threading.get_native_id()
    rest = allowed - cpus
    if rest:
        pin_threads(rest, skip=me)
    os.sched_setaffinity(me, cpus)
    return rest


# The instruction sets integer and float kernels choose between (x86 and Arm names).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "amx_int8", "avx512_bf16", "asimd", "asimddp", "i8mm", "sve")


def cpu_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """The SIMD instruction sets of this CPU among :data:`SIMD_FLAGS` (empty where the file
    cannot be read). Without VNNI (or Arm's dot product) x86 int8 kernels run slower."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in SIMD_FLAGS if flag in present]
    return []
