"""``zoa-ros bench soak``: a long mission of a live ``zoa_node``, minute by minute.

``zoa_node`` runs as its own process on an isolated local ROS graph with the shipped config
(adaptation on) while this process publishes rgb8 frames at ``--rate`` Hz with sensor-data QoS,
the photos bundled with scikit-image at ``--size``, through ``--schedule`` repeated for the
whole run (corruptions at ``--severity``), so the node keeps detecting domains, adapting and
filling its knowledge bank. Every ``--save-every`` minutes it calls ``~/save_knowledge``.

Once a minute it prints: frames sent and answered, end-to-end latency p50/p99 (header stamp to
the result's arrival here) and the node's inference latency, adaptation steps, bank entries,
the node's resident memory (read every 5 s: the minute's floor and maximum) and thread count,
whether its inference, adaptation and camera threads are alive (its /diagnostics), and its
health. At the end, the targets: the floor of resident memory grows by less than 5 % from
minute ``--settle-minutes`` to the last minute, no thread is lost, and every minute's
end-to-end p99 stays within 1.5 x the first minute's (the
p99 target of ``zoa-ros bench node``). The first minute starts after ``--warmup`` seconds that
are not counted.

The full run is an hour: ``zoa-ros bench soak --minutes 60 --rate 30 --json soak.json``
(docs/lab/robustness.md).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from zoa_ros.tools.bench_node.stats import TARGET_P99_RATIO
from zoa_ros.tools.live_graph import add_live_arguments, isolated_graph, write_json
from zoa_ros.tools.packs import add_pack_argument, resolve_pack

RSS_GROWTH_MAX = 0.05
# Frames between two readings of the node's RSS (every ~5 s at 30 Hz). An adaptation step maps
# its largest activations and unmaps them after, so one reading swings by hundreds of MB with
# whether a step runs; the floor of a minute's readings is what a leak would raise.
RSS_EVERY = 150
SCHEDULE = "clean:60,gaussian_noise:60,fog:60,contrast:60,clean:60,motion_blur:60"


def add_parser(bsub: argparse._SubParsersAction) -> None:

    p = bsub.add_parser("soak", help="a long run of a live zoa_node, minute by minute",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pack_argument(p)
    p.add_argument("--minutes", type=float, default=60.0, help="measured minutes")
    p.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    p.add_argument("--size", default="640x480", help="WxH of the rgb8 frames")
    p.add_argument("--schedule", default=SCHEDULE,
                   help="DOMAIN:SECONDS,... repeated for the whole run (default %(default)s)")
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument("--warmup", type=float, default=30.0, help="uncounted seconds first")
    p.add_argument("--settle-minutes", type=float, default=5.0,
                   help="RSS growth is measured from this minute on (default "
                        "%(default)s; at most half the run)")
    p.add_argument("--save-every", type=float, default=10.0,
                   help="call ~/save_knowledge every this many minutes (0: never)")
    add_live_arguments(p, "out/bench_soak", 171)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoa_ros.ros.virtual_camera import parse_schedule
    from zoa_ros.tools.bench_node import parse_params, parse_sizes

    if args.minutes <= 0 or args.rate <= 0 or args.warmup < 0 or args.save_every < 0:
        raise ValueError("--minutes and --rate must be > 0, --warmup and --save-every >= 0")
    (size,) = parse_sizes(args.size)
    phases = parse_schedule(args.schedule)
    extra = parse_params(args.param)
    pack = resolve_pack(args.pack).resolve()
    out = Path(args.out)
    with isolated_graph(out, args.domain_id) as env:
        try:
            report = Soak(args, out, pack, size, phases, extra, env).run()
        except RuntimeError as e:
            print(f"zoa-ros bench soak: {e}")
            return 1
    print(format_summary(report), flush=True)
    write_json(args.json, report)
    return 0 if report["passed"] else 1


class Soak:
    """The camera and a :class:`~zoa_ros.ros.node_watch.NodeWatch` here, the node in a
    subprocess."""

    def __init__(self, args: argparse.Namespace, out: Path, pack: Path, size: tuple[int, int],
                 phases: list, extra: dict[str, Any], env: dict[str, str]) -> None:
        from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
        from zoa_ros.ros.node_watch import NodeWatch
        from zoa_ros.ros.virtual_camera import VirtualCamera, render_frames

        self.args, self.out, self.pack, self.phases = args, out, pack, phases
        self.extra, self.env = extra, env
        print("rendering frames ...", flush=True)
        photos = [load_photo(n) for n in PHOTOS]
        frames = render_frames(photos, {p.domain for p in phases}, size, args.severity)
        self.watch = NodeWatch("zoa_soak", on_answer=self._on_answer)
        self.camera = VirtualCamera(topic="image", name="zoa_soak_camera")
        self.messages = {key: self.camera.message(frame) for key, frame in frames.items()}
        self.photos = len(photos)
        self.lock = threading.Lock()
        self.sent_at: dict[int, float] = {}           # stamp (ns) -> time.monotonic() sent
        self.minute: list[tuple[float, float]] = []   # (e2e ms, inference ms) this minute
        self.rss: list[float] = []                     # the node's RSS (MB) this minute
        self.counts: tuple[int, int, float] | None = None   # faults and steal at the last row

    def _on_answer(self, result: dict, arrived: float) -> None:
        stamp = result["stamp"]["sec"] * 1_000_000_000 + result["stamp"]["nanosec"]
        with self.lock:
            sent = self.sent_at.pop(stamp, None)
            if sent is not None:
                self.minute.append(((arrived - sent) * 1e3, float(result["inference_ms"])))

    def run(self) -> dict:
        from zoa_ros.ros.node_process import NodeProcess

        log = self.out / "node.log"
        log.unlink(missing_ok=True)
        overrides = {"pack": self.pack, "knowledge.autoload": False,
                     "knowledge.bank_path": (self.out / "soak.zoabank").resolve(),
                     **self.extra}
        print("starting zoa_node ...", flush=True)
        node = NodeProcess(overrides, self.env, log)
        executor_thread = None
        minutes: list[dict] = []
        saves: list[dict] = []
        try:
            from rclpy.executors import SingleThreadedExecutor

            executor = SingleThreadedExecutor()
            executor.add_node(self.camera)
            executor_thread = threading.Thread(target=executor.spin, daemon=True)
            executor_thread.start()
            self.watch.wait_for(self.camera.publisher, node)
            print(f"warm-up {self.args.warmup:g} s ...", flush=True)
            clock = _Clock(self.args.rate)
            self._stream(clock, self.args.warmup, node)
            with self.lock:
                self.minute.clear()
            self._counts(node)
            print(HEADER, flush=True)
            total = int(np.ceil(self.args.minutes))
            for index in range(total):
                seconds = min(60.0, self.args.minutes * 60.0 - 60.0 * index)
                sent = self._stream(clock, seconds, node)
                row = self._row(index + 1, sent, seconds, node)
                minutes.append(row)
                print(format_row(row), flush=True)
                every = self.args.save_every
                if every > 0 and (index + 1) % max(1, round(every)) == 0:
                    saves.append(self._save())
                if not node.alive():
                    break
        finally:
            self.watch.close()
            code = node.stop()
            if executor_thread is not None:
                executor.shutdown()
                executor_thread.join(timeout=5)
        return summarize(self.args, minutes, saves, code, str(log), str(self.pack))

    def _stream(self, clock: _Clock, seconds: float, node: Any) -> int:
        """Publish at the rate for ``seconds`` through the schedule, reading the node's RSS
        every :data:`RSS_EVERY` frames; frames sent."""
        from zoa_ros.ros.node_watch import process_memory

        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            domain = _domain_at(self.phases, clock.frames / self.args.rate)
            msg = self.messages[(domain, clock.frames % self.photos)]
            sec, nanosec = self.camera.publish(msg)
            with self.lock:
                self.sent_at[sec * 1_000_000_000 + nanosec] = time.monotonic()
            sent += 1
            clock.wait()
            if sent % RSS_EVERY == 0:
                if not node.alive():
                    break
                self.rss.append(process_memory(node.proc.pid)["rss_mb"])
        return sent

    def _counts(self, node: Any) -> dict:
        """The node's page faults and the machine's CPU steal since the last call (the first,
        after the warm-up, starts the count): a slow minute from paging or from the host."""
        from zoa_ros.ros.node_watch import cpu_steal_seconds, process_faults

        before, (minor, major) = self.counts, process_faults(node.proc.pid)
        self.counts = (minor, major, cpu_steal_seconds())
        if before is None:
            return {}
        return {"minor_faults": minor - before[0], "major_faults": major - before[1],
                "cpu_steal_s": self.counts[2] - before[2]}

    def _row(self, minute: int, sent: int, seconds: float, node: Any) -> dict:
        from zoa_ros.ros.node_watch import number, process_memory

        rss, self.rss = self.rss or [float("nan")], []
        with self.lock:
            samples, self.minute = self.minute, []
            old = time.monotonic() - 10.0
            self.sent_at = {k: t for k, t in self.sent_at.items() if t > old}
        values = self.watch.counters()
        e2e = np.array([s[0] for s in samples]) if samples else np.array([np.nan])
        inference = np.array([s[1] for s in samples]) if samples else np.array([np.nan])
        alive = node.alive()
        memory = process_memory(node.proc.pid) if alive else {}
        counts = self._counts(node) if alive else {}
        threads = values.get("threads_alive", "")
        return {"minute": minute, "seconds": seconds, "sent": sent, "answered": len(samples),
                "e2e_p50_ms": float(np.percentile(e2e, 50)),
                "e2e_p99_ms": float(np.percentile(e2e, 99)),
                "inference_p50_ms": float(np.percentile(inference, 50)),
                "inference_p99_ms": float(np.percentile(inference, 99)),
                "adaptation_steps": int(number(values, "adaptation_steps")),
                "adaptation_rolled_back": int(number(values, "adaptation_rolled_back")),
                "bank_entries": int(number(values, "bank_entries")),
                "domain_changes": int(number(values, "domain_changes")),
                "rss_mb": min(rss), "rss_max_mb": max(rss),
                "peak_rss_mb": memory.get("peak_rss_mb", float("nan")),
                "process_threads": memory.get("threads", 0),
                "threads_alive": threads, "threads_stopped": values.get("threads_stopped", ""),
                "health": values.get("health", "no diagnostics"), "node_alive": alive,
                **counts}

    def _save(self) -> dict:
        from zoa_ros.ros.node_process import call_trigger

        start = time.monotonic()
        try:
            response = call_trigger(self.watch.node, "/zoa_node/save_knowledge", timeout=60)
            ok, message = response.success, response.message
        except TimeoutError as e:
            ok, message = False, str(e)
        row = {"ok": ok, "message": message, "ms": (time.monotonic() - start) * 1e3}
        print(f"  ~/save_knowledge: {'ok' if ok else 'FAILED'}: {message}", flush=True)
        return row


class _Clock:
    """Paces frames at ``rate`` Hz across calls (no burst after a stall)."""

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate
        self.tick = time.monotonic()
        self.frames = 0

    def wait(self) -> None:
        self.frames += 1
        self.tick += self.period
        now = time.monotonic()
        if now - self.tick > self.period:
            self.tick = now
        time.sleep(max(0.0, self.tick - now))


def _domain_at(phases: list, seconds: float) -> str:
    cycle = sum(p.seconds for p in phases)
    t = seconds % cycle
    for phase in phases:
        if t < phase.seconds:
            return phase.domain
        t -= phase.seconds
    return phases[-1].domain


HEADER = (f"{'min':>4s} {'sent':>5s} {'answ':>5s} {'e2e p50':>8s} {'p99':>7s} "
          f"{'inf p50':>8s} {'p99':>7s} {'steps':>6s} {'bank':>5s} {'RSS MB floor':>12s} "
          f"{'max':>5s} "
          f"{'threads':>7s} {'node threads alive':>18s} {'health':>7s}")


def format_row(r: dict) -> str:
    alive = [t for t in r["threads_alive"].split(", ") if t]
    stopped = [t for t in r["threads_stopped"].split(", ") if t]
    return (f"{r['minute']:4d} {r['sent']:5d} {r['answered']:5d} {r['e2e_p50_ms']:8.1f} "
            f"{r['e2e_p99_ms']:7.1f} {r['inference_p50_ms']:8.1f} {r['inference_p99_ms']:7.1f} "
            f"{r['adaptation_steps']:6d} {r['bank_entries']:5d} {r['rss_mb']:12.0f} "
            f"{r['rss_max_mb']:5.0f} "
            f"{r['process_threads']:7d} {f'{len(alive)}/{len(alive) + len(stopped)}':>18s} "
            f"{r['health']:>7s}")


def summarize(args: argparse.Namespace, minutes: list[dict], saves: list[dict], code: int,
              log: str, pack: str) -> dict:
    """The per-minute rows, the saves and the targets."""
    settle = min(args.settle_minutes, len(minutes) / 2)
    ref = minutes[max(0, int(np.ceil(settle)) - 1)] if minutes else None
    last = minutes[-1] if minutes else None
    growth = ((last["rss_mb"] - ref["rss_mb"]) / ref["rss_mb"]) if ref and last else float("nan")
    first_p99 = minutes[0]["e2e_p99_ms"] if minutes else float("nan")
    worst = max((r["e2e_p99_ms"] / first_p99 for r in minutes), default=float("nan"))
    stopped = sorted({t for r in minutes for t in r["threads_stopped"].split(", ") if t})
    targets = {
        f"RSS floor growth after minute {ref['minute'] if ref else '-'} < 5 %":
            bool(growth == growth and growth < RSS_GROWTH_MAX),
        "no thread lost": bool(minutes) and not stopped and all(
            r["node_alive"] for r in minutes),
        f"every minute's e2e p99 <= {TARGET_P99_RATIO:g} x the first's":
            bool(worst == worst and worst <= TARGET_P99_RATIO),
        "every save succeeded": all(s["ok"] for s in saves),
        "clean exit": code == 0,
    }
    return {"settings": {"pack": pack, "minutes": args.minutes, "rate_hz": args.rate,
                         "size": args.size, "schedule": args.schedule,
                         "severity": args.severity, "warmup_s": args.warmup,
                         "save_every_min": args.save_every, "node_log": log},
            "minutes": minutes, "saves": saves, "exit_code": code,
            "rss_growth": growth, "rss_reference_minute": ref["minute"] if ref else None,
            "worst_p99_over_first": worst, "threads_stopped": stopped,
            "targets": targets, "passed": all(targets.values())}


def format_summary(report: dict) -> str:
    lines = ["", f"RSS floor growth from minute {report['rss_reference_minute']} to the end: "
             f"{100 * report['rss_growth']:+.2f} %; worst minute's e2e p99 / the first's: "
             f"{report['worst_p99_over_first']:.2f}; saves: {len(report['saves'])}; "
             f"node exit code {report['exit_code']}"]
    for name, ok in report["targets"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    lines.append("all targets met" if report["passed"] else "TARGETS MISSED (see FAIL above)")
    return "\n".join(lines)
