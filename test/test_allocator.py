"""core/allocator.py: with the malloc settings applied, classifying single frames on a worker
thread, and a batch whose activations exceed glibc's largest mmap threshold on the main thread
(or on a worker thread, with one heap for all threads), stop page-faulting their activations in
again (counted by the kernel, in a fresh process each, as the settings are process-wide and
one-way)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import pytest

from zoa_ros.core.allocator import keep_freed_memory, keeps_freed_memory, share_one_heap

# A real timm CNN classifies one frame at a time on a worker thread (as the node's inference
# thread does), or a batch of 16 (as an adaptation step does; its first layers' activations are
# 40-80 MB, above the 32 MiB mmap threshold) on the main thread (the evaluator) or on a worker
# thread (the node's adaptation thread); the kernel counts the process's minor page faults
# per forward pass. "one_heap" calls share_one_heap() first, as zoa_node does.
FAULTS = textwrap.dedent("""
    import json, resource, sys, threading
    import timm, torch
    from zoa_ros.core.allocator import keep_freed_memory, share_one_heap
    mode, batch, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    one_heap = share_one_heap() if mode == "keep_one_heap" else False
    applied = keep_freed_memory() if mode.startswith("keep") else False
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    frames = torch.randn(batch, 3, 224, 224)
    passes = 20 if batch == 1 else 3
    out = {}
    def classify():
        with torch.no_grad():
            for _ in range(2):
                model(frames)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(passes):
                model(frames)
            out["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / passes
    if where == "worker":
        worker = threading.Thread(target=classify)
        worker.start()
        worker.join()
    else:
        classify()
    print(json.dumps({"applied": applied, "one_heap": one_heap, "faults": out["faults"]}))
""")


def _faults_per_pass(mode: str, batch: int, where: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode, str(batch), where],
                          capture_output=True, text=True, timeout=180, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
@pytest.mark.parametrize(("batch", "where", "least"), [(1, "worker", 500), (16, "main", 5000)])
def test_the_settings_stop_the_page_faults_of_each_forward_pass(batch: int, where: str,
                                                                least: int) -> None:
    default = _faults_per_pass("default", batch, where)
    kept = _faults_per_pass("keep", batch, where)
    assert kept["applied"] is True
    # glibc's defaults hand the activations back and fault them in again on every pass ...
    assert default["faults"] > least, default
    # ... the settings keep them: at most a tenth of that remains.
    assert kept["faults"] <= default["faults"] / 10, (default, kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_one_heap_stops_the_page_faults_of_a_batch_on_a_worker_thread() -> None:
    kept = _faults_per_pass("keep", 16, "worker")
    shared = _faults_per_pass("keep_one_heap", 16, "worker")
    assert shared["one_heap"] is True and shared["applied"] is True
    # A worker thread's own heap maps the batch's largest activations afresh on every pass ...
    assert kept["faults"] > 5000, kept
    # ... in the main heap they stay, as on the main thread.
    assert shared["faults"] <= kept["faults"] / 10, (kept, shared)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_setting_is_reported_and_idempotent() -> None:
    assert keep_freed_memory() is True
    assert keeps_freed_memory() is True
    assert keep_freed_memory() is True
    assert share_one_heap() is True
    assert share_one_heap() is True


ENGINE = textwrap.dedent("""
    import json, sys
    from zoa_ros.core.allocator import keeps_freed_memory
    from zoa_ros.core.engine import Engine
    from zoa_ros.core.pack import ModelPack
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


# A process's threads each allocate a 100 MiB block (as an adaptation batch's activations) after
# rclpy, whose tracing library starts threads as it loads, is imported; the block lies below the
# program break when it came from the main heap, and is mapped elsewhere when it came from a heap
# of the thread's own. "library" imports rclpy first, as any process that never asks for one
# heap; "zoa_node" imports the node module, and "zoa-ros node" runs the CLI's node command (here
# only as far as --help), as they start.
HEAP = textwrap.dedent("""
    import ctypes, json, sys, threading
    entry = sys.argv[1]
    if entry == "zoa_node":
        import zoa_ros.ros.node
    elif entry == "zoa-ros node":
        from zoa_ros.tools.cli import main
        main(["node", "--help"])
    import rclpy
    import torch
    from zoa_ros.core.allocator import keep_freed_memory
    keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_long,)
    in_main_heap = []
    def allocate():
        block = torch.empty(100 << 20, dtype=torch.uint8)
        in_main_heap.append(block.data_ptr() < libc.sbrk(0))
    for _ in range(4):   # glibc hands new threads the heaps that exist in turn
        worker = threading.Thread(target=allocate)
        worker.start()
        worker.join()
    print(json.dumps(in_main_heap))
""")


@functools.cache   # "library" is the same for both entry points: run it once
def _in_main_heap(entry: str) -> list[bool]:
    done = subprocess.run([sys.executable, "-c", HEAP, entry], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
@pytest.mark.parametrize("entry", ["zoa_node", "zoa-ros node"])
def test_node_entry_points_give_every_thread_the_main_heap(entry: str) -> None:
    assert _in_main_heap("library") == [False] * 4
    assert _in_main_heap(entry) == [True] * 4
