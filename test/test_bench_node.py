"""``zoa-ros bench node`` end to end: a real node process on a tiny pack, ~2 s per condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoa_ros.core.cpus import format_cpus
from zoa_ros.tools import bench_node

CLI = str(Path(sys.executable).with_name("zoa-ros"))


def test_parse_sizes_and_params() -> None:
    assert bench_node.parse_sizes("224x224, 640X480") == [(224, 224), (640, 480)]
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        bench_node.parse_sizes("640-480")
    assert bench_node.parse_params(["a.b:=0.5", "c:=true", "d:=x"]) == {
        "a.b": 0.5, "c": True, "d": "x"}
    with pytest.raises(ValueError, match="NAME:=VALUE"):
        bench_node.parse_params(["a=1"])


def test_p99_ratio_interval_covers_the_true_ratio_and_narrows_with_more_frames() -> None:
    rng = np.random.default_rng(3)
    off = rng.gamma(4.0, 5.0, 3000)
    on = 1.3 * rng.gamma(4.0, 5.0, 3000)     # true p99 ratio 1.3
    wide = bench_node.percentile_ratio_interval(on[:150], off[:150])
    narrow = bench_node.percentile_ratio_interval(on, off)
    assert wide is not None and narrow is not None
    assert narrow[0] < 1.3 < narrow[1] and wide[0] < 1.3 < wide[1]
    assert narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])
    assert narrow[0] > 1.0                    # 3000 frames tell 1.3 from 1.0
    assert bench_node.percentile_ratio_interval(on, off) == narrow       # seeded
    assert bench_node.percentile_ratio_interval([1.0], off) is None


def test_model_latency_at_a_camera_rate() -> None:
    """With a period, each call starts one period after the one before, or at once when that
    one ran over; it never bursts to catch up."""
    starts: list[float] = []

    def predict(frame: float) -> None:
        starts.append(time.monotonic())
        time.sleep(frame)

    assert len(bench_node.model_latency(predict, [0.0], 6, warmup=0, period=0.05)) == 6
    gaps = np.diff(starts)
    assert gaps.min() >= 0.045 and np.median(gaps) < 0.07
    starts.clear()
    cpu: list[float] = []
    times = bench_node.model_latency(predict, [0.0, 0.08], 6, warmup=0, period=0.05,
                                     cpu_ms=cpu)
    assert [t > 70 for t in times] == [False, True] * 3
    assert len(cpu) == 6 and max(cpu) < 20   # asleep, not on a CPU
    gaps = np.diff(starts)   # after an 80-ms call the next starts at once, then back on pace
    assert all(g >= 0.045 for g in gaps) and gaps[1::2].max() < 0.1
    starts.clear()
    bench_node.model_latency(predict, [0.0], 4, warmup=0)   # back to back
    assert np.diff(starts).max() < 0.02

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    cpu.clear()
    times = bench_node.model_latency(spin, [0.03], 3, warmup=0, cpu_ms=cpu)
    assert all(29 < c <= t + 0.5 for c, t in zip(cpu, times))   # computing: CPU time ~ wall


def test_bench_node_json(make_pack, tmp_path: Path) -> None:
    _, pack = make_pack("test_resnet", "w8a8")
    out = tmp_path / "bench.json"
    cpus = os.sched_getaffinity(0)
    last = max(cpus)   # with two CPUs or more: classification (node and model) on this one
    pin = ["--param", f"inference.cpus:={last}"] if len(cpus) > 1 else []
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ROS_", "FASTDDS_", "RMW_"))}
    result = subprocess.run(
        [CLI, "bench", "node", "--pack", str(pack), "--seconds", "2", "--warmup", "0.5",
         "--model-runs", "10", "--blocks", "2", "--domain-id", str(201 + os.getpid() % 31),
         # answers and steps within 2 s even when other jobs keep both CPUs busy (the default
         # one inference thread helps there too): small batches, and nice instead of
         # SCHED_IDLE (no CPU at all on a saturated machine)
         "--param", "adaptation.batch_size:=8", "--param", "adaptation.interval_frames:=8",
         "--param", "adaptation.idle_priority:=false", *pin,
         "--out", str(tmp_path / "run"), "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "p99 adaptation on / off" in result.stdout and "machine:" in result.stdout
    assert "CPU time p50 (adaptation off): the node's inference" in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["model_thread_cpus"] == (str(last) if pin else
                                                       format_cpus(cpus))
    if pin:
        log = (tmp_path / "run" / "node_adaptation_off.log").read_text()
        assert f"classification on CPU(s) {last}, the node's other threads on" in log
    conditions = report["conditions"]
    assert [(c["size"], c["adaptation"]) for c in conditions] == [
        ("224x224", "off"), ("640x480", "off"), ("224x224", "on"), ("640x480", "on")]
    for c in conditions:
        assert c["sent"] > 20 and 0 < c["answered"] <= c["sent"]
        assert c["dropped"] == c["sent"] - c["answered"]
        lat, model = c["latency_ms"], c["model_ms"]
        assert lat["n"] == c["answered"] and 0 < lat["p50"] <= lat["p99"]
        assert model["n"] == 10 and 0 < model["p50"] <= model["p99"]
        assert len(model["p50_blocks"]) == 3   # before, between and after the 2 slices
        tight = c["model_back_to_back_ms"]
        assert tight["n"] == 10 and len(tight["p50_blocks"]) == 3
        assert c["model_cpu_ms"]["n"] == 10 and 0 < c["model_cpu_ms"]["p50"]
        assert c["node_inference_cpu_ms"]["n"] == c["answered"]
        assert 0 < c["node_inference_cpu_ms"]["p50"] <= c["node_inference_ms"]["p99"]
        node = c["node"]
        assert node is not None and node["received"] > 0 and node["classified"] > 0
        assert node["classified"] >= c["answered"] - 1   # counters lag by at most one frame
    assert all(c["node"]["adaptation_steps"] == 0 for c in conditions[:2])
    assert sum(c["node"]["adaptation_steps"] for c in conditions[2:]) > 0
    by = {(c["size"], c["adaptation"]): c for c in conditions}
    for size, r in report["ratios"].items():
        off, on = by[(size, "off")], by[(size, "on")]
        assert r["node_p50_over_model_p50_off"] == pytest.approx(
            off["latency_ms"]["p50"] / off["model_ms"]["p50"])
        assert r["p99_on_over_p99_off"] == pytest.approx(
            on["latency_ms"]["p99"] / off["latency_ms"]["p99"])
        assert r["p50_target_met"] == (r["node_p50_over_model_p50_off"] <= 1.10)
        assert r["node_p50_over_model_back_to_back_p50_off"] == pytest.approx(
            off["latency_ms"]["p50"] / off["model_back_to_back_ms"]["p50"])
        assert r["model_p50_over_back_to_back_p50_off"] == pytest.approx(
            off["model_ms"]["p50"] / off["model_back_to_back_ms"]["p50"])
        assert r["inference_cpu_p50_over_model_cpu_p50_off"] == pytest.approx(
            off["node_inference_cpu_ms"]["p50"] / off["model_cpu_ms"]["p50"])
        lo, hi = r["p99_on_over_p99_off_ci95"]
        assert 0 < lo <= hi
        assert on["latency_samples_ms"] and len(on["latency_samples_ms"]) == on["answered"]
        assert r["node_added_p50_ms"] == pytest.approx(
            off["latency_ms"]["p50"] - off["model_ms"]["p50"])
    relay = report["relay"]    # the model-free relay node answered the same streams
    assert [c["size"] for c in relay] == ["224x224", "640x480"]
    for c in relay:
        assert c["sent"] > 20 and 0 < c["answered"] <= c["sent"]
        assert 0 < c["latency_ms"]["p50"] <= c["latency_ms"]["p99"]
        r = report["ratios"][c["size"]]
        assert r["floor_p50_ms"] == c["latency_ms"]["p50"]
        assert r["floor_p50_over_model_p50"] == pytest.approx(
            c["latency_ms"]["p50"] / by[(c["size"], "off")]["model_ms"]["p50"])
    assert "transport floor (relay_node, no model)" in result.stdout
    assert "against the model back to back" in result.stdout
    assert report["machine"]["cpus"] >= 1 and report["settings"]["rate_hz"] == 30.0
