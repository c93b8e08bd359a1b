"""One live bench run: the virtual camera, result and /diagnostics listeners in this process,
the node (and then the model-free relay) in another, every condition streamed and counted."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoa_ros.tools.bench_node.alongside import (
    Alongside,
    Answer,
    alongside_fields,
    model_engine,
    model_latency,
    node_params,
)
from zoa_ros.tools.bench_node.report import machine
from zoa_ros.tools.bench_node.stats import (
    TARGET_P50_RATIO,
    TARGET_P99_RATIO,
    delta,
    pooled,
    ratios,
    summary,
)

SETTLE_S = 3.0            # after a stream: wait this long at most for the last frame's answer


DIAG_WAIT_S = 5.0         # and this long at most for fresh /diagnostics counters


START_TIMEOUT_S = 180.0


@dataclass
class _Diag:
    """The newest counters from the node's /diagnostics and when they arrived."""

    at: float = -1.0
    values: dict[str, str] = field(default_factory=dict)


class Bench:
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
        self.alongside: Alongside | None = None
        self.answers: dict[str, list[Answer]] = {}   # condition key -> answers
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
                self.answers.setdefault(key, []).append(Answer(
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

    def _run_alongside(self, along: Alongside, index: int, stamp: int) -> None:
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
        from zoa_ros.core.runtime.cpus import format_cpus, parse_cpus, thread_cpus
        from zoa_ros.core.runtime.threads import use_compute_threads
        from zoa_ros.ros.node_process import NodeProcess

        values = node_params(self.extra)
        print(f"loading {self.pack_path} for the model's latency ...", flush=True)
        use_compute_threads(1)    # as in the node: only the model thread uses several CPUs
        engine = model_engine(self.pack_path, values)
        cpus = parse_cpus(values["inference.cpus"])
        if cpus:   # as the node's inference thread (this process's other threads stay put)
            self.model_thread.submit(os.sched_setaffinity, 0, cpus).result()
        model_cpus = format_cpus(self.model_thread.submit(thread_cpus).result())
        self.model_thread.submit(use_compute_threads, int(values["inference.threads"])).result()
        use_compute_threads(1)
        self.spinner.start()
        conditions = []
        logs = []
        peak_rss: dict[str, float | None] = {}
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
                    peak_rss[label] = node.peak_rss_mb()
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
            "node_peak_rss_mb": peak_rss,
            "settings": {"pack": str(self.pack_path), "rate_hz": a.rate, "seconds": a.seconds,
                         "warmup_s": a.warmup, "sizes": a.sizes,
                         "frames_source": a.frames_source, "domain": a.domain,
                         "model_runs": a.model_runs,
                         "blocks": a.blocks, "model_thread_cpus": model_cpus,
                         "model_alongside": a.model_alongside,
                         "encoding": "rgb8", "camera_qos": "sensor data (best effort)",
                         "params_overrides": {k: str(v) for k, v in self.extra.items()},
                         "adaptation_method": values["adaptation.method"],
                         "adaptation_interval_frames": values["adaptation.interval_frames"],
                         "adaptation_batch_size": values["adaptation.batch_size"],
                         "adaptation_min_period_s": values["adaptation.min_period_s"],
                         "inference_backend": engine.backend_name,
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
        along: list[Alongside | str] = []    # the model alongside, or why it did not run

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
        node = delta(before, after) if before and after else None
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
                "model_ms": pooled(paced), "model_cpu_ms": pooled(paced_cpu),
                "model_samples_ms": [round(ms, 3) for block in paced for ms in block],
                "model_back_to_back_ms": pooled(tight),
                **alongside_fields(along[0] if along else "the stream was not measured",
                                    answers, 1.0 / self.args.rate),
                "node": node}

    def _start_alongside(self, key: str, adapt: str, frames: list[np.ndarray], engine: Any,
                         share: Sequence[float]) -> Alongside | str:
        """Run the model after each of the node's answers from now on, or say why not."""
        if not self.args.model_alongside:
            return "--no-model-alongside"
        if adapt != "off":
            return "adaptation on (it would take the idle CPU the adaptation step runs on)"
        self.alongside = Alongside(key, frames, engine.predict, float(np.median(share)))
        return self.alongside

    def _stop_alongside(self) -> None:
        """No more runs after answers; wait for the one in progress."""
        along, self.alongside = self.alongside, None
        if along is not None:
            along.idle.wait(60.0)

    def _measure(self, key: str, frames: list[np.ndarray], counters: list | None = None,
                 between: Callable[[], None] | None = None
                 ) -> tuple[int, float, list[Answer]]:
        """Warm up, then stream for ``--seconds`` in ``--blocks`` slices, calling ``between``
        before, between and after them: frames sent, seconds streamed, answers
        (:class:`Answer`); ``counters`` receives the node's counters before and after."""
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
                "frames_adapting": num("frames_adapting"),
                "gate_openings": num("shift_gate_openings"),
                "adaptation_skipped": num("adaptation_skipped"),
                "inference_errors": num("inference_errors"),
                "last_step_ms": num("last_step_ms")}
