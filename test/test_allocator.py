"""core/allocator.py: with the malloc thresholds raised, classifying single frames on a worker
thread stops page-faulting its activations in again (counted by the kernel, in a fresh process
each, as the setting is process-wide and one-way)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from zoa_ros.core.allocator import keep_freed_memory, keeps_freed_memory

# A real timm CNN classifies one frame at a time on a worker thread, as the node's inference
# thread does; the kernel counts the process's minor page faults around 20 forward passes.
FAULTS = textwrap.dedent("""
    import json, resource, sys, threading
    import timm, torch
    from zoa_ros.core.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    frame = torch.randn(1, 3, 224, 224)
    out = {}
    def classify():
        with torch.no_grad():
            for _ in range(3):
                model(frame)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                model(frame)
            out["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    worker = threading.Thread(target=classify)
    worker.start()
    worker.join()
    print(json.dumps({"applied": applied, "faults": out["faults"]}))
""")


def _faults_per_frame(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_raised_thresholds_stop_the_page_faults_of_each_frame() -> None:
    default, kept = _faults_per_frame("default"), _faults_per_frame("keep")
    assert kept["applied"] is True
    # glibc's defaults hand several MB back and fault them in again on every frame ...
    assert default["faults"] > 500, default
    # ... the raised thresholds keep them: at most a tenth of that remains.
    assert kept["faults"] <= default["faults"] / 10, (default, kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux)")
def test_setting_is_reported_and_idempotent() -> None:
    assert keep_freed_memory() is True
    assert keeps_freed_memory() is True
    assert keep_freed_memory() is True


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
