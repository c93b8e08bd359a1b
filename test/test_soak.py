"""``zoa-ros bench soak`` end to end, briefly: a real node at 30 Hz with adaptation on for 15
seconds, a bank save, the per-minute row and the targets. The hour-long run is in
docs/lab/robustness.md."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("zoa-ros"))


def test_a_short_soak_reports_every_minute_and_its_targets(make_pack, tmp_path: Path) -> None:
    _, pack = make_pack("test_resnet", "w8a8")
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [CLI, "bench", "soak", "--pack", str(pack), "--minutes", "0.25", "--warmup", "2",
         "--size", "320x240", "--schedule", "clean:4,gaussian_noise:4", "--save-every", "1",
         "--domain-id", str(30 + os.getpid() % 29),
         "--out", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.is_file(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    (row,) = report["minutes"]
    assert 350 <= row["sent"] <= 460 and row["answered"] > 0 and row["node_alive"]
    assert row["e2e_p99_ms"] >= row["e2e_p50_ms"] > 0 and row["rss_mb"] > 0
    assert row["minor_faults"] >= 0 and row["major_faults"] >= 0 and row["cpu_steal_s"] >= 0
    assert row["threads_alive"] == "inference, adaptation, camera_inputs"
    assert row["threads_stopped"] == "" and row["adaptation_steps"] > 0
    assert report["saves"][0]["ok"] and report["exit_code"] == 0
    assert set(report["targets"]) >= {"no thread lost", "clean exit", "every save succeeded"}
    assert report["targets"]["no thread lost"] and report["targets"]["clean exit"]
    assert "node threads alive" in run.stdout and "3/3" in run.stdout


def test_page_faults_are_read_from_the_right_fields() -> None:
    """Touching 64 MiB of freshly mapped memory costs one minor fault per 4 KiB page (or fewer
    with huge pages, never none); the children's counts (the neighbouring fields) do not move.
    An anonymous mmap, not the heap: with freed memory kept (``keep_freed_memory``, set by other
    tests in this process) the heap may hand back pages that were faulted in before."""
    from zoa_ros.ros.node_watch import cpu_steal_seconds, process_faults

    minor, major = process_faults(os.getpid())
    with mmap.mmap(-1, 64 << 20) as block:
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        after_minor, after_major = process_faults(os.getpid())
    assert after_minor - minor >= 16 and after_major >= major
    assert cpu_steal_seconds() >= 0.0

