"""Per-thread CPU compute threads (zoa_ros.core.runtime.threads), as the node sets them up."""

from __future__ import annotations

import threading

import pytest
import torch

from zoa_ros.core.runtime.threads import usable_cpus, use_compute_threads


def test_a_thread_keeps_its_count_after_the_default_goes_back_to_one() -> None:
    """The node's order: the inference thread takes several CPUs, then the default returns to
    one; the inference thread must keep its count, and threads started later get one."""
    before = torch.get_num_threads()
    seen: dict[str, int] = {}
    ready, go = threading.Event(), threading.Event()

    def inference() -> None:
        use_compute_threads(2)
        ready.set()
        go.wait(10)
        torch.ones(1 << 20).add_(1)          # a kernel large enough to run in parallel
        seen["inference"] = torch.get_num_threads()

    def later() -> None:
        torch.ones(1 << 20).add_(1)
        seen["later"] = torch.get_num_threads()

    try:
        use_compute_threads(1)
        worker = threading.Thread(target=inference)
        worker.start()
        assert ready.wait(10)
        use_compute_threads(1)
        go.set()
        worker.join(10)
        late = threading.Thread(target=later)
        late.start()
        late.join(10)
    finally:
        torch.set_num_threads(before)
    assert seen == {"inference": 2, "later": 1}


def test_zero_means_all_usable_cpus_and_negative_is_refused() -> None:
    before = torch.get_num_threads()
    try:
        assert use_compute_threads(0) == usable_cpus() == torch.get_num_threads()
        with pytest.raises(ValueError, match=">= 0"):
            use_compute_threads(-1)
    finally:
        torch.set_num_threads(before)
