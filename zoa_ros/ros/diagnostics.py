"""The node's /diagnostics: what it counts, how healthy that is, and the DiagnosticArray.

The node gathers a :class:`Snapshot` of cumulative counters once per period;
:class:`DiagnosticsTracker` turns consecutive snapshots into rates and per-period deltas,
decides the level (OK / WARN / ERROR) with its reasons and builds the message: one status for
the classifier and one per camera. Only message classes are imported (no rclpy).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = 0, 1, 2
_LEVEL_BYTES = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}


class LatencyWindow:
    """The last ``size`` latencies (ms) and their percentiles; thread-safe."""

    def __init__(self, size: int = 200) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=max(1, size))
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(float(ms))

    def percentiles(self, *qs: float) -> list[float | None]:
        with self._lock:
            values = np.array(self._values, dtype=float)
        if values.size == 0:
            return [None for _ in qs]
        return [float(np.percentile(values, q)) for q in qs]


@dataclass
class CameraCounts:
    """Cumulative counters of one camera."""

    topic: str
    received: int = 0
    dropped: int = 0          # overwritten in the newest-frame slot before inference took them
    malformed: int = 0        # refused at the header check or when converting
    classified: int = 0
    last_received: float | None = None   # monotonic time of the newest frame
    subscribed: str = ""      # the topic subscribed to (resolved: namespace, remappings)
    last_malformed: str = ""  # why the newest malformed message was refused


@dataclass
class Snapshot:
    """Cumulative state of the node at one instant (monotonic ``now``)."""

    now: float
    state: str                                  # lifecycle state label
    error: str = ""                             # why the node cannot work (ERROR)
    active_since: float | None = None
    cameras: dict[str, CameraCounts] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    inference_errors: int = 0
    adaptation_enabled: bool = False
    method: str = ""
    adaptation_steps: int = 0
    adaptation_skipped: int = 0
    adaptation_errors: int = 0
    adaptation_rolled_back: int = 0    # steps undone: non-finite loss or parameters
    last_rollback: str = ""
    threads: dict[str, bool] = field(default_factory=dict)   # the node's threads: alive?
    last_step_ms: float = 0.0
    adaptation_paused_s: float = 0.0   # steps waiting for classification (max_pause_ms)
    domain_changes: int = 0
    domain: int = 0
    bank_entries: int = 0
    bank_bytes: int = 0
    recall_entries: int = 0
    recalls: int = 0
    resets: int = 0
    autosave_blocked: str = ""
    model: str = ""
    backend: str = ""                  # what classifies (torch | onnxruntime)
    stats_frames_replayed: int = 0     # int8 runtime: observed frames replayed for statistics
    stats_frames_dropped: int = 0      # ... and those the adaptation thread never got to
    backend_warning: str = ""          # why inference.backend auto did not pick the int8 runtime
    shift_gate: str = ""               # ZOA's shift gate: closed | adapting | resting
    gate_openings: int = 0
    frames_gate_adapting: int = 0      # frames classified while the gate adapted


@dataclass(frozen=True)
class Thresholds:
    stale_input_s: float = 2.0      # WARN when an active camera sent nothing for this long
    max_latency_ms: float = 0.0     # WARN when p99 inference latency exceeds it (0 = off)


class DiagnosticsTracker:
    """Rates and per-period deltas between consecutive snapshots, health, the message."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._prev: Snapshot | None = None

    def health(self, snap: Snapshot, thresholds: Thresholds
               ) -> tuple[int, list[str], dict[str, list[str]]]:
        """(level, reasons, reasons per camera) for ``snap``, against the previous snapshot
        that :meth:`message` saw."""
        prev = self._prev
        reasons: list[tuple[int, str]] = []
        per_camera: dict[str, list[str]] = {name: [] for name in snap.cameras}
        if snap.error:
            reasons.append((ERROR, snap.error))
        if snap.state != "active":
            reasons.append((WARN, f"node is {snap.state}"))
        else:
            stopped = [name for name, alive in snap.threads.items() if not alive]
            if stopped:
                reasons.append((ERROR, f"thread(s) stopped: {', '.join(stopped)}"))
            for name, cam in snap.cameras.items():
                since = snap.now - (cam.last_received if cam.last_received is not None
                                    else (snap.active_since or snap.now))
                if since > thresholds.stale_input_s:
                    per_camera[name].append(
                        f"no frames on {cam.subscribed or cam.topic} for {since:.1f} s")
                old = prev.cameras.get(name) if prev else None
                new_bad = cam.malformed - (old.malformed if old else 0)
                if new_bad > 0:
                    per_camera[name].append(f"{new_bad} malformed message(s) on {cam.topic} "
                                            f"(last: {cam.last_malformed})")
                reasons.extend((WARN, text) for text in per_camera[name])
        if prev is not None and snap.inference_errors > prev.inference_errors:
            reasons.append((WARN, f"{snap.inference_errors - prev.inference_errors} "
                                  "inference error(s)"))
        if prev is not None and snap.adaptation_errors > prev.adaptation_errors:
            reasons.append((WARN, f"{snap.adaptation_errors - prev.adaptation_errors} "
                                  "adaptation step error(s)"))
        if prev is not None and snap.adaptation_rolled_back > prev.adaptation_rolled_back:
            reasons.append((WARN, f"{snap.adaptation_rolled_back - prev.adaptation_rolled_back} "
                                  f"adaptation step(s) rolled back ({snap.last_rollback})"))
        if snap.autosave_blocked:
            reasons.append((WARN, snap.autosave_blocked))
        if snap.backend_warning:
            reasons.append((WARN, snap.backend_warning))
        if (thresholds.max_latency_ms > 0 and snap.latency_p99_ms is not None
                and snap.latency_p99_ms > thresholds.max_latency_ms):
            reasons.append((WARN, f"p99 inference latency {snap.latency_p99_ms:.1f} ms > "
                                  f"{thresholds.max_latency_ms:.1f} ms"))
        level = max((lvl for lvl, _ in reasons), default=OK)
        return level, [text for _, text in reasons], per_camera

    def message(self, snap: Snapshot, thresholds: Thresholds, stamp: object) -> DiagnosticArray:
        """The DiagnosticArray for ``snap``; remembers it for the next period's deltas."""
        level, reasons, per_camera = self.health(snap, thresholds)
        prev = self._prev
        dt = snap.now - prev.now if prev is not None else 0.0
        summary = "; ".join(reasons) if reasons else (
            f"classifying {len(snap.cameras)} camera(s), adaptation "
            f"{'on' if snap.adaptation_enabled else 'off'}")
        main = _status(level, f"{self.node_name}: classifier", summary, snap.model, {
            "state": snap.state,
            "health": ("OK", "WARN", "ERROR")[level],
            "reasons": "; ".join(reasons),
            "frames_classified": sum(c.classified for c in snap.cameras.values()),
            "inference_latency_p50_ms": _fmt(snap.latency_p50_ms),
            "inference_latency_p99_ms": _fmt(snap.latency_p99_ms),
            "inference_errors": snap.inference_errors,
            "inference_backend": snap.backend,
            "statistics_frames_replayed": snap.stats_frames_replayed,
            "statistics_frames_dropped": snap.stats_frames_dropped,
            "malformed_messages": sum(c.malformed for c in snap.cameras.values()),
            "dropped_frames": sum(c.dropped for c in snap.cameras.values()),
            "adaptation_method": snap.method,
            "adaptation_enabled": snap.adaptation_enabled,
            "adaptation_steps": snap.adaptation_steps,
            "adaptation_skipped": snap.adaptation_skipped,
            "adaptation_errors": snap.adaptation_errors,
            "adaptation_rolled_back": snap.adaptation_rolled_back,
            "last_rollback": snap.last_rollback,
            "threads_alive": ", ".join(n for n, alive in snap.threads.items() if alive),
            "threads_stopped": ", ".join(n for n, alive in snap.threads.items() if not alive),
            "last_step_ms": _fmt(snap.last_step_ms),
            "adaptation_paused_s": _fmt(snap.adaptation_paused_s),
            "shift_gate": snap.shift_gate,
            "shift_gate_openings": snap.gate_openings,
            "frames_adapting": snap.frames_gate_adapting,
            "domain_changes": snap.domain_changes,
            "domain": snap.domain,
            "bank_entries": snap.bank_entries,
            "bank_bytes": snap.bank_bytes,
            "statistics_memory_entries": snap.recall_entries,
            "statistics_recalls": snap.recalls,
            "resets": snap.resets,
        })
        statuses = [main]
        for name, cam in snap.cameras.items():
            old = prev.cameras.get(name) if prev is not None else None
            rate = (cam.received - old.received) / dt if old is not None and dt > 0 else 0.0
            done = (cam.classified - old.classified) / dt if old is not None and dt > 0 else 0.0
            cam_reasons = per_camera.get(name, [])
            statuses.append(_status(
                WARN if cam_reasons else OK, f"{self.node_name}: camera {cam.topic}",
                "; ".join(cam_reasons) or "ok", cam.topic, {
                    "topic": cam.topic, "input_rate_hz": _fmt(rate),
                    "classified_rate_hz": _fmt(done), "received": cam.received,
                    "classified": cam.classified, "dropped": cam.dropped,
                    "malformed": cam.malformed, "subscribed_topic": cam.subscribed,
                    "last_malformed": cam.last_malformed}))
        self._prev = snap
        return DiagnosticArray(header=_header(stamp), status=statuses)


def _header(stamp: object) -> object:
    from std_msgs.msg import Header
    return Header(stamp=stamp)


def _status(level: int, name: str, message: str, hardware_id: str,
            values: dict[str, object]) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=_LEVEL_BYTES[level], name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=_text(v)) for k, v in values.items()])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def values_of(status: DiagnosticStatus) -> dict[str, str]:
    """A status's key/values as a dict (for clients and tests)."""
    return {kv.key: kv.value for kv in status.values}
