"""CPU compute threads per calling thread, for processes where several threads run torch.

torch's CPU kernels run on OpenMP. The number of OpenMP threads is a per-thread setting: each
thread copies torch's process default (the last ``torch.set_num_threads``) when it runs its first
parallel kernel, and keeps a team of OpenMP workers alive from its first multi-threaded kernel
until it exits. Once a process holds more of those workers than it has CPUs, GNU OpenMP stops
letting idle workers spin and puts them to sleep after every parallel region, so each of a small
model's hundreds of short kernels pays a wake-up (docs/lab/node-latency.md §4: what that cost the
node).

So a process with one latency-critical thread (the node's inference) gives that thread the
CPUs and every other thread that touches torch one compute thread: :func:`use_compute_threads`.
"""

from __future__ import annotations

import torch

from zoa_ros.core.runtime.cpus import usable_cpus


def use_compute_threads(n: int) -> int:
    """Run the calling thread's torch CPU kernels on ``n`` threads (0: all usable CPUs) and
    make ``n`` the default of threads that have not run a kernel yet; returns the count.

    Call it at the start of a thread, before its first kernel. The default it leaves is read by
    every thread that starts computing later, so set the latency-critical thread first and then
    put the default back to one (``use_compute_threads(1)`` in the thread that started it)."""
    if n < 0:
        raise ValueError(f"compute threads must be >= 0 (0: all CPUs), got {n}")
    n = n or usable_cpus()
    torch.set_num_threads(n)
    torch.get_num_threads()   # runs the thread's one-time setup, which reads the default just set
    return n
