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

from zoa_ros.core.runtime.cpus import format_cpus
from zoa_ros.tools import bench_node
from zoa_ros.tools.bench_node import alongside, stats

CLI = str(Path(sys.executable).with_name("zoa-ros"))


def test_parse_sizes_and_params() -> None:
    assert bench_node.parse_sizes("224x224, 640X480") == [(224, 224), (640, 480)]
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        bench_node.parse_sizes("640-480")
    assert bench_node.parse_params(["a.b:=0.5", "c:=true", "d:=x"]) == {
        "a.b": 0.5, "c": True, "d": "x"}
    with pytest.raises(ValueError, match="NAME:=VALUE"):
        bench_node.parse_params(["a=1"])


def test_the_target_is_held_against_the_model_alongside_where_it_ran() -> None:
    s = stats.summary

    def condition(reference: str) -> dict:   # the paired frames: the model's fast moments
        along = s([20.0, 22.0]) if reference == "alongside" else s([])
        return {"size": "224x224", "adaptation": "off", "model_reference": reference,
                "latency_ms": s([26.4]), "node_inference_ms": s([24.0]),
                "node_inference_cpu_ms": s([23.0]), "latency_paired_ms": s([23.1]),
                "node_inference_paired_ms": s([21.0]), "node_inference_cpu_paired_ms": s([20.5]),
                "model_ms": s([30.0]), "model_cpu_ms": s([29.0]),
                "model_alongside_ms": along, "model_alongside_cpu_ms": along}

    r = stats.ratios([condition("alongside")])["224x224"]
    assert r["model_reference_off"] == "alongside"
    assert r["node_p50_over_model_p50_off"] == pytest.approx(23.1 / 21.0)
    assert r["p50_target_met"] is True and r["node_added_p50_ms"] == pytest.approx(2.1)
    assert r["node_p50_over_model_between_p50_off"] == pytest.approx(26.4 / 30.0)
    assert r["model_alongside_p50_over_between_p50_off"] == pytest.approx(21.0 / 30.0)
    assert r["inference_cpu_p50_over_model_cpu_p50_off"] == pytest.approx(20.5 / 21.0)
    assert r["node_p50_over_inference_p50_off"] == pytest.approx(26.4 / 24.0)   # all frames
    r = stats.ratios([condition("between slices")])["224x224"]   # it did not run
    assert r["model_reference_off"] == "between slices"
    assert r["node_p50_over_model_p50_off"] == pytest.approx(26.4 / 30.0)
    assert r["p50_target_met"] is True and "model_alongside_p50_over_between_p50_off" not in r
    assert r["inference_cpu_p50_over_model_cpu_p50_off"] == pytest.approx(23.0 / 29.0)


def test_the_model_alongside_is_paired_with_the_nodes_next_answer() -> None:
    period = 0.1   # 10 Hz: stamps 100 ms apart
    along = alongside.Alongside("224x224/off", [], lambda frame: None, 20.0)
    along.wall_ms, along.cpu_ms, along.no_room = [21.0, 23.0], [20.0, 22.0], 6
    along.stamps = [7 * 10**8, 5 * 10**8]   # the frames the runs followed
    answer = alongside.Answer   # e2e, inference, its CPU, stamp
    answers = [answer(30.0 + i, 25.0 + i, 24.0 + i, i * 10**8) for i in range(8)]
    fields = alongside.alongside_fields(along, answers, period)
    assert fields["model_reference"] == "alongside"
    assert fields["model_alongside"] == {"runs": 2, "paired": 1, "skipped_busy": 0,
                                         "skipped_no_room": 6, "overlapped_next_frame": 0,
                                         "not_run_because": None}
    # the run after frame 5 against the answer to frame 6; frame 7 has no next answer
    assert fields["model_alongside_ms"]["p50"] == 23.0
    assert fields["model_alongside_cpu_ms"]["p50"] == 22.0
    assert fields["latency_paired_ms"]["p50"] == 36.0
    assert fields["node_inference_paired_ms"]["p50"] == 31.0
    assert fields["node_inference_cpu_paired_ms"]["p50"] == 30.0
    answers.append(answer(50.0, 45.0, 44.0, 20 * 10**8))   # next slice: after a share, no pair
    assert alongside.alongside_fields(along, answers, period)["model_alongside"]["paired"] == 1
    answers.append(answer(40.0, 35.0, 34.0, 8 * 10**8))    # now 2 runs of 10 answers: too few
    fields = alongside.alongside_fields(along, answers, period)
    assert fields["model_alongside"]["paired"] == 2 and fields["latency_paired_ms"]["n"] == 2
    assert fields["model_reference"] == "between slices"
    assert "ran after only 2 of 10 answers" in fields["model_alongside"]["not_run_because"]
    fields = alongside.alongside_fields("adaptation on", answers, period)
    assert fields["model_reference"] == "between slices"
    assert fields["model_alongside_ms"]["n"] == fields["latency_paired_ms"]["n"] == 0
    assert fields["model_alongside"]["not_run_because"] == "adaptation on"


def test_p99_ratio_interval_covers_the_true_ratio_and_narrows_with_more_frames() -> None:
    rng = np.random.default_rng(3)
    off = rng.gamma(4.0, 5.0, 3000)
    on = 1.3 * rng.gamma(4.0, 5.0, 3000)     # true p99 ratio 1.3
    wide = stats.percentile_ratio_interval(on[:150], off[:150])
    narrow = stats.percentile_ratio_interval(on, off)
    assert wide is not None and narrow is not None
    assert narrow[0] < 1.3 < narrow[1] and wide[0] < 1.3 < wide[1]
    assert narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])
    assert narrow[0] > 1.0                    # 3000 frames tell 1.3 from 1.0
    assert stats.percentile_ratio_interval(on, off) == narrow       # seeded
    assert stats.percentile_ratio_interval([1.0], off) is None


def test_p50_interval_of_pairs_sees_through_the_drift_they_share() -> None:
    rng = np.random.default_rng(5)
    drift = rng.uniform(35.0, 55.0, 300)          # the machine's speed, moment by moment
    model = drift * rng.normal(1.0, 0.01, 300)
    node = 1.08 * drift * rng.normal(1.0, 0.01, 300)
    paired = stats.percentile_ratio_interval(node, model, q=50.0, paired=True)
    apart = stats.percentile_ratio_interval(node, model, q=50.0)
    assert paired is not None and apart is not None
    assert paired[0] < 1.08 < paired[1] and paired[1] - paired[0] < 0.02
    assert apart[1] - apart[0] > 3 * (paired[1] - paired[0])   # the drift, counted as noise
    with pytest.raises(ValueError, match="different lengths"):
        stats.percentile_ratio_interval(node, model[:-1], q=50.0, paired=True)


def test_the_p50_target_carries_its_interval() -> None:
    s = stats.summary
    rng = np.random.default_rng(7)
    model = list(rng.uniform(40.0, 50.0, 200))
    node = [1.05 * m + 2.0 for m in model]
    alongside = {"size": "640x480", "adaptation": "off", "model_reference": "alongside",
                 "latency_ms": s(node), "node_inference_ms": s(model),
                 "node_inference_cpu_ms": s(model), "latency_paired_ms": s(node),
                 "node_inference_paired_ms": s(model), "node_inference_cpu_paired_ms": s(model),
                 "model_ms": s(model), "model_cpu_ms": s(model), "model_alongside_ms": s(model),
                 "model_alongside_cpu_ms": s(model), "latency_samples_ms": node,
                 "latency_paired_samples_ms": node, "model_alongside_samples_ms": model,
                 "model_samples_ms": model[::2]}
    r = stats.ratios([alongside])["640x480"]
    lo, hi = r["node_p50_over_model_p50_off_ci95"]
    assert lo <= r["node_p50_over_model_p50_off"] <= hi and hi - lo < 0.01   # exact pairs
    r = stats.ratios([{**alongside, "model_reference": "between slices"}])["640x480"]
    lo_apart, hi_apart = r["node_p50_over_model_p50_off_ci95"]   # all answers, the shares
    assert lo_apart <= r["node_p50_over_model_p50_off"] <= hi_apart
    assert hi_apart - lo_apart > hi - lo
    r = stats.ratios([{**alongside, "model_alongside_samples_ms": []}])["640x480"]
    assert "node_p50_over_model_p50_off_ci95" not in r   # a report without the samples


def test_model_latency_at_a_camera_rate() -> None:
    """With a period, each call starts one period after the one before, or at once when that
    one ran over; it never bursts to catch up."""
    starts: list[float] = []

    def predict(frame: float) -> None:
        starts.append(time.monotonic())
        time.sleep(frame)

    assert len(alongside.model_latency(predict, [0.0], 6, warmup=0, period=0.05)) == 6
    gaps = np.diff(starts)
    assert gaps.min() >= 0.045 and np.median(gaps) < 0.07
    starts.clear()
    cpu: list[float] = []
    times = alongside.model_latency(predict, [0.0, 0.08], 6, warmup=0, period=0.05,
                                     cpu_ms=cpu)
    assert [t > 70 for t in times] == [False, True] * 3
    assert len(cpu) == 6 and max(cpu) < 20   # asleep, not on a CPU
    gaps = np.diff(starts)   # after an 80-ms call the next starts at once, then back on pace
    assert all(g >= 0.045 for g in gaps) and gaps[1::2].max() < 0.1
    starts.clear()
    alongside.model_latency(predict, [0.0], 4, warmup=0)   # back to back
    assert np.diff(starts).max() < 0.02

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    cpu.clear()
    times = alongside.model_latency(spin, [0.03], 3, warmup=0, cpu_ms=cpu)
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
        # 10 Hz: room for the model alongside the node between frames on a busy machine too
        [CLI, "bench", "node", "--pack", str(pack), "--seconds", "3", "--warmup", "0.5",
         "--rate", "10", "--domain", "contrast@5",   # a shift: the gate opens, steps run
         "--model-runs", "10", "--blocks", "2", "--domain-id", str(201 + os.getpid() % 31),
         # answers and steps within 3 s even when other jobs keep both CPUs busy (the default
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
        along = c["model_alongside"]
        if c["adaptation"] == "off":   # the tiny model leaves the node idle between frames
            assert c["model_reference"] == "alongside" and along["not_run_because"] is None
            skipped = along["skipped_busy"] + along["skipped_no_room"]
            assert c["answered"] / 4 <= along["runs"] <= c["answered"] - skipped
            assert along["runs"] / 2 <= along["paired"] <= along["runs"]   # not a slice's last
            assert (c["model_alongside_ms"]["n"] == c["model_alongside_cpu_ms"]["n"]
                    == c["latency_paired_ms"]["n"] == along["paired"])
            assert c["latency_paired_ms"]["p50"] <= c["latency_ms"]["max"]
            assert 0 < c["model_alongside_cpu_ms"]["p50"] <= c["model_alongside_ms"]["p99"] + 0.5
        else:   # it would take the adaptation step's idle CPU
            assert c["model_reference"] == "between slices" and along["runs"] == 0
            assert along["not_run_because"].startswith("adaptation on")
        assert 0 < c["node_inference_cpu_ms"]["p50"] <= c["node_inference_ms"]["p99"]
        queued = c["node_queued_ms"]   # a part of the time outside inference, frame by frame
        assert queued["n"] == c["answered"]
        assert 0 <= queued["p50"] <= c["outside_inference_ms"]["p50"]
        wake = c["results_wake_ms"]   # DDS reception -> our callback: after, on the same clock
        assert wake["n"] == c["answered"] and 0 <= wake["p50"] < lat["p50"]
        assert c["latency_at_callback_ms"]["p50"] >= lat["p50"]
        node = c["node"]
        assert node is not None and node["received"] > 0 and node["classified"] > 0
        assert node["classified"] >= c["answered"] - 1   # counters lag by at most one frame
    assert all(c["node"]["adaptation_steps"] == 0 for c in conditions[:2])
    assert sum(c["node"]["adaptation_steps"] for c in conditions[2:]) > 0
    assert report["settings"]["domain"] == "contrast@5"
    assert all(c["node"]["frames_adapting"] == 0 for c in conditions[:2])   # no gate observes
    assert sum(c["node"]["frames_adapting"] for c in conditions[2:]) > 0    # the adapting path
    assert "/on: the shift gate adapted on" in result.stdout
    by = {(c["size"], c["adaptation"]): c for c in conditions}
    for size, r in report["ratios"].items():
        off, on = by[(size, "off")], by[(size, "on")]
        assert r["model_reference_off"] == "alongside"
        assert r["node_p50_over_model_p50_off"] == pytest.approx(
            off["latency_paired_ms"]["p50"] / off["model_alongside_ms"]["p50"])
        assert r["node_p50_at_callback_over_model_p50_off"] == pytest.approx(
            off["latency_paired_at_callback_ms"]["p50"] / off["model_alongside_ms"]["p50"])
        assert r["node_p50_at_callback_over_model_p50_off"] >= r["node_p50_over_model_p50_off"]
        assert r["node_p50_over_model_between_p50_off"] == pytest.approx(
            off["latency_ms"]["p50"] / off["model_ms"]["p50"])
        assert r["node_p50_over_model_p50_on"] == pytest.approx(
            on["latency_ms"]["p50"] / on["model_ms"]["p50"])
        assert r["p99_on_over_p99_off"] == pytest.approx(
            on["latency_ms"]["p99"] / off["latency_ms"]["p99"])
        assert r["p50_target_met"] == (r["node_p50_over_model_p50_off"] <= 1.10)
        assert r["node_p50_over_model_back_to_back_p50_off"] == pytest.approx(
            off["latency_ms"]["p50"] / off["model_back_to_back_ms"]["p50"])
        assert r["model_p50_over_back_to_back_p50_off"] == pytest.approx(
            off["model_ms"]["p50"] / off["model_back_to_back_ms"]["p50"])
        assert r["inference_cpu_p50_over_model_cpu_p50_off"] == pytest.approx(
            off["node_inference_cpu_paired_ms"]["p50"] / off["model_alongside_cpu_ms"]["p50"])
        lo, hi = r["p99_on_over_p99_off_ci95"]
        assert 0 < lo <= hi
        lo, hi = r["node_p50_over_model_p50_off_ci95"]   # resampling the pairs
        assert 0 < lo <= hi
        assert (len(off["latency_paired_samples_ms"]) == len(off["model_alongside_samples_ms"])
                == off["model_alongside"]["paired"])
        assert len(off["model_samples_ms"]) == off["model_ms"]["n"]
        assert on["latency_samples_ms"] and len(on["latency_samples_ms"]) == on["answered"]
        assert r["node_added_p50_ms"] == pytest.approx(
            off["latency_paired_ms"]["p50"] - off["model_alongside_ms"]["p50"])
    relay = report["relay"]    # the model-free relay node answered the same streams
    assert [c["size"] for c in relay] == ["224x224", "640x480"]
    for c in relay:
        assert c["sent"] > 20 and 0 < c["answered"] <= c["sent"]
        assert 0 < c["latency_ms"]["p50"] <= c["latency_ms"]["p99"]
        assert c["latency_at_callback_ms"]["p50"] >= c["latency_ms"]["p50"]
        r = report["ratios"][c["size"]]
        assert r["floor_p50_ms"] == c["latency_ms"]["p50"]
        assert r["floor_p50_over_model_p50"] == pytest.approx(
            c["latency_ms"]["p50"] / by[(c["size"], "off")]["model_alongside_ms"]["p50"])
    assert "transport floor (relay_node, no model)" in result.stdout
    assert "from the camera callback to the inference thread (queued_ms)" in result.stdout
    assert "ms p50 after its DDS reception (not counted)" in result.stdout
    assert "with e2e up to this process's callback instead" in result.stdout
    assert "against the model back to back" in result.stdout
    assert "note: model alongside 224x224/off: " in result.stdout
    assert "against the model between the slices" in result.stdout
    assert "p50 / model p50 (adaptation off; the model alongside the stream, against the " \
        "node's next answers) = " in result.stdout
    assert result.stdout.count("95 % bootstrap interval") == 4   # p50 and p99, both sizes
    assert report["machine"]["cpus"] >= 1 and report["settings"]["rate_hz"] == 10.0
