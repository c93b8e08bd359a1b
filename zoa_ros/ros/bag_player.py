"""Playing a recording into a running ``zoa_node`` and collecting its answers
(``zoa-ros replay --live``).

:func:`play_into_node` starts the node as its own process on an isolated graph (own domain,
localhost discovery, ``ROS_HOME`` in a temp folder) or talks to one already running on the
current graph, then with a :class:`BagPlayer` (an rclpy node in its own context):

1. waits for the node's subscription on the camera topic (discovery; never a fixed sleep) and
   creates the publisher with the reliability that subscription asks for (``auto``: best
   effort for the shipped best-effort input, like a camera driver's sensor-data QoS);
2. reads the node's parameters (``adaptation.method``, ``use_sim_time``, ...);
3. publishes every frame's recorded CDR bytes unchanged at the recorded pace divided by
   ``rate`` (0.5 = half speed), and ``/clock`` (the recorded receive time) before each frame and
   between frames when the node uses sim time;
4. waits for the outstanding answers (until every frame is answered, or no answer came for
   ``settle_s``, or ``answer_timeout``), and reads the node's counters from ``/diagnostics``.

The node keeps only the newest frame per camera: if it is slower than the replay, frames are
replaced before they are classified (dropped). ``rate`` < 1 gives it time; the report lists
what was dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoa_ros.ros import params as P

P.use_default_fastdds_profile()   # before this process creates its first DDS participant

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import parameter_value_to_python  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from zoa_ros.core.data.bags.files import COMPRESSED, IMAGE  # noqa: E402
from zoa_ros.core.eval.live_replay import QOS_CHOICES  # noqa: E402
from zoa_ros.ros.camera_inputs import input_node_name  # noqa: E402
from zoa_ros.ros.diagnostics import values_of  # noqa: E402
from zoa_ros.ros.node_process import NodeProcess, call_service, ros_env  # noqa: E402

MESSAGE_TYPES = {IMAGE: Image, COMPRESSED: CompressedImage}
RELIABLE = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)

# (frame index, header stamp ns, recorded log time ns, CDR bytes)
Outgoing = tuple[int, int, int, bytes]


@dataclass
class NodeLaunch:
    """Start ``zoa_node`` for the replay: shipped config plus ``overrides``, ``remaps``."""

    overrides: dict[str, object]
    remaps: dict[str, str]
    log: Path
    domain_id: int


@dataclass
class Played:
    """What happened on the graph."""

    sent_at: dict[int, float]                 # frame index -> time.monotonic() at publish
    answers: list[tuple[dict, float]]         # classification_json documents, time received
    parameters: dict[str, Any]                # the node's, as it reported them
    qos: str                                  # reliability the frames were published with
    clock: bool                               # /clock published
    wall_s: float                             # first publish to the end of the wait
    counters_before: dict[str, int] | None = None
    counters_after: dict[str, int] | None = None
    node_exit: int | None = None              # exit code of a node this replay started

    @property
    def counters(self) -> dict[str, int] | None:
        """The node's counters over the replay (after - before), from /diagnostics."""
        if self.counters_before is None or self.counters_after is None:
            return None
        return {k: self.counters_after[k] - self.counters_before.get(k, 0)
                for k in self.counters_after}


def node_namespace(node: str) -> str:
    """``/ns/zoa_node`` -> ``/ns``; ``/zoa_node`` -> ``""``."""
    return node.rsplit("/", 1)[0] if node.count("/") > 1 else ""


class BagPlayer:
    """An rclpy node of its own context, spun on a background thread, facing one ``zoa_node``
    (fully qualified name ``node``) that classifies ``topic``."""

    def __init__(self, node: str, topic: str, msgtype: str, domain_id: int | None = None
                 ) -> None:
        if msgtype not in MESSAGE_TYPES:
            raise ValueError(f"cannot publish {msgtype}")
        self.node_name = node if node.startswith("/") else "/" + node
        self.topic, self.msg_cls = topic, MESSAGE_TYPES[msgtype]
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.ros = rclpy.create_node(f"zoa_bag_player_{os.getpid()}", context=self.context)
        self.lock = threading.Condition()
        self.answers: list[tuple[dict, float]] = []
        self.pending: Counter[int] = Counter()   # published stamps without an answer yet
        self.last_event = time.monotonic()
        self.diagnostics: tuple[dict[str, int], float] | None = None
        self.results_topic = f"{node_namespace(self.node_name)}/classification_json"
        self.results = self.ros.create_subscription(String, self.results_topic,
                                                    self._on_result, RELIABLE)
        self.ros.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                     RELIABLE)
        self.publisher: Any = None
        self.qos = ""
        self.clock_publisher: Any = None
        self._clock_ns = 0
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.ros)
        self.thread = threading.Thread(target=self.executor.spin, name="zoa_bag_player",
                                       daemon=True)
        self.thread.start()

    # ---- callbacks ------------------------------------------------------------------------
    def _on_result(self, msg: String) -> None:
        received = time.monotonic()
        try:
            doc = json.loads(msg.data)
            stamp = int(doc["stamp"]["sec"]) * 1_000_000_000 + int(doc["stamp"]["nanosec"])
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.answers.append((doc, received))
            if self.pending[stamp] > 0:
                self.pending[stamp] -= 1
                self.last_event = received
            self.lock.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        prefix = f"{self.node_name}: "
        statuses = {s.name[len(prefix):]: values_of(s) for s in msg.status
                    if s.name.startswith(prefix)}
        main = statuses.get("classifier")
        if main is None:
            return
        counters = {"received": sum(int(v.get("received", 0)) for k, v in statuses.items()
                                    if k.startswith("camera ")),
                    "classified": int(main["frames_classified"]),
                    "dropped": int(main["dropped_frames"]),
                    "malformed": int(main["malformed_messages"])}
        with self.lock:
            self.diagnostics = (counters, time.monotonic())
            self.lock.notify_all()

    # ---- waiting --------------------------------------------------------------------------
    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str,
              alive: Callable[[], bool] = lambda: True) -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                if not alive():
                    raise RuntimeError(f"{self.node_name} exited while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.lock.wait(min(left, 0.05))

    def _node_subscriptions(self, topic: str) -> list[Any]:
        """The node's subscriptions to ``topic``: zoa_node holds its camera subscriptions on
        its input node (:mod:`zoa_ros.ros.camera_inputs`)."""
        names = (self.node_name, input_node_name(self.node_name))
        return [i for i in self.ros.get_subscriptions_info_by_topic(topic)
                if f"{i.node_namespace.rstrip('/')}/{i.node_name}" in names]

    def wait_for_node(self, timeout: float, qos: str = "auto",
                      alive: Callable[[], bool] = lambda: True) -> None:
        """Until the node subscribes to the camera topic (it is active), a publisher matching
        that subscription is matched, and the node's results reach this player."""
        if qos not in QOS_CHOICES:
            raise ValueError(f"qos must be one of {QOS_CHOICES}")
        found = self._wait(lambda: self._node_subscriptions(self.topic), timeout,
                           f"{self.node_name} to subscribe to {self.topic} (is it active, and "
                           f"is its camera topic {self.topic}?)", alive)
        wanted = found[0].qos_profile.reliability
        if qos == "auto":
            qos = "best_effort" if wanted == ReliabilityPolicy.BEST_EFFORT else "reliable"
        if qos == "best_effort" and wanted == ReliabilityPolicy.RELIABLE:
            raise ValueError(f"{self.node_name} subscribes to {self.topic} reliably; a "
                             "best-effort publisher would never reach it")
        reliability = (ReliabilityPolicy.BEST_EFFORT if qos == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        self.qos = qos
        self.publisher = self.ros.create_publisher(self.msg_cls, self.topic, QoSProfile(
            depth=5, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
            durability=DurabilityPolicy.VOLATILE))
        self._wait(lambda: self.publisher.get_subscription_count() > 0, timeout,
                   f"the publisher on {self.topic} to match {self.node_name}", alive)
        self._wait(lambda: self.results.get_publisher_count() > 0, timeout,
                   f"{self.results_topic} to match", alive)

    def enable_clock(self, timeout: float) -> None:
        """Publish /clock from now on, once the node's time source subscribes to it."""
        self._wait(lambda: self._node_subscriptions("/clock"), timeout,
                   f"{self.node_name} to subscribe to /clock (use_sim_time)")
        self.clock_publisher = self.ros.create_publisher(Clock, "/clock", QoSProfile(
            depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE))
        self._wait(lambda: self.clock_publisher.get_subscription_count() > 0, timeout,
                   "the /clock publisher to match")

    def parameters(self, names: list[str], timeout: float = 30.0) -> dict[str, Any]:
        """The node's values of ``names`` (``None`` for one it does not declare)."""
        response = call_service(self.ros, GetParameters, f"{self.node_name}/get_parameters",
                                GetParameters.Request(names=names), timeout, attempt_s=5.0)
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}

    def counters(self, after: float | None, timeout: float) -> dict[str, int] | None:
        """The node's counters from a /diagnostics message received after ``after``
        (monotonic; ``None``: the latest one, or the next); ``None`` if none came."""
        try:
            return self._wait(lambda: self.diagnostics is not None and (
                after is None or self.diagnostics[1] > after) and self.diagnostics[0],
                timeout, "diagnostics")
        except TimeoutError:
            return None

    # ---- playing --------------------------------------------------------------------------
    def _publish_clock(self, stamp_ns: int) -> None:
        if self.clock_publisher is None or stamp_ns < self._clock_ns:
            return
        self._clock_ns = stamp_ns
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        self.clock_publisher.publish(msg)

    def play(self, frames: Iterable[Outgoing], rate: float = 1.0, clock_hz: float = 20.0
             ) -> dict[int, float]:
        """Publish ``frames`` at the recorded pace / ``rate``; returns when each was sent."""
        if not rate > 0:
            raise ValueError("rate must be > 0")
        sent: dict[int, float] = {}
        t0 = base = None
        for index, stamp, log_ns, data in frames:
            if t0 is None:
                t0, base = time.monotonic(), log_ns
            due = t0 + max(0, log_ns - base) * 1e-9 / rate
            while (now := time.monotonic()) < due:
                self._publish_clock(base + int((now - t0) * rate * 1e9))
                time.sleep(min(due - now, 1.0 / clock_hz))
            self._publish_clock(log_ns)
            with self.lock:
                self.pending[stamp] += 1
                self.last_event = time.monotonic()
            self.publisher.publish(data if isinstance(data, bytes) else bytes(data))
            sent[index] = time.monotonic()
        return sent

    def wait_for_answers(self, settle_s: float, timeout: float) -> bool:
        """Until every published frame is answered (True), or no answer came for ``settle_s``
        or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while sum(self.pending.values()) > 0:
                now = time.monotonic()
                if now >= deadline or now - self.last_event >= settle_s:
                    return False
                self.lock.wait(min(0.05, deadline - now))
            return True

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        self.ros.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


def play_into_node(frames: Callable[[], Iterator[Outgoing]], *, topic: str, msgtype: str,
                   node: str = "/zoa_node", launch: NodeLaunch | None = None,
                   rate: float = 1.0, qos: str = "auto", settle_s: float = 5.0,
                   answer_timeout: float = 120.0, start_timeout: float = 120.0,
                   parameter_names: list[str] | None = None) -> Played:
    """Start the node (``launch``) or use the running ``node``, play ``frames()`` into it and
    collect what it answered; see the module docstring."""
    names = sorted({*(parameter_names or []), "use_sim_time", "diagnostics.period_s"})
    if launch is None:
        return _session(frames, topic, msgtype, node, None, rate, qos, settle_s,
                        answer_timeout, start_timeout, names, lambda: True, fresh=False)
    with tempfile.TemporaryDirectory(prefix="zoa_replay_") as home:
        env = ros_env(launch.domain_id, home)
        P.use_default_fastdds_profile(env)
        with _environ(env):
            process = NodeProcess(launch.overrides, env, launch.log, launch.remaps)
            try:
                played = _session(frames, topic, msgtype, node, launch.domain_id, rate, qos,
                                  settle_s, answer_timeout, start_timeout, names,
                                  process.alive, fresh=True)
            except (RuntimeError, TimeoutError) as e:
                process.stop()
                raise RuntimeError(f"{e}; node log {launch.log}:\n{_tail(launch.log)}") from e
            except BaseException:
                process.stop()
                raise
            played.node_exit = process.stop()
            return played


def _session(frames: Callable[[], Iterator[Outgoing]], topic: str, msgtype: str, node: str,
             domain_id: int | None, rate: float, qos: str, settle_s: float,
             answer_timeout: float, start_timeout: float, names: list[str],
             alive: Callable[[], bool], fresh: bool) -> Played:
    player = BagPlayer(node, topic, msgtype, domain_id)
    try:
        player.wait_for_node(start_timeout, qos, alive)
        parameters = player.parameters(names)
        clock = bool(parameters.get("use_sim_time"))
        if clock:
            player.enable_clock(start_timeout)
        period = float(parameters.get("diagnostics.period_s") or 1.0)
        before = ({"received": 0, "classified": 0, "dropped": 0, "malformed": 0} if fresh
                  else player.counters(None, 2 * period + 1.0))
        start = time.monotonic()
        sent = player.play(frames(), rate)
        player.wait_for_answers(settle_s, answer_timeout)
        wall = time.monotonic() - start
        after = player.counters(time.monotonic(), 2 * period + 1.0)
        with player.lock:
            answers = list(player.answers)
        return Played(sent, answers, parameters, player.qos, clock, wall, before, after)
    finally:
        player.close()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` (this process joins the node's graph), then
    restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

