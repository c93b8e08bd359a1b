"""``zoa-ros bench node``: end-to-end latency and dropped frames of a live ``zoa_node``, next to
the bare model's own latency, all measured in one run on this machine.

``zoa_node`` runs as its own process with the shipped ``config/zoa.yaml`` and the Fast DDS
large-image profile; this process publishes rgb8 frames (the photos bundled with scikit-image,
resized) with sensor-data QoS at ``--rate`` Hz and subscribes to ``classification_json``.
Latency = the arrival of a result here minus the header stamp of the frame it answers (matched
by the stamp in the JSON; one clock). The stamp is taken just before the prebuilt message goes
out, and the arrival is the result's DDS reception time in this process (rmw_fastrtps reports
it), so neither this process's copying of pixels nor the wait for its own executor to take the
result is counted against the node; the latter is reported apart (``results_wake_ms``). A
frame never answered counts as dropped; the node's ``/diagnostics`` counters split drops into
frames overwritten in its newest-frame slot (the model was busy) and frames that never reached
its callback.

Conditions: every size x adaptation off / on (one node process per setting: ``adaptation.enabled``
false / true, everything else from the config, so "on" is the default ZOA method with the
config's interval). Each condition: the model's latency (``Engine.predict`` on one frame of that
size, the node's per-frame computation, in this process while no frames flow, from one worker
thread with ``inference.threads`` CPU threads and every other thread of this process on one, as
the node runs its inference (see :mod:`zoa_ros.core.threads`)), a warm-up stream that is not
counted, a pause until the node has answered and published fresh counters, then the measured
stream in ``--blocks`` slices, with the model's runs shared out before, between and after
them: the speed of a shared machine drifts by a fifth or more within minutes, and measured only
before and after the stream the model saw other minutes than the node.

The model runs twice in each share: once per camera period (``1 / --rate``, idle in between,
the duty cycle of the node's inference thread) and back to back; their ratio is printed (a CPU
that idles between frames may compute each one slower than a CPU kept busy: power states,
caches, and on a virtual machine the hypervisor's scheduling; docs/RESULTS.md §4.7).

With adaptation off, the model also runs *alongside* the stream: after each of the node's
answers, on the frame that answer was for, while the node waits for its next frame, and only
when it is expected to end before that frame is due (as long as its last run took). It sees the
machine within one camera period of the node, so the drift between shares drops out. The target
then compares the two over the same moments: each run against the node's answer to the next
frame (not to the frame before it, whose early answer made room for the run: that would pick the
node's lucky frames). This is the reference for the p50 target where the model ran after at
least a quarter of the answers (``model_reference`` in the JSON); otherwise (a machine too slow
for the rate), or with ``--no-model-alongside``, all of the node's answers are held against the
shares once per camera period. With adaptation on it does not run: it would take the idle CPU
that the node's adaptation step runs on. Both the node (``inference_cpu_ms`` in its results) and
the model here also report each frame's CPU time on the computing thread, which tells whether
the node's inference is slower because it waits or because it computes slower. Targets: at p50
the node adds <= 10 % to the model (node p50 / the reference's p50, adaptation off) and
adaptation in the background raises p99 by <= 50 % (p99 on / p99 off). Each of the two ratios
comes with a 95 % bootstrap interval (the p50 one resampling the pairs alongside), which says
whether its verdict would hold in another run of the same length on the same machine.

Last, the same streams go to :mod:`zoa_ros.ros.relay_node`, which answers every frame without a
model (same QoS, same Fast DDS profile, the same pixel read and result message): its latency
is the transport floor any Python node pays here, printed next to the time the node adds.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

TARGET_P50_RATIO = 1.10   # node p50 / model p50, adaptation off
TARGET_P99_RATIO = 1.50   # node p99 with adaptation on / off
REFERENCES = {"alongside": "alongside the stream, against the node's next answers",
              "between slices": "once per camera period, between the stream's slices"}
SETTLE_S = 3.0            # after a stream: wait this long at most for the last frame's answer
DIAG_WAIT_S = 5.0         # and this long at most for fresh /diagnostics counters
START_TIMEOUT_S = 180.0
LEGEND = (
    "latencies in ms; e2e = header stamp (taken as the frame goes out) -> the "
    "classification_json's DDS reception in this process; node inf = the node's "
    "inference_ms (from the JSON: Engine.predict on the frame's pixels, resize and crop "
    "included); e2e-inf = the rest (transport both ways, waiting in the newest-frame slot while "
    "the model is busy, reading the pixels, publishing); dropped = sent - answered; slot = "
    "overwritten in the node's newest-frame slot; lost = never reached the node's callback "
    "(transport, or pushed out of its DDS queue of qos.depth while it was busy; both from the "
    "node's /diagnostics); model = wall time of Engine.predict on one frame, resize and crop "
    "included, in the bench process (a worker thread), once per camera period, measured before, "
    "between and after the slices of each condition's stream; b2b = the same, back to back; "
    "along = the same model once after each of the node's answers, alongside the stream "
    "(adaptation off); p50/ref = e2e p50 / model p50 over the same moments: each along run and "
    "the node's answer to the next frame (where along stands as the target's reference), else "
    "all answers and model")


def add_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("node", help="end-to-end latency and drops of a live zoa_node",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", help="model pack; default: the demo's W8A8 EfficientNet-Lite0 "
                   "(built in --out on first use)")
    p.add_argument("--quant", default="w8a8", choices=("none", "w8a8", "w6a6", "w4a4"),
                   help="quantization of the default pack (without --pack)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per condition")
    p.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds per condition")
    p.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    p.add_argument("--sizes", default="224x224,640x480", help="WxH,... rgb8 frame sizes")
    p.add_argument("--frames-source", default="photos",
                   help="'photos' (the scikit-image sample photos) or an image folder")
    p.add_argument("--model-runs", type=int, default=100,
                   help="Engine.predict calls per condition for the model's latency")
    p.add_argument("--blocks", type=int, default=4,
                   help="stream each condition in this many slices, with a share of the "
                        "model's runs before, between and after them, so that the model is "
                        "measured across the same minutes as the node")
    p.add_argument("--model-alongside", action=argparse.BooleanOptionalAction, default=True,
                   help="with adaptation off, also run the model after the node's answers "
                        "while it waits for its next frame: the target's reference where it "
                        "ran after at least a quarter of them (default: on)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra zoa_node parameter (repeatable; default: the shipped config)")
    p.add_argument("--domain-id", type=int, default=201 + os.getpid() % 31,
                   help="ROS_DOMAIN_ID of the isolated local graph (default %(default)s)")
    p.add_argument("--out", default="out/bench_node", help="folder for logs and the default pack")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(run=run)


# ---- pure helpers (no ROS) ----------------------------------------------------------------------
def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"224x224,640x480"`` -> [(224, 224), (640, 480)] as (width, height)."""
    sizes = []
    for item in spec.split(","):
        w, sep, h = item.strip().lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"bad size {item!r}: expected WIDTHxHEIGHT, e.g. 640x480")
        sizes.append((int(w), int(h)))
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["adaptation.min_period_s:=0.5"]`` -> {"adaptation.min_period_s": 0.5} (YAML values)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name.strip():
            raise ValueError(f"bad --param {item!r}: expected NAME:=VALUE")
        out[name.strip()] = yaml.safe_load(value)
    return out


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99, mean, max of latencies in ms (None when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def percentile_ratio_interval(num: Sequence[float], den: Sequence[float], q: float = 99.0,
                              level: float = 0.95, draws: int = 2000, seed: int = 0,
                              paired: bool = False) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of ``percentile(num, q) / percentile(den, q)``: both
    samples resampled ``draws`` times (seeded, so a report is reproducible), independently, or
    with ``paired`` as pairs (``num[i]`` with ``den[i]``, measured in the same moments, so the
    machine's drift that moves both together drops out of the interval). ``None`` with fewer
    than two values on either side. A p99 of a few hundred frames rests on its few largest
    values, and a p50 ratio near its target moves by a few hundredths between runs on a shared
    machine; the interval says how much."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    if paired and a.size != b.size:
        raise ValueError(f"paired samples of different lengths: {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, (draws, a.size))
    top = np.percentile(a[picks], q, axis=1)
    if not paired:
        picks = rng.integers(0, b.size, (draws, b.size))
    bottom = np.percentile(b[picks], q, axis=1)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(top / bottom, [tail, 100.0 - tail])
    return float(lo), float(hi)


class Reference(NamedTuple):
    """What a condition's p50 target compares, over the same moments: the node's latency and its
    inference's CPU time against the model's latency and CPU time."""

    name: str             # "alongside" or "between slices"
    node_ms: dict         # summaries (:func:`summary`): e2e latency
    node_inference_ms: dict
    node_cpu_ms: dict
    model_ms: dict
    model_cpu_ms: dict
    node_samples_ms: Sequence[float] = ()    # e2e latencies and the model's: in pairs where
    model_samples_ms: Sequence[float] = ()   # the model ran alongside
    node_at_callback_ms: dict | None = None  # e2e up to the bench's callback (older reports)

    def p50_interval(self) -> tuple[float, float] | None:
        """95 % bootstrap interval of node p50 / model p50: resampling the pairs alongside,
        else both samples independently (that one does not see the drift between the shares,
        so it is narrower than the truth)."""
        return percentile_ratio_interval(self.node_samples_ms, self.model_samples_ms, q=50.0,
                                         paired=self.name == "alongside")


def reference(condition: dict) -> Reference:
    """The model's runs alongside the stream and the node's answers paired with them, where
    they stand as the reference; else the model once per camera period between the stream's
    slices and all of the node's answers."""
    c = condition
    if c.get("model_reference") == "alongside":
        return Reference("alongside", c["latency_paired_ms"], c["node_inference_paired_ms"],
                         c["node_inference_cpu_paired_ms"], c["model_alongside_ms"],
                         c["model_alongside_cpu_ms"], c.get("latency_paired_samples_ms", ()),
                         c.get("model_alongside_samples_ms", ()),
                         c.get("latency_paired_at_callback_ms"))
    return Reference("between slices", c["latency_ms"], c["node_inference_ms"],
                     c["node_inference_cpu_ms"], c["model_ms"], c.get("model_cpu_ms") or {},
                     c.get("latency_samples_ms", ()), c.get("model_samples_ms", ()),
                     c.get("latency_at_callback_ms"))


def ratios(conditions: Sequence[dict], relay: Sequence[dict] = ()) -> dict[str, dict]:
    """Per size: node p50 / model p50 (off and on, against each condition's
    :func:`reference`) and p99 on / p99 off, with pass/fail; with ``relay`` conditions also the
    transport floor against the model and the node."""
    out: dict[str, dict] = {}
    floors = {c["size"]: c["latency_ms"]["p50"] for c in relay}
    for size in dict.fromkeys(c["size"] for c in conditions):
        by = {c["adaptation"]: c for c in conditions if c["size"] == size}
        off, on = by.get("off"), by.get("on")
        row: dict[str, Any] = {}
        for name, c in (("off", off), ("on", on)):
            if c is not None:   # also against the node's own Engine.predict time
                ref = reference(c)
                row[f"model_reference_{name}"] = ref.name
                row[f"node_p50_over_model_p50_{name}"] = ratio(ref.node_ms["p50"],
                                                               ref.model_ms["p50"])
                row[f"node_p50_over_inference_p50_{name}"] = ratio(
                    c["latency_ms"]["p50"], c["node_inference_ms"]["p50"])
        r50 = row.get("node_p50_over_model_p50_off")
        row["p50_target_met"] = None if r50 is None else r50 <= TARGET_P50_RATIO
        if off is None:
            out[size] = row
            continue
        ref = reference(off)
        interval = ref.p50_interval()
        if interval is not None:
            row["node_p50_over_model_p50_off_ci95"] = list(interval)
        row["node_p50_over_model_between_p50_off"] = ratio(off["latency_ms"]["p50"],
                                                           off["model_ms"]["p50"])
        if ref.node_at_callback_ms:   # e2e up to this process's callback, as reports before
            row["node_p50_at_callback_over_model_p50_off"] = ratio(
                ref.node_at_callback_ms["p50"], ref.model_ms["p50"])
        if ref.name == "alongside":   # the two references side by side
            row["model_alongside_p50_over_between_p50_off"] = ratio(ref.model_ms["p50"],
                                                                    off["model_ms"]["p50"])
        if "model_back_to_back_ms" in off:
            tight = off["model_back_to_back_ms"]["p50"]
            row["node_p50_over_model_back_to_back_p50_off"] = ratio(off["latency_ms"]["p50"],
                                                                    tight)
            row["model_p50_over_back_to_back_p50_off"] = ratio(off["model_ms"]["p50"], tight)
        if ref.model_cpu_ms:   # computing slower, or waiting?
            row["inference_cpu_p50_over_model_cpu_p50_off"] = ratio(ref.node_cpu_ms["p50"],
                                                                    ref.model_cpu_ms["p50"])
        if ref.node_ms["p50"] is not None and ref.model_ms["p50"]:
            model = ref.model_ms["p50"]
            row["node_added_p50_ms"] = ref.node_ms["p50"] - model
            row["target_added_p50_ms"] = (TARGET_P50_RATIO - 1) * model
            floor = floors.get(size)
            if floor is not None:
                row["floor_p50_ms"] = floor
                row["floor_p50_over_model_p50"] = floor / model
        if on is not None:
            r99 = ratio(on["latency_ms"]["p99"], off["latency_ms"]["p99"])
            row["p99_on_over_p99_off"] = r99
            row["p99_target_met"] = None if r99 is None else r99 <= TARGET_P99_RATIO
            interval = percentile_ratio_interval(on.get("latency_samples_ms", ()),
                                                 off.get("latency_samples_ms", ()))
            if interval is not None:
                row["p99_on_over_p99_off_ci95"] = list(interval)
        out[size] = row
    return out


def machine() -> dict[str, Any]:
    """What this ran on (the numbers only mean something together with it)."""
    import torch

    from zoa_ros.core.cpus import usable_cpus

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "cpus_usable": usable_cpus(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def model_latency(predict: Callable[[np.ndarray], object], frames: Sequence[np.ndarray],
                  runs: int, warmup: int = 3, period: float = 0.0,
                  cpu_ms: list[float] | None = None) -> list[float]:
    """Wall time (ms) of ``predict(frame)`` over ``runs`` calls, cycling through ``frames``:
    back to back, or with ``period`` > 0 each call starting ``period`` seconds after the one
    before (at once when that one took longer), as a camera at ``1 / period`` Hz feeds the node.
    ``cpu_ms`` receives each call's CPU time on the calling thread."""
    if runs < 1:
        return []
    for i in range(warmup):
        predict(frames[i % len(frames)])
    times: list[float] = []
    start = time.perf_counter()
    for i in range(runs):
        if period > 0 and times:
            time.sleep(max(0.0, start + period - time.perf_counter()))
        frame = frames[i % len(frames)]
        start, cpu_start = time.perf_counter(), time.thread_time()
        predict(frame)
        times.append((time.perf_counter() - start) * 1e3)
        if cpu_ms is not None:
            cpu_ms.append((time.thread_time() - cpu_start) * 1e3)
    return times


def format_report(report: dict) -> str:
    """The console table, the ratios against their targets and the machine line."""
    lines = [f"{'size':9s} {'adapt':5s} {'sent':>5s} {'answd':>5s} {'dropped':>12s} "
             f"{'slot':>5s} {'lost':>4s} {'e2e p50':>7s} {'e2e p99':>7s} {'node inf p50':>12s} "
             f"{'e2e-inf p50':>11s} {'model p50':>9s} {'model p99':>9s} {'b2b p50':>7s} "
             f"{'along p50':>9s} {'p50/ref':>7s} {'steps':>5s}"]
    for c in report["conditions"]:
        node = c["node"] or {}
        lat, mod, ref = c["latency_ms"], c["model_ms"], reference(c)
        lines.append(
            f"{c['size']:9s} {c['adaptation']:5s} {c['sent']:5d} {c['answered']:5d} "
            f"{c['dropped']:5d} ({c['dropped_pct']:4.1f}%) "
            f"{_num(node.get('dropped_in_slot'), 5)} {_num(node.get('lost_in_transport'), 4)} "
            f"{_num(lat['p50'], 7, 1)} {_num(lat['p99'], 7, 1)} "
            f"{_num(c['node_inference_ms']['p50'], 12, 1)} "
            f"{_num(c['outside_inference_ms']['p50'], 11, 1)} {_num(mod['p50'], 9, 1)} "
            f"{_num(mod['p99'], 9, 1)} "
            f"{_num((c.get('model_back_to_back_ms') or {}).get('p50'), 7, 1)} "
            f"{_num((c.get('model_alongside_ms') or {}).get('p50'), 9, 1)} "
            f"{_num(ratio(ref.node_ms['p50'], ref.model_ms['p50']), 7, 2)} "
            f"{_num(node.get('adaptation_steps'), 5)}")
    lines.append(textwrap.fill(LEGEND, 100))
    for c in report["conditions"]:
        blocks = c["model_ms"].get("p50_blocks") or []
        low, high = (min(blocks), max(blocks)) if blocks else (None, None)
        if low and high > 1.25 * low:
            lines.append(f"note: model p50 ranged from {low:.1f} to {high:.1f} ms in the "
                         f"shares of {c['size']}/{c['adaptation']}: the machine's speed or "
                         f"other load changed meanwhile")
        lines.extend(_alongside_note(c))
    lines.append("")
    for size, r in report["ratios"].items():
        lines.append(f"{size}: node p50 / model p50 (adaptation off; the model "
                     f"{REFERENCES.get(r.get('model_reference_off'), '?')}) = "
                     f"{_num(r.get('node_p50_over_model_p50_off'), 0, 2)} (target <= "
                     f"{TARGET_P50_RATIO:.2f}: {_verdict(r.get('p50_target_met'))})"
                     + _interval(r.get("node_p50_over_model_p50_off_ci95"), TARGET_P50_RATIO)
                     + f"; with adaptation on (the model "
                     f"{REFERENCES.get(r.get('model_reference_on'), '?')}) "
                     f"{_num(r.get('node_p50_over_model_p50_on'), 0, 2)}")
        if "model_alongside_p50_over_between_p50_off" in r:
            lines.append(f"{size}: against the model between the slices: node p50 / model p50 "
                         f"= {_num(r.get('node_p50_over_model_between_p50_off'), 0, 2)}; the "
                         f"model alongside / between the slices = "
                         f"{_num(r['model_alongside_p50_over_between_p50_off'], 0, 2)}")
        if "node_p50_over_model_back_to_back_p50_off" in r:
            lines.append(f"{size}: against the model back to back: node p50 / model p50 = "
                         f"{_num(r['node_p50_over_model_back_to_back_p50_off'], 0, 2)}; the "
                         f"model once per camera period / back to back = "
                         f"{_num(r.get('model_p50_over_back_to_back_p50_off'), 0, 2)}")
        lines.append(f"{size}: node p50 / its own inference p50 (same frames, same process; "
                     f"robust to other load) = "
                     f"{_num(r.get('node_p50_over_inference_p50_off'), 0, 2)} off, "
                     f"{_num(r.get('node_p50_over_inference_p50_on'), 0, 2)} on")
        off = next((c for c in report["conditions"]
                    if c["size"] == size and c["adaptation"] == "off"), None)
        if off is not None and "inference_cpu_p50_over_model_cpu_p50_off" in r:
            ref = reference(off)
            lines.append(f"{size}: CPU time p50 (adaptation off): the node's inference "
                         f"{_num(ref.node_cpu_ms['p50'], 0, 1)} of "
                         f"{_num(ref.node_inference_ms['p50'], 0, 1)} ms, the model "
                         f"{REFERENCES[ref.name]} {_num(ref.model_cpu_ms['p50'], 0, 1)} of "
                         f"{_num(ref.model_ms['p50'], 0, 1)} ms; node / model = "
                         f"{_num(r['inference_cpu_p50_over_model_cpu_p50_off'], 0, 2)}")
        if "floor_p50_ms" in r:
            queued = (off or {}).get("node_queued_ms", {}).get("p50")
            wake = (off or {}).get("results_wake_ms", {}).get("p50")
            lines.append(f"{size}: the node adds {r['node_added_p50_ms']:.1f} ms to the model's "
                         f"p50 (target <= {r['target_added_p50_ms']:.1f} ms); the transport "
                         f"floor (relay_node, no model) is {r['floor_p50_ms']:.1f} ms p50 = "
                         f"{r['floor_p50_over_model_p50']:.2f} x the model's p50; from the "
                         f"camera callback to the inference thread (queued_ms) "
                         f"{_num(queued, 0, 2)} ms p50; this process took each result "
                         f"{_num(wake, 0, 2)} ms p50 after its DDS reception (not counted)")
        if "node_p50_at_callback_over_model_p50_off" in r:
            lines.append(f"{size}: with e2e up to this process's callback instead (as reports "
                         f"before the DDS reception time had it): node p50 / model p50 = "
                         f"{_num(r['node_p50_at_callback_over_model_p50_off'], 0, 2)}")
        if "p99_on_over_p99_off" in r:
            lines.append(f"{size}: p99 adaptation on / off = "
                         f"{_num(r['p99_on_over_p99_off'], 0, 2)} (target <= "
                         f"{TARGET_P99_RATIO:.2f}: {_verdict(r.get('p99_target_met'))})"
                         + _interval(r.get("p99_on_over_p99_off_ci95"), TARGET_P99_RATIO))
    m, s = report["machine"], report["settings"]
    lines.append("")
    lines.append(f"machine: {m['cpu']}, {m['cpus_usable']} of {m['cpus']} CPUs usable, "
                 f"{m['platform']}, torch {m['torch']} ({m['torch_threads']} threads); load "
                 f"average {_load(m['load_average'])} at start, "
                 f"{_load(report['load_average_end'])} at end (other processes share the CPU)")
    lines.append(f"pack {s['pack']}; {s['rate_hz']:g} Hz, {s['seconds']:g} s per condition "
                 f"(+{s['warmup_s']:g} s warm-up); frames: {s['frames_source']}; malloc "
                 f"thresholds (node and model): "
                 f"{'raised' if s['keep_freed_memory'] else 'glibc defaults'}; node "
                 f"log {s['node_logs']}")
    return "\n".join(lines)


def _alongside_note(c: dict) -> list[str]:
    """What became of the model alongside a condition's stream (adaptation off)."""
    along = c.get("model_alongside") or {}
    name = f"{c['size']}/{c['adaptation']}"
    if not along or c["adaptation"] != "off":
        return []
    if along.get("not_run_because"):
        return [f"note: no model alongside {name} as the reference: "
                f"{along['not_run_because']}"]
    return [f"note: model alongside {name}: {along['runs']} runs; answers without a run: "
            f"{along['skipped_busy']} (the model still busy), "
            f"{along['skipped_no_room']} (too close to the camera's next frame); "
            f"{along['overlapped_next_frame']} runs overlapped the camera's next frame"]


def _num(value: float | int | None, width: int, digits: int = 0) -> str:
    if value is None:
        return f"{'n/a':>{width}s}"
    return f"{value:{width}.{digits}f}" if digits else f"{round(value):{width}d}"


def _interval(interval: Sequence[float] | None, target: float) -> str:
    """``; 95 % bootstrap interval lo-hi`` and whether the verdict could flip at this size."""
    if not interval:
        return ""
    lo, hi = interval
    firm = hi <= target or lo > target
    return (f"; 95 % bootstrap interval {lo:.2f}-{hi:.2f}: "
            + ("the verdict holds at this sample size" if firm else
               "either verdict is possible at this sample size (measure longer: --seconds)"))


def _load(values: Sequence[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "n/a"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


# ---- the run ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes)
    extra = parse_params(args.param)
    if (args.seconds <= 0 or args.rate <= 0 or args.warmup < 0 or args.blocks < 1
            or args.model_runs < args.blocks + 1):
        raise ValueError("--seconds and --rate must be > 0, --warmup >= 0, --blocks >= 1, "
                         "--model-runs >= blocks + 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pack_path = Path(args.pack) if args.pack else _default_pack(out, args.quant)
    if not pack_path.is_file():
        raise FileNotFoundError(f"no such pack: {pack_path}")
    frames = {size: frames_at(args.frames_source, size) for size in sizes}

    from zoa_ros.ros import params
    from zoa_ros.ros.node_process import ros_env

    env = ros_env(domain_id=args.domain_id, ros_home=(out / "ros").resolve())
    params.use_default_fastdds_profile(env)
    os.environ.update(env)   # this process joins the same isolated graph
    import rclpy

    rclpy.init()
    try:
        report = _Bench(args, out, pack_path.resolve(), frames, extra, env).run()
    except RuntimeError as e:
        print(f"zoa-ros bench node: {e}")
        return 1
    finally:
        rclpy.try_shutdown()
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _default_pack(out: Path, quant: str) -> Path:
    """The demo's default pack (W8A8 EfficientNet-Lite0, pip-packaged weights), built once."""
    from zoa_ros.core.sample_photos import write_photos
    from zoa_ros.tools.demo import _ensure_pack

    path = out / f"efficientnet_lite0_{quant}.zoapack"
    _ensure_pack(path, write_photos(out / "photos"), quant)
    return path


def frames_at(source: str, size: tuple[int, int]) -> list[np.ndarray]:
    """uint8 HxWx3 RGB frames of ``size`` (w, h) from the sample photos or an image folder."""
    from zoa_ros.ros.virtual_camera import render_frames

    if source == "photos":
        from zoa_ros.core.sample_photos import PHOTOS, load_photo
        images = [load_photo(n) for n in PHOTOS]
    else:
        from zoa_ros.core.images import find_images, read_rgb
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"--frames-source: no such folder {source}")
        images = [read_rgb(p) for p in find_images(folder)[:32]]
        if not images:
            raise ValueError(f"--frames-source: no images in {source}")
    rendered = render_frames(images, {"clean"}, size, severity=1)
    return [rendered[("clean", i)] for i in range(len(images))]


def _node_params(extra: dict[str, Any]) -> dict[str, Any]:
    """The node's parameters: the shipped config (flattened) with ``extra`` on top."""
    import yaml

    from zoa_ros.ros.params import SPECS, config_path

    values = {s.name: s.default for s in SPECS}
    path = config_path("zoa.yaml")
    if path is not None:
        doc = yaml.safe_load(path.read_text()) or {}
        values.update(_flatten(doc.get("zoa_node", {}).get("ros__parameters", {})))
    values.update(extra)
    return values


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _model_engine(pack_path: Path, values: dict[str, Any]) -> Any:
    """The engine the node builds from ``values`` (same pack, method, preset, BN statistics),
    with adaptation off: its ``predict`` is the model's per-frame cost."""
    from dataclasses import replace

    from zoa_ros.core.engine import Engine
    from zoa_ros.core.pack import ModelPack
    from zoa_ros.ros.node import ZoaNode

    pack = ModelPack.load(pack_path)
    config = ZoaNode.engine_config(values.__getitem__, len(pack.labels))
    return Engine(pack, replace(config, adapt_enabled=False))


@dataclass
class _Diag:
    """The newest counters from the node's /diagnostics and when they arrived."""

    at: float = -1.0
    values: dict[str, str] = field(default_factory=dict)


class _Answer(NamedTuple):
    """The node's answer to one frame, as this process received it."""

    e2e_ms: float           # header stamp -> the result's DDS reception here
    inference_ms: float     # the node's Engine.predict on the frame
    cpu_ms: float           # its CPU time on the classifying thread
    stamp: int              # the frame's header stamp, ns
    queued_ms: float = 0.0  # in the node: camera callback -> start of the classification
    wake_ms: float = 0.0    # here: the result's DDS reception -> this process's callback

    @property
    def at_callback_ms(self) -> float:
        """Header stamp -> this process's callback: e2e as reports before the DDS reception
        time had it."""
        return self.e2e_ms + self.wake_ms


@dataclass
class _Alongside:
    """The model run after the node's answers (where it has room) on one condition's stream."""

    key: str
    frames: list[np.ndarray]
    predict: Callable[[np.ndarray], object]
    expected_ms: float    # how long a run takes: the first share's p50, then the last run's
    idle: threading.Event = field(default_factory=threading.Event)
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)   # the frame each run was on
    busy: int = 0         # answers that came while the model still ran: no run for them
    no_room: int = 0      # answers too close to the camera's next frame: no run either
    overlapped: int = 0   # runs during which the camera sent its next frame all the same

    def __post_init__(self) -> None:
        self.idle.set()


class _Bench:
    """Camera, result and diagnostics listener in this process; the node in another."""

    def __init__(self, args: argparse.Namespace, out: Path, pack_path: Path,
                 frames: dict[tuple[int, int], list[np.ndarray]], extra: dict[str, Any],
                 env: dict[str, str]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from zoa_ros.ros.virtual_camera import VirtualCamera

        self.args, self.out, self.pack_path, self.frames = args, out, pack_path, frames
        self.extra, self.env = extra, env
        self.machine = machine()
        self.camera = VirtualCamera(topic="image", name="bench_camera")
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.results_sub = self.camera.create_subscription(
            String, "classification_json", self._on_result, reliable)
        self.diag_sub = self.camera.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.lock = threading.Condition()
        self.phase: dict[int, tuple[str, int]] = {}     # stamp (ns) -> condition key, frame
        self.last_sent = 0.0                            # time.monotonic() of the newest frame
        self.next_due = 0.0                             # and of the next one
        self.alongside: _Alongside | None = None
        self.answers: dict[str, list[_Answer]] = {}   # condition key -> answers
        self.newest_answered = -1
        self.diag = _Diag()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.camera)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="bench_model")

    # ---- callbacks (executor thread) ----
    def _on_result(self, msg: Any, info: Any) -> None:
        now = self.camera.get_clock().now().nanoseconds
        received = info.get("received_timestamp") or now   # 0 where the middleware has none
        result = json.loads(msg.data)
        stamp = result["stamp"]["sec"] * 1_000_000_000 + result["stamp"]["nanosec"]
        with self.lock:
            key, index = self.phase.get(stamp, (None, 0))
            if key is not None:
                self.answers.setdefault(key, []).append(_Answer(
                    (received - stamp) * 1e-6, float(result["inference_ms"]),
                    float(result["inference_cpu_ms"]), stamp,
                    float(result.get("queued_ms", 0.0)), (now - received) * 1e-6))
            self.newest_answered = max(self.newest_answered, stamp)
            self.lock.notify_all()
        along = self.alongside
        if along is not None and key == along.key:
            if not along.idle.is_set():
                along.busy += 1
            elif (self.next_due - time.monotonic()) * 1e3 < along.expected_ms:
                along.no_room += 1   # it would still run when the node's next frame arrives
            else:   # the node waits for the camera's next frame
                along.idle.clear()
                self.model_thread.submit(self._run_alongside, along, index, stamp)

    def _run_alongside(self, along: _Alongside, index: int, stamp: int) -> None:
        """The model once on the frame the node just answered (on the model thread)."""
        try:
            started = time.monotonic()
            frame = along.frames[index % len(along.frames)]
            along.wall_ms += model_latency(along.predict, [frame], 1, 0, cpu_ms=along.cpu_ms)
            along.expected_ms = along.wall_ms[-1]
            along.stamps.append(stamp)
            if self.last_sent > started:
                along.overlapped += 1
        finally:
            along.idle.set()

    def _on_diag(self, msg: Any) -> None:
        from zoa_ros.ros.diagnostics import values_of

        values: dict[str, str] = {}
        for status in msg.status:
            if not status.name.startswith("/zoa_node:"):
                continue
            prefix = "camera." if ": camera " in status.name else ""
            values.update({prefix + k: v for k, v in values_of(status).items()})
        if values:
            with self.lock:
                self.diag = _Diag(time.monotonic(), values)
                self.lock.notify_all()

    # ---- orchestration ----
    def run(self) -> dict:
        from zoa_ros.core.cpus import format_cpus, parse_cpus, thread_cpus
        from zoa_ros.core.threads import use_compute_threads
        from zoa_ros.ros.node_process import NodeProcess

        values = _node_params(self.extra)
        print(f"loading {self.pack_path} for the model's latency ...", flush=True)
        use_compute_threads(1)    # as in the node: only the model thread uses several CPUs
        engine = _model_engine(self.pack_path, values)
        cpus = parse_cpus(values["inference.cpus"])
        if cpus:   # as the node's inference thread (this process's other threads stay put)
            self.model_thread.submit(os.sched_setaffinity, 0, cpus).result()
        model_cpus = format_cpus(self.model_thread.submit(thread_cpus).result())
        self.model_thread.submit(use_compute_threads, int(values["inference.threads"])).result()
        use_compute_threads(1)
        self.spinner.start()
        conditions = []
        logs = []
        try:
            for adapt in (False, True):
                label = "on" if adapt else "off"
                log = self.out / f"node_adaptation_{label}.log"
                log.unlink(missing_ok=True)
                logs.append(str(log))
                overrides = {"pack": self.pack_path, "adaptation.enabled": adapt,
                             "knowledge.autoload": False, "knowledge.autosave": False,
                             "knowledge.bank_path": (self.out / "bench.zoabank").resolve(),
                             **self.extra}
                print(f"starting zoa_node (adaptation {label}) ...", flush=True)
                node = NodeProcess(overrides, self.env, log)
                try:
                    self._wait_for_node(node)
                    for size, frames in self.frames.items():
                        conditions.append(self._condition(size, label, frames, engine))
                        if not node.alive():
                            raise RuntimeError(f"zoa_node exited; see {log}")
                finally:
                    node.stop()
            relay = self._relay(values, logs)
        finally:
            self.executor.shutdown()
            self.spinner.join(timeout=5)
            self.model_thread.shutdown()
            engine.close()
        a = self.args
        return {
            "machine": self.machine,
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "settings": {"pack": str(self.pack_path), "rate_hz": a.rate, "seconds": a.seconds,
                         "warmup_s": a.warmup, "sizes": a.sizes,
                         "frames_source": a.frames_source, "model_runs": a.model_runs,
                         "blocks": a.blocks, "model_thread_cpus": model_cpus,
                         "model_alongside": a.model_alongside,
                         "encoding": "rgb8", "camera_qos": "sensor data (best effort)",
                         "params_overrides": {k: str(v) for k, v in self.extra.items()},
                         "adaptation_method": values["adaptation.method"],
                         "adaptation_interval_frames": values["adaptation.interval_frames"],
                         "adaptation_batch_size": values["adaptation.batch_size"],
                         "adaptation_min_period_s": values["adaptation.min_period_s"],
                         "keep_freed_memory": bool(values["inference.keep_freed_memory"]),
                         "fastdds_profile": self.env.get("FASTDDS_DEFAULT_PROFILES_FILE"),
                         "ros_domain_id": a.domain_id, "node_logs": ", ".join(logs)},
            "conditions": conditions,
            "relay": relay,
            "ratios": ratios(conditions, relay),
            "targets": {"node_p50_over_model_p50_max": TARGET_P50_RATIO,
                        "p99_on_over_p99_off_max": TARGET_P99_RATIO},
        }

    def _relay(self, values: dict[str, Any], logs: list[str]) -> list[dict]:
        """The same streams through :mod:`zoa_ros.ros.relay_node`: the transport floor."""
        from zoa_ros.ros.node_process import NodeProcess

        log = self.out / "relay_node.log"
        log.unlink(missing_ok=True)
        logs.append(str(log))
        print("starting relay_node (no model: the transport floor) ...", flush=True)
        qos = {name: values[name] for name in ("qos.depth", "qos.reliability")}
        relay = NodeProcess(qos, self.env, log, module="zoa_ros.ros.relay_node",
                            params_file=False)
        try:
            self._wait_for_node(relay, diagnostics=False)
            out = []
            for size, frames in self.frames.items():
                key = f"{size[0]}x{size[1]}/relay"
                sent, elapsed, answers = self._measure(key, frames)
                out.append({"size": f"{size[0]}x{size[1]}", "seconds": elapsed, "sent": sent,
                            "answered": len(answers),
                            "latency_ms": summary([a.e2e_ms for a in answers]),
                            "latency_at_callback_ms": summary([a.at_callback_ms for a in answers])})
                if not relay.alive():
                    raise RuntimeError(f"relay_node exited; see {log}")
            return out
        finally:
            relay.stop()

    def _wait_for_node(self, node: Any, diagnostics: bool = True) -> None:
        """Until the node is active and matched: camera, results and (zoa_node) diagnostics."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while (self.camera.publisher.get_subscription_count() == 0
               or self.results_sub.get_publisher_count() == 0
               or (diagnostics and self.diag_sub.get_publisher_count() == 0)):
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up; see {node.log_path}")
            time.sleep(0.05)

    def _condition(self, size: tuple[int, int], adapt: str, frames: list[np.ndarray],
                   engine: Any) -> dict:
        name = f"{size[0]}x{size[1]}"
        key = f"{name}/{adapt}"
        slices = np.array_split(np.arange(self.args.model_runs), self.args.blocks + 1)
        paced: list[list[float]] = []         # once per camera period
        paced_cpu: list[list[float]] = []     # their CPU time
        tight: list[list[float]] = []         # back to back
        along: list[_Alongside | str] = []    # the model alongside, or why it did not run

        def model_block() -> None:
            runs = len(slices[len(paced)])
            print(f"{key}: model latency ({runs} runs at {self.args.rate:g} Hz, {runs} back "
                  f"to back) ...", flush=True)
            warmup = 1 if paced else 3
            for period in ((1.0 / self.args.rate, 0.0) if len(paced) % 2 == 0
                           else (0.0, 1.0 / self.args.rate)):
                cpu: list[float] = []
                (paced if period else tight).append(
                    self._model_latency(engine, frames, runs, warmup, period, cpu))
                if period:
                    paced_cpu.append(cpu)
                warmup = 0
            if not along:   # after the first share: alongside from the first slice on
                along.append(self._start_alongside(key, adapt, frames, engine, paced[0]))

        counters: list[dict[str, float] | None] = []
        try:
            sent, elapsed, answers = self._measure(key, frames, counters, model_block)
        finally:
            self._stop_alongside()
        before, after = counters
        answered = len(answers)
        node = _delta(before, after) if before and after else None
        if node is not None:
            node["lost_in_transport"] = sent - node["received"]
        return {"size": name, "adaptation": adapt, "seconds": elapsed,
                "rate_hz": sent / elapsed if elapsed > 0 else 0.0, "sent": sent,
                "answered": answered, "answered_hz": answered / elapsed if elapsed > 0 else 0.0,
                "dropped": sent - answered,
                "dropped_pct": 100.0 * (sent - answered) / sent if sent else 0.0,
                "latency_ms": summary([a.e2e_ms for a in answers]),
                "latency_samples_ms": [round(a.e2e_ms, 3) for a in answers],
                "node_inference_ms": summary([a.inference_ms for a in answers]),
                "node_inference_cpu_ms": summary([a.cpu_ms for a in answers]),
                "outside_inference_ms": summary([a.e2e_ms - a.inference_ms for a in answers]),
                "node_queued_ms": summary([a.queued_ms for a in answers]),
                "results_wake_ms": summary([a.wake_ms for a in answers]),
                "latency_at_callback_ms": summary([a.at_callback_ms for a in answers]),
                "model_ms": _pooled(paced), "model_cpu_ms": _pooled(paced_cpu),
                "model_samples_ms": [round(ms, 3) for block in paced for ms in block],
                "model_back_to_back_ms": _pooled(tight),
                **_alongside_fields(along[0] if along else "the stream was not measured",
                                    answers, 1.0 / self.args.rate),
                "node": node}

    def _start_alongside(self, key: str, adapt: str, frames: list[np.ndarray], engine: Any,
                         share: Sequence[float]) -> _Alongside | str:
        """Run the model after each of the node's answers from now on, or say why not."""
        if not self.args.model_alongside:
            return "--no-model-alongside"
        if adapt != "off":
            return "adaptation on (it would take the idle CPU the adaptation step runs on)"
        self.alongside = _Alongside(key, frames, engine.predict, float(np.median(share)))
        return self.alongside

    def _stop_alongside(self) -> None:
        """No more runs after answers; wait for the one in progress."""
        along, self.alongside = self.alongside, None
        if along is not None:
            along.idle.wait(60.0)

    def _measure(self, key: str, frames: list[np.ndarray], counters: list | None = None,
                 between: Callable[[], None] | None = None
                 ) -> tuple[int, float, list[_Answer]]:
        """Warm up, then stream for ``--seconds`` in ``--blocks`` slices, calling ``between``
        before, between and after them: frames sent, seconds streamed, answers
        (:class:`_Answer`); ``counters`` receives the node's counters before and after."""
        messages = [self.camera.message(frame) for frame in frames]
        if self.args.warmup > 0:
            print(f"{key}: warm-up {self.args.warmup:g} s ...", flush=True)
            self._settle(self._stream(messages, self.args.warmup, None)[1])
        if counters is not None:
            counters.append(self._counters())
        blocks = self.args.blocks if between else 1
        sent, elapsed = 0, 0.0
        for _ in range(blocks):
            if between:
                between()
            print(f"{key}: streaming {self.args.seconds / blocks:g} s at "
                  f"{self.args.rate:g} Hz ...", flush=True)
            started = time.monotonic()
            count, last = self._stream(messages, self.args.seconds / blocks, key)
            elapsed += time.monotonic() - started
            sent += count
            self._settle(last)
        if between:
            between()
        if counters is not None:
            counters.append(self._counters())
        with self.lock:
            return sent, elapsed, list(self.answers.get(key, []))

    def _model_latency(self, engine: Any, frames: list[np.ndarray], runs: int,
                       warmup: int = 3, period: float = 0.0,
                       cpu_ms: list[float] | None = None) -> list[float]:
        """:func:`model_latency` of ``engine.predict`` on the bench's one model thread."""
        return self.model_thread.submit(model_latency, engine.predict, frames, runs,
                                        warmup, period, cpu_ms).result()

    def _stream(self, messages: list[Any], seconds: float, key: str | None
                ) -> tuple[int, int]:
        """Publish ``messages`` in turn at the rate for ``seconds``, each stamped as it goes
        out; returns (frames sent, newest stamp in ns)."""
        period = 1.0 / self.args.rate
        tick = time.monotonic()
        end = tick + seconds
        sent, last = 0, -1
        while tick < end:
            sec, nanosec = self.camera.publish(messages[sent % len(messages)])
            last = sec * 1_000_000_000 + nanosec
            self.last_sent = time.monotonic()
            if key is not None:
                with self.lock:
                    self.phase[last] = key, sent
            sent += 1
            tick += period
            now = time.monotonic()
            if now - tick > period:   # fell behind (CPU busy): keep the rate, do not burst
                tick = now
            self.next_due = tick
            time.sleep(max(0.0, tick - now))
        return sent, last

    def _settle(self, last: int) -> None:
        """Wait (at most SETTLE_S) until the newest frame sent has been answered."""
        deadline = time.monotonic() + SETTLE_S
        with self.lock:
            while self.newest_answered < last and time.monotonic() < deadline:
                self.lock.wait(0.05)

    def _counters(self) -> dict[str, float] | None:
        """The node's cumulative counters from a /diagnostics message published from now on."""
        since = time.monotonic()
        deadline = since + DIAG_WAIT_S
        with self.lock:
            while self.diag.at <= since and time.monotonic() < deadline:
                self.lock.wait(0.05)
            diag = self.diag
        if diag.at <= since:
            return None
        v = diag.values

        def num(name: str) -> float:
            try:
                return float(v.get(name) or 0.0)
            except ValueError:
                return 0.0

        return {"received": num("camera.received"), "classified": num("frames_classified"),
                "dropped_in_slot": num("dropped_frames"), "malformed": num("malformed_messages"),
                "adaptation_steps": num("adaptation_steps"),
                "adaptation_skipped": num("adaptation_skipped"),
                "inference_errors": num("inference_errors"),
                "last_step_ms": num("last_step_ms")}


def _alongside_fields(along: _Alongside | str, answers: Sequence[_Answer],
                      period_s: float) -> dict[str, Any]:
    """A condition's ``model_alongside*`` fields, the node's answers paired with its runs
    (``*_paired_ms``; ``latency_paired_samples_ms`` and ``model_alongside_samples_ms`` hold
    the pairs, in order) and ``model_reference``: "alongside" when the model ran after at least a
    quarter of the answers (too few runs, on a machine too slow for the rate, say little),
    else "between slices", with the reason in ``not_run_because``.

    Each run is paired with the node's answer to the camera's *next* frame: whether the model
    runs depends on how soon the node answered the frame before it, so pairing it with that
    answer would pick the node's own lucky frames."""
    if isinstance(along, str):
        along, why = _Alongside("", [], lambda frame: None, 0.0), along
    else:
        why = None if 4 * len(along.wall_ms) >= len(answers) > 0 else (
            f"it ran after only {len(along.wall_ms)} of {len(answers)} answers (the node was "
            f"rarely idle long enough between frames: too little CPU for this rate)")
    stamps = sorted(a.stamp for a in answers)
    by_stamp = {a.stamp: a for a in answers}
    runs, node = [], []
    for run, stamp in enumerate(along.stamps):
        i = bisect.bisect_right(stamps, stamp)
        if i < len(stamps) and stamps[i] - stamp <= 1.5e9 * period_s:   # not after a share
            runs.append(run)
            node.append(by_stamp[stamps[i]])
    counts = {"runs": len(along.wall_ms), "paired": len(runs), "skipped_busy": along.busy,
              "skipped_no_room": along.no_room, "overlapped_next_frame": along.overlapped,
              "not_run_because": why}
    return {"model_alongside_ms": summary([along.wall_ms[i] for i in runs]),
            "model_alongside_cpu_ms": summary([along.cpu_ms[i] for i in runs]),
            "model_alongside": counts,
            "latency_paired_ms": summary([a.e2e_ms for a in node]),
            "latency_paired_at_callback_ms": summary([a.at_callback_ms for a in node]),
            "latency_paired_samples_ms": [round(a.e2e_ms, 3) for a in node],
            "model_alongside_samples_ms": [round(along.wall_ms[i], 3) for i in runs],
            "node_inference_paired_ms": summary([a.inference_ms for a in node]),
            "node_inference_cpu_paired_ms": summary([a.cpu_ms for a in node]),
            "model_reference": "between slices" if why else "alongside"}


def _pooled(blocks: Sequence[Sequence[float]]) -> dict[str, Any]:
    """:func:`summary` of all the blocks' times, with each block's own p50 (``p50_blocks``)."""
    out: dict[str, Any] = summary([ms for block in blocks for ms in block])
    out["p50_blocks"] = [summary(block)["p50"] for block in blocks]
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Counters over the measured window (``last_step_ms`` is the newest value, not a delta)."""
    out: dict[str, Any] = {k: int(after[k] - before[k]) for k in after if k != "last_step_ms"}
    out["last_step_ms"] = after["last_step_ms"]
    return out
