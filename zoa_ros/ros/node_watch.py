"""Watching a ``zoa_node`` in another process from this one: its answers on
``classification_json``, its ``/diagnostics`` counters and its process's memory and threads
(``zoa-ros bench fuzz`` and ``bench soak``)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from zoa_ros.ros.diagnostics import values_of

RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


class NodeWatch:
    """A client node of ``node`` (fully qualified name) spun on a thread of its own.

    ``on_answer`` is called with each ``classification_json`` document and the time it
    arrived (``time.monotonic()``); :meth:`counters` returns the node's newest /diagnostics
    values (``camera.`` before those of its first camera)."""

    def __init__(self, name: str = "zoa_watch", node: str = "/zoa_node",
                 on_answer: Callable[[dict, float], None] | None = None) -> None:
        self.node = Node(name)
        self.target = node
        self.on_answer = on_answer
        self.answers = 0
        self.lock = threading.Condition()
        self._diag_at = -1.0
        self._diag: dict[str, str] = {}
        namespace = node.rsplit("/", 1)[0]
        self.results = self.node.create_subscription(
            String, f"{namespace}/classification_json", self._on_result, RELIABLE)
        self.diagnostics = self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, name="zoa_watch",
                                       daemon=True)
        self.thread.start()

    def _on_result(self, msg: String) -> None:
        now = time.monotonic()
        document = json.loads(msg.data)
        with self.lock:
            self.answers += 1
            self.lock.notify_all()
        if self.on_answer is not None:
            self.on_answer(document, now)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        values: dict[str, str] = {}
        for status in msg.status:
            if not status.name.startswith(f"{self.target}:"):
                continue
            prefix = "camera." if ": camera " in status.name else ""
            for key, value in values_of(status).items():
                values.setdefault(prefix + key, value)
        if values:
            with self.lock:
                self._diag_at, self._diag = time.monotonic(), values
                self.lock.notify_all()

    def wait_for(self, publisher: Any, process: Any, timeout: float = 180.0) -> None:
        """Until ``publisher`` has the node's subscription and the node's results and
        diagnostics reach this watch; RuntimeError if ``process`` exits or time runs out."""
        deadline = time.monotonic() + timeout
        while (publisher.get_subscription_count() == 0
               or self.results.get_publisher_count() == 0
               or self.diagnostics.get_publisher_count() == 0):
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"zoa_node did not come up; see {process.log_path}")
            time.sleep(0.05)

    def counters(self, timeout: float = 10.0) -> dict[str, str]:
        """The values of a /diagnostics message published after this call ({} on timeout)."""
        since = time.monotonic()
        deadline = since + timeout
        with self.lock:
            while self._diag_at <= since and time.monotonic() < deadline:
                self.lock.wait(0.05)
            return dict(self._diag) if self._diag_at > since else {}

    def wait_answers(self, count: int, timeout: float) -> bool:
        """Until at least ``count`` answers arrived in all; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.answers < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.1))
            return True

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(timeout=5)
        self.node.destroy_node()


def number(values: dict[str, str], key: str) -> float:
    """``values[key]`` as a float (0 when absent or empty)."""
    try:
        return float(values.get(key) or 0.0)
    except ValueError:
        return 0.0


def process_faults(pid: int) -> tuple[int, int]:
    """Page faults of process ``pid`` so far, ``(minor, major)``, from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()    # after "pid (comm) ": state is field 3
    return int(fields[7]), int(fields[9])           # fields 10 (minflt) and 12 (majflt)


def cpu_steal_seconds() -> float:
    """CPU time stolen from this (virtual) machine by its host so far, all CPUs, from
    /proc/stat (0 where the kernel does not count it)."""
    values = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(values[7]) / os.sysconf("SC_CLK_TCK") if len(values) > 7 else 0.0


def process_memory(pid: int) -> dict[str, float]:
    """Resident memory now (``rss_mb``) and at its peak (``peak_rss_mb``, VmHWM) of process
    ``pid``, and its thread count, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    kib = {k: float(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM")}
    return {"rss_mb": kib["VmRSS"] / 1024.0, "peak_rss_mb": kib["VmHWM"] / 1024.0,
            "threads": int(fields.get("Threads", "0"))}
