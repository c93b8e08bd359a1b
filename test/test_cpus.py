"""CPU lists and pinning one thread apart from the rest of the process
(zoa_ros.core.runtime.cpus)."""

from __future__ import annotations

import os
import threading

import pytest

from zoa_ros.core.runtime.cpus import (
    format_cpus,
    parse_cpus,
    pin_threads,
    process_cpus,
    reserve_cpus,
    thread_cpus,
    thread_ids,
)


@pytest.mark.parametrize(("value", "cpus"), [
    ("", set()), ([], set()), ("3", {3}), (3, {3}), ("2-3,6", {2, 3, 6}), (" 1 , 2 ", {1, 2}),
    ([0, 5], {0, 5}), ((4,), {4}), ("0-0", {0}),
])
def test_parse_cpus(value: object, cpus: set[int]) -> None:
    assert parse_cpus(value) == cpus


@pytest.mark.parametrize(("value", "reason"), [
    ("a", "bad CPU list"), ("3-1", "end is below the start"), ("1-", "bad CPU list"),
    (-1, ">= 0"), ([1, -2], ">= 0"), (True, "CPU numbers"), ([1.0], "CPU numbers"),
    (1.5, "CPU numbers"),
])
def test_parse_cpus_refuses_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cpus(value)


def test_format_cpus_is_the_inverse_of_parse() -> None:
    assert format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpus(set()) == ""
    assert parse_cpus(format_cpus({0, 1, 2, 5, 7, 8})) == {0, 1, 2, 5, 7, 8}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_reserve_cpus_gives_the_thread_its_cpu_and_the_others_the_rest() -> None:
    allowed = process_cpus()
    mine = {max(allowed)}
    seen: dict[str, object] = {}
    reserved, done = threading.Event(), threading.Event()

    def inference() -> None:
        seen["rest"] = reserve_cpus(mine, allowed)
        seen["own"] = thread_cpus()
        reserved.set()
        done.wait(10)

    def later() -> None:   # started by a thread on the rest: inherits the rest
        seen["later"] = thread_cpus()

    worker = threading.Thread(target=inference)
    try:
        worker.start()
        assert reserved.wait(10)
        others = {tid: thread_cpus(tid) for tid in thread_ids() if tid != worker.native_id}
        late = threading.Thread(target=later)
        late.start()
        late.join(10)
    finally:
        done.set()
        worker.join(10)
        pin_threads(allowed)
    assert seen["own"] == mine
    assert seen["rest"] == allowed - mine
    assert others and all(cpus == allowed - mine for cpus in others.values())
    assert seen["later"] == allowed - mine
    assert thread_cpus() == allowed   # undone


def test_reserve_cpus_refuses_cpus_outside_the_process() -> None:
    allowed = process_cpus()
    with pytest.raises(ValueError, match="not among this process's"):
        reserve_cpus({max(allowed) + 1}, allowed)
    with pytest.raises(ValueError, match=r"\(none\)"):
        reserve_cpus(set(), allowed)
    assert thread_cpus() == allowed
