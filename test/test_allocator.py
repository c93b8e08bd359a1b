"""core/runtime/allocator.py: with the malloc settings applied, classifying single frames on a
worker thread, and a batch whose activations exceed glibc's largest mmap threshold on the main
thread, stop page-faulting their activations in again (counted by the kernel, in a fresh process
each, as the setting is process-wide and one-way). Run as a script it measures what they leave:
an adaptation batch on a worker thread, against the main thread (where ``zoa_node`` adapts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from zoa_ros.core.runtime.allocator import keep_freed_memory, keeps_freed_memory

# A real timm CNN classifies, on a worker thread, one frame at a time (as the node's inference
# thread does) or a batch (a 16-frame batch's first layers' activations are 40-80 MB, above the
# 32 MiB mmap threshold), on the main thread (as zoa_node and the evaluator adapt) or, with
# "thread", on a worker thread; the kernel counts the process's minor page faults per pass.
FAULTS = textwrap.dedent("""
    import json, resource, sys, threading, time
    import timm, torch
    from zoa_ros.core.runtime.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    batch = int(sys.argv[2])
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    frames = torch.randn(batch, 3, 224, 224)
    passes = 20 if batch == 1 else 3
    out = {}
    def classify():
        with torch.no_grad():
            for _ in range(2):
                model(frames)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            for _ in range(passes):
                model(frames)
            out["seconds"] = (time.perf_counter() - start) / passes
            out["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / passes
    if batch == 1 or sys.argv[3:] == ["thread"]:
        worker = threading.Thread(target=classify)
        worker.start()
        worker.join()
    else:
        classify()
    print(json.dumps({"applied": applied, **out}))
""")


def _faults_per_pass(mode: str, batch: int, *where: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode, str(batch), *where],
                          capture_output=True, text=True, timeout=180, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
@pytest.mark.parametrize(("batch", "least"), [(1, 500), (16, 5000)])
def test_the_settings_stop_the_page_faults_of_each_forward_pass(batch: int, least: int) -> None:
    default, kept = _faults_per_pass("default", batch), _faults_per_pass("keep", batch)
    assert kept["applied"] is True
    # glibc's defaults hand the activations back and fault them in again on every pass ...
    assert default["faults"] > least, default
    # ... the settings keep them: at most a tenth of that remains.
    assert kept["faults"] <= default["faults"] / 10, (default, kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_a_batch_too_large_for_a_thread_heap_stays_in_the_main_heap() -> None:
    """Why zoa_node adapts on its main thread (ros/adaptation_worker.py): a 32-frame batch's
    largest activations exceed the 64 MiB a thread's heap holds, so on a worker thread glibc
    maps them anew at every pass; on the main thread they stay in the heap."""
    worker = _faults_per_pass("keep", 32, "thread")
    main = _faults_per_pass("keep", 32, "main")
    assert worker["faults"] > 10_000, worker
    assert main["faults"] <= worker["faults"] / 10, (worker, main)


HEAPS = textwrap.dedent("""
    import ctypes, sys, threading
    from zoa_ros.core.runtime.allocator import heap_per_thread
    if sys.argv[1] == "on":
        assert heap_per_thread()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    go = threading.Event()
    def work():
        libc.malloc(1000)
        go.wait()
    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    libc.malloc_stats()   # one "Arena N:" block per heap, on stderr
    go.set()
    for t in threads:
        t.join()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_heap_per_thread_gives_every_thread_a_heap_of_its_own() -> None:
    """40 threads that allocate get 40 heaps besides the main one; glibc's default limit is 8
    per CPU, so on a machine with fewer than 5 CPUs some share without the setting."""
    def heaps(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", HEAPS, mode], capture_output=True,
                              text=True, timeout=60, check=True)
        return sum(line.startswith("Arena ") for line in done.stderr.splitlines())

    assert heaps("on") == 41
    cpus = {len(os.sched_getaffinity(0)), os.cpu_count() or 1}   # glibc counts one of them
    assert heaps("off") in {min(41, 8 * n) for n in cpus}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_setting_is_reported_and_idempotent() -> None:
    assert keep_freed_memory() is True
    assert keeps_freed_memory() is True
    assert keep_freed_memory() is True


ENGINE = textwrap.dedent("""
    import json, sys
    from zoa_ros.core.runtime.allocator import keeps_freed_memory
    from zoa_ros.core.engine import Engine
    from zoa_ros.core.model.pack import ModelPack
    pack = ModelPack.load(sys.argv[1])
    Engine(pack, keep_freed_memory=False)
    off = keeps_freed_memory()
    Engine(pack)
    print(json.dumps({"after_off": off, "after_default": keeps_freed_memory()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_engine_applies_it_unless_configured_off(make_pack) -> None:
    _, path = make_pack()
    done = subprocess.run([sys.executable, "-c", ENGINE, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "after_off": False, "after_default": True}


if __name__ == "__main__":
    # The measurement behind core/runtime/allocator.py's numbers: page faults and seconds per
    # forward pass of an adaptation batch, on a worker thread (its own heap) and on the main
    # thread (glibc's main heap), the node's malloc settings in both.
    for batch in (32, 64):
        for where, name in (("thread", "a worker thread"), ("main", "the main thread")):
            row = _faults_per_pass("keep", batch, where)
            print(f"batch {batch:2d} on {name:15s}: {row['faults']:10,.0f} faults, "
                  f"{row['seconds']:.2f} s per pass")
