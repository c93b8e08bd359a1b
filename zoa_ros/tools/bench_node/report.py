"""The bench's printed report: per-condition latency table, the targets' ratios with their
intervals and verdicts, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoa_ros.tools.bench_node.stats import (
    REFERENCES,
    TARGET_P50_RATIO,
    TARGET_P99_RATIO,
    ratio,
    reference,
)

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


def machine() -> dict[str, Any]:
    """What this ran on (the numbers only mean something together with it)."""
    import torch

    from zoa_ros.core.runtime.cpus import usable_cpus

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
        lines.extend(_gate_note(c))
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
    rss = report.get("node_peak_rss_mb") or {}
    if rss:
        lines.append("node peak RSS (VmHWM): " + ", ".join(
            f"adaptation {k} {_num(v, 0, 0)} MiB" for k, v in rss.items()))
    lines.append(f"pack {s['pack']} on {s.get('inference_backend', 'torch')}; "
                 f"{s['rate_hz']:g} Hz, {s['seconds']:g} s per condition "
                 f"(+{s['warmup_s']:g} s warm-up); frames: {s['frames_source']}, "
                 f"{s.get('domain', 'clean')}; malloc "
                 f"thresholds (node and model): "
                 f"{'raised' if s['keep_freed_memory'] else 'glibc defaults'}; node "
                 f"log {s['node_logs']}")
    return "\n".join(lines)


def _gate_note(c: dict) -> list[str]:
    """How much of an adapting condition's measured window the node's shift gate adapted on:
    the p99 target times the adapting path only where it did."""
    node = c["node"] or {}
    if c["adaptation"] != "on" or "frames_adapting" not in node:
        return []
    adapting, classified = node["frames_adapting"], node.get("classified", 0)
    note = (f"{c['size']}/on: the shift gate adapted on {adapting} of {classified} frames "
            f"classified ({node.get('gate_openings', 0)} openings, "
            f"{node.get('adaptation_steps', 0)} steps)")
    if not adapting:
        note += ": the adapting path was not timed (clean input keeps the gate closed; "
        note += "--domain contrast@5 shows the node a shift)"
    return [note]


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


