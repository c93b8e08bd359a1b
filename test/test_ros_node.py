"""zoa_node as a real process, driven by a real rclpy client in this process.

Two node processes are shared by the module (started together): ``/zoa_node`` with
``config/zoa.yaml`` plus test overrides (raw images, two cameras, shipped best-effort QoS) and
``/c/zoa_node`` (compressed input on its remapped camera topic, reliable QoS, classification
pinned to a CPU of its own where there are two, bank files confined to a folder). The last
test stops both with SIGINT. Every wait polls with a timeout (discovery can take ~3 s); every
subprocess has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CPUS = os.sched_getaffinity(0)
C_CPU = max(CPUS) if len(CPUS) > 1 else None   # node "c" classifies on this CPU alone
PROFILE = ROOT / "config" / "fastdds_large_images.xml"
DOMAIN = 101 + os.getpid() % 100
START_TIMEOUT = 120.0
C_REMAP = "image:=front"   # node "c": its camera /c/image -> /c/front, so compressed: C_TOPIC
C_TOPIC = "/c/front/compressed"

os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                  FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
os.environ.pop("RMW_IMPLEMENTATION", None)

import rclpy  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from zoa_ros.ros.diagnostics import values_of  # noqa: E402
from zoa_ros.ros.node_process import call_service  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")

RESULT_KEYS = {"stamp", "frame_id", "camera", "results", "inference_ms", "inference_cpu_ms",
               "queued_ms", "adaptation_steps", "bank_entries", "domain"}
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


# ---- the test client ---------------------------------------------------------------------------
class Client:
    """An rclpy node of its own context, spun on a background thread."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN)
        self.node = rclpy.create_node("zoa_test_client", context=self.context)
        self.lock = threading.Condition()
        self.results: dict[str, list[dict]] = {"/": [], "/c/": []}
        self.status: dict[str, Any] = {}
        self.published: dict[str, float] = {}   # status name -> its message's stamp (s)
        self.labels: list[str] | None = None
        for ns in self.results:
            self.node.create_subscription(String, f"{ns}classification_json",
                                          self._on_result(ns), RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, "/zoa_node/labels", self._on_labels, latched)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self._publishers: dict[tuple, Any] = {}

    def _on_result(self, ns: str) -> Callable[[String], None]:
        def callback(msg: String) -> None:
            with self.lock:
                self.results[ns].append(json.loads(msg.data))
                self.lock.notify_all()
        return callback

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.status[status.name] = status
                self.published[status.name] = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.lock.notify_all()

    def _on_labels(self, msg: String) -> None:
        with self.lock:
            self.labels = json.loads(msg.data)
            self.lock.notify_all()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # ---- waiting ----
    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.lock.wait(min(left, 0.1))

    def diag(self, name: str, timeout: float = 10.0, since: float | None = None) -> dict[str, str]:
        """Values of the next status ``name`` received from now on; with ``since`` (wall-clock
        seconds), the next one the node stamped at or after it, not one that was queued."""
        with self.lock:
            self.status.pop(name, None)
        status = self.wait(lambda: self.status.get(name) if since is None or
                           self.published.get(name, 0.0) >= since else None,
                           timeout, f"diagnostics {name}")
        return {**values_of(status), "_message": status.message, "_level": status.level}

    # ---- topics and services ----
    def publisher(self, msg_type: type, topic: str, qos: QoSProfile = qos_profile_sensor_data,
                  subscribers: int = 1) -> Any:
        key = (msg_type, topic)
        if key not in self._publishers:
            pub = self.node.create_publisher(msg_type, topic, qos)
            self.wait(lambda: pub.get_subscription_count() >= subscribers, 15.0,
                      f"a subscriber on {topic}")
            self._publishers[key] = pub
        return self._publishers[key]

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 20.0,
             once: bool = False) -> Any:
        """Call a service; an unanswered request is sent again every 5 s (a new client's first
        response can be lost while DDS still matches its reply reader: ``call_service``),
        unless ``once`` (a request that must not run twice)."""
        return call_service(self.node, srv_type, name, request, timeout,
                            attempt_s=timeout if once else 5.0)

    def transition(self, node: str, transition: int, target: str) -> bool:
        """Ask a lifecycle node for ``transition`` (sent once); True if it succeeded, or if
        its answer was lost and the node is now in the ``target`` state."""
        request = ChangeState.Request(transition=Transition(id=transition))
        try:
            return self.call(ChangeState, f"{node}/change_state", request, once=True).success
        except TimeoutError:
            return self.state(node) == target

    def trigger(self, name: str) -> Any:
        return self.call(Trigger, name, Trigger.Request())

    def set_params(self, node: str, **values: Any) -> list:
        request = SetParameters.Request(parameters=[
            Parameter(k.replace("__", "."), value=v).to_parameter_msg()
            for k, v in values.items()])
        return self.call(SetParameters, f"{node}/set_parameters", request).results

    def get_params(self, node: str, names: list[str]) -> dict[str, Any]:
        response = self.call(GetParameters, f"{node}/get_parameters",
                             GetParameters.Request(names=names))
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}

    def state(self, node: str) -> str:
        return self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label

    def send_each(self, pub: Any, make: Callable[[int], Any], ns: str, frame_id: str,
                  count: int, timeout: float = 15.0) -> None:
        """Publish ``count`` frames in lock-step: each one is classified before the next is
        sent (none are dropped; lost ones are resent)."""
        for i in range(count):
            self.send_until(pub, lambda _, i=i: make(i), _result(self, ns, frame_id=frame_id,
                                                                 sec=make(i).header.stamp.sec),
                            timeout=timeout, period=0.5)

    def send_until(self, pub: Any, make: Callable[[int], Any], done: Callable[[], Any],
                   timeout: float = 20.0, period: float = 0.15) -> Any:
        """Publish ``make(i)`` every ``period`` s until ``done()`` (best-effort input)."""
        deadline = time.monotonic() + timeout
        i = 0
        while time.monotonic() < deadline:
            pub.publish(make(i))
            i += 1
            with self.lock:
                self.lock.wait(period)
                value = done()
            if value:
                return value
        raise AssertionError(f"no result after {i} messages in {timeout} s")


# ---- messages ----------------------------------------------------------------------------------
PHOTO = (np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))


def image(encoding: str = "rgb8", sec: int = 1, nanosec: int = 0, frame_id: str = "front",
          pixels: np.ndarray = PHOTO, step: int | None = None, data: bytes | None = None
          ) -> Image:
    h, w = pixels.shape[:2]
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 3)
    if channels == 4:
        pixels = np.concatenate([pixels, pixels[:, :, :1]], axis=2)
    elif channels == 1:
        pixels = pixels[:, :, 0]
    msg = Image(height=h, width=w, encoding=encoding, step=step or w * channels)
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame_id
    msg.data = np.ascontiguousarray(pixels).tobytes() if data is None else data
    return msg


def compressed(fmt: str, sec: int, frame_id: str, data: bytes | None = None) -> CompressedImage:
    import cv2

    _, buf = cv2.imencode(f".{fmt}", PHOTO[:240, :320])
    msg = CompressedImage(format=fmt, data=buf.tobytes() if data is None else data)
    msg.header.stamp.sec, msg.header.frame_id = sec, frame_id
    return msg


# ---- the node processes --------------------------------------------------------------------------
class NodeProcess:
    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name, self.log = name, log
        self.handle = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zoa_ros.ros.node", "--ros-args", *args],
            stdout=self.handle, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())

    def output(self) -> str:
        self.handle.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.handle.close()


@pytest.fixture(scope="module")
def setup(make_pack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ros")
    os.environ["ROS_HOME"] = str(tmp / "ros_home")
    _, pack_path = make_pack("test_resnet", "w8a8")
    small = {"adaptation": {"batch_size": 8, "interval_frames": 8, "min_batch": 8,
                            "detect_min_batch": 8},
             "diagnostics": {"period_s": 0.5}, "top_k": 3, "pack": str(pack_path)}
    main_overrides = {**small, "image_topics": ["image", "cam1/image"],
                      "knowledge": {"bank_path": str(tmp / "main.zoabank")}}
    c_overrides = {**small, "transport": "compressed",
                   "qos": {"reliability": "reliable", "depth": 10},
                   "inference": {"cpus": "" if C_CPU is None else str(C_CPU)},
                   "knowledge": {"bank_dir": str(tmp / "c_banks"), "bank_path": "c.zoabank"}}
    files = {}
    for name, values in (("main", main_overrides), ("c", c_overrides)):
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    nodes = {
        "main": NodeProcess("/zoa_node", ["--params-file", str(ROOT / "config" / "zoa.yaml"),
                                          "--params-file", str(files["main"])], tmp / "main.log"),
        # a namespace and a node-specific remapping of the camera topic, which the compressed
        # transport follows (image_transport's <base topic>/compressed)
        "c": NodeProcess("/c/zoa_node", ["-r", "__ns:=/c", "-r", f"zoa_node:{C_REMAP}",
                                         "--params-file", str(files["c"])], tmp / "c.log"),
    }
    client = Client()
    try:
        for proc in nodes.values():
            deadline = time.monotonic() + START_TIMEOUT
            while client.state(proc.name) != "active":
                assert proc.proc.poll() is None, f"{proc.name} exited:\n{proc.output()}"
                assert time.monotonic() < deadline, f"{proc.name} not active:\n{proc.output()}"
                time.sleep(0.2)
        yield SimpleSetup(client, nodes, tmp, main_overrides)
    finally:
        client.close()
        for proc in nodes.values():
            proc.stop()


class SimpleSetup:
    def __init__(self, client: Client, nodes: dict, tmp: Path, overrides: dict) -> None:
        self.client, self.nodes, self.tmp, self.overrides = client, nodes, tmp, overrides


def _result(client: Client, ns: str, **match: Any) -> Callable[[], dict | None]:
    def find() -> dict | None:
        for r in reversed(client.results[ns]):
            if all((r["stamp"]["sec"] if k == "sec" else r[k]) == v for k, v in match.items()):
                return r
        return None
    return find


# ---- tests ---------------------------------------------------------------------------------------
def test_image_in_classification_out_with_the_source_header(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    result = c.send_until(pub, lambda i: image("bgr8", sec=1000 + i, nanosec=77, frame_id="front"),
                          _result(c, "/", frame_id="front"))
    assert set(result) == RESULT_KEYS
    assert 1000 <= result["stamp"]["sec"] < 2000 and result["stamp"]["nanosec"] == 77
    assert result["camera"] == "image" and len(result["results"]) == 3
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    labels = c.wait(lambda: c.labels, 10, "labels on ~/labels")
    assert len(labels) == 1000
    assert all(labels[r["class_index"]] == r["label"] for r in result["results"])
    assert isinstance(result["inference_ms"], float) and result["inference_ms"] > 0
    assert 0 < result["inference_cpu_ms"] <= result["inference_ms"] * 1.05 + 1.0
    assert isinstance(result["queued_ms"], float) and result["queued_ms"] >= 0
    for key in ("adaptation_steps", "bank_entries", "domain"):
        assert isinstance(result[key], int)


@pytest.mark.parametrize("encoding", ["rgb8", "rgba8", "bgra8", "mono8"])
def test_every_raw_encoding_is_classified(setup, encoding: str) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    c.send_until(pub, lambda i: image(encoding, sec=3000 + i, frame_id=f"enc_{encoding}"),
                 _result(c, "/", frame_id=f"enc_{encoding}"))


def test_several_cameras(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/cam1/image")
    result = c.send_until(pub, lambda i: image("rgb8", sec=4000 + i, frame_id="side"),
                          _result(c, "/", frame_id="side"))
    assert result["camera"] == "cam1/image"
    for _ in range(3):   # a status built just before the count may still be on its way
        cam = c.diag("/zoa_node: camera cam1/image")
        if int(cam["classified"]) >= 1:
            break
    assert int(cam["classified"]) >= 1 and int(cam["received"]) >= 1


def test_malformed_messages_are_counted_and_the_node_keeps_serving(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    good = image("rgb8", pixels=PHOTO[:8, :8])
    bad = {
        "wrong step": image("rgb8", pixels=PHOTO[:8, :8], step=5),
        "size mismatch": image("rgb8", pixels=PHOTO[:8, :8], data=good.data[:-7]),
        "unknown encoding": image("yuv422", pixels=PHOTO[:8, :8]),
        "empty data": image("rgb8", pixels=PHOTO[:8, :8], data=b""),
    }
    name = "/zoa_node: camera image"
    start = count = int(c.diag(name)["malformed"])
    sent = 0
    for what, msg in bad.items():
        for _ in range(5):   # best-effort input: resend if it was lost (or is late)
            pub.publish(msg)
            sent += 1
            seen = [int(c.diag(name)["malformed"]) for _ in range(3)]   # ~1.5 s
            if seen[-1] > count:
                count = seen[-1]
                break
        else:
            raise AssertionError(f"{what} never counted")
    assert count <= start + sent   # each one counted once at most (late copies included)
    main = c.diag("/zoa_node: classifier")
    assert int(main["malformed_messages"]) >= 4
    c.send_until(pub, lambda i: image("rgb8", sec=5000 + i, frame_id="after_bad"),
                 _result(c, "/", frame_id="after_bad"))
    assert setup.nodes["main"].proc.poll() is None
    assert "unsupported encoding 'yuv422'" in setup.nodes["main"].output()


def test_malformed_message_makes_health_warn(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    name = "/zoa_node: classifier"
    deadline = time.monotonic() + 15
    while True:
        pub.publish(image("rgb8", pixels=PHOTO[:4, :4], data=b"\x00"))
        values = c.diag(name)
        if values["health"] == "WARN" and "malformed" in values["reasons"]:
            break
        assert time.monotonic() < deadline, values


def test_a_burst_is_dropped_to_the_newest_frame(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    before = int(c.diag("/zoa_node: camera image")["dropped"])
    for i in range(40):
        pub.publish(image("rgb8", sec=6000 + i, frame_id="burst"))
    values = c.wait(lambda: _dropped_more(c, before), 15, "dropped frames")
    assert values


def _dropped_more(c: Client, before: int) -> bool:
    status = c.status.get("/zoa_node: camera image")
    return status is not None and int(values_of(status)["dropped"]) > before


def test_adaptation_runs_and_set_adaptation_false_stops_it(setup) -> None:
    c = setup.client
    pub = c.publisher(Image, "/image")
    name = "/zoa_node: classifier"
    steps0 = int(c.diag(name)["adaptation_steps"])
    c.send_until(pub, lambda i: image("rgb8", sec=7000 + i, frame_id="adapt"),
                 lambda: int(values_of(c.status[name])["adaptation_steps"]) > steps0,
                 timeout=60, period=0.08)
    response = c.call(SetBool, "/zoa_node/set_adaptation", SetBool.Request(data=False))
    switched = time.time()   # the node's clock is the wall clock here (no sim time yet)
    assert response.success and response.message == "adaptation off"
    assert c.get_params("/zoa_node", ["adaptation.enabled"]) == {"adaptation.enabled": False}
    # statuses the node published after the switch (one queued from before it says "on"); a
    # step already running may still finish
    readings = [c.diag(name, since=switched) for _ in range(3)]
    while len({r["adaptation_steps"] for r in readings[-3:]}) > 1:
        assert len(readings) < 40, "adaptation steps keep increasing while disabled"
        readings.append(c.diag(name, since=switched))
    frozen = readings[-1]
    assert frozen["adaptation_enabled"] == "false"
    sent = len(c.results["/"])
    c.send_each(pub, lambda i: image("rgb8", sec=8000 + i, frame_id="frozen",
                                     pixels=PHOTO[:120, :160]), "/", "frozen", 24)
    time.sleep(0.5)
    assert c.diag(name)["adaptation_steps"] == frozen["adaptation_steps"]
    assert all(r["adaptation_steps"] == int(frozen["adaptation_steps"])
               for r in c.results["/"][sent:])
    assert c.call(SetBool, "/zoa_node/set_adaptation", SetBool.Request(data=True)).success
    c.send_until(pub, lambda i: image("rgb8", sec=9000 + i, frame_id="thawed"),
                 lambda: int(values_of(c.status[name])["adaptation_steps"])
                 > int(frozen["adaptation_steps"]), timeout=60, period=0.08)


def test_save_load_round_trip_and_refused_bank(setup) -> None:
    c = setup.client
    path = Path(setup.overrides["knowledge"]["bank_path"])
    saved = c.trigger("/zoa_node/save_knowledge")
    assert saved.success, saved.message
    size = path.stat().st_size
    assert str(path) in saved.message and "bank entries" in saved.message
    assert f"({size} bytes)" in saved.message
    loaded = c.trigger("/zoa_node/load_knowledge")
    assert loaded.success and "loaded" in loaded.message and str(path) in loaded.message
    entries = c.diag("/zoa_node: classifier")["bank_entries"]

    bad = setup.tmp / "bad.zoabank"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a bank at all}")
    assert all(r.successful for r in c.set_params("/zoa_node", knowledge__bank_path=str(bad)))
    refused = c.trigger("/zoa_node/load_knowledge")
    assert not refused.success
    assert str(bad) in refused.message and "running bank is unchanged" in refused.message
    missing = setup.tmp / "missing.zoabank"
    c.set_params("/zoa_node", knowledge__bank_path=str(missing))
    nothing = c.trigger("/zoa_node/load_knowledge")
    assert not nothing.success and "no bank file" in nothing.message
    unwritable = setup.tmp / "bad.zoabank" / "sub.zoabank"   # under a regular file
    c.set_params("/zoa_node", knowledge__bank_path=str(unwritable))
    failed = c.trigger("/zoa_node/save_knowledge")
    assert not failed.success and "failed" in failed.message and str(unwritable) in failed.message

    c.set_params("/zoa_node", knowledge__bank_path=str(path))
    assert c.diag("/zoa_node: classifier")["bank_entries"] == entries
    again = c.trigger("/zoa_node/load_knowledge")   # the running bank still saves and loads
    assert again.success, again.message


def test_reset(setup) -> None:
    c = setup.client
    before = int(c.diag("/zoa_node: classifier")["resets"])
    response = c.trigger("/zoa_node/reset")
    assert response.success and response.message.startswith("back to the source model; kept")
    assert int(c.diag("/zoa_node: classifier")["resets"]) == before + 1
    pub = c.publisher(Image, "/image")
    c.send_until(pub, lambda i: image("rgb8", sec=9500 + i, frame_id="after_reset"),
                 _result(c, "/", frame_id="after_reset"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_every_parameter_in_zoa_yaml_is_accepted(setup) -> None:
    c = setup.client
    expected = _flatten(yaml.safe_load((ROOT / "config" / "zoa.yaml").read_text())
                        ["zoa_node"]["ros__parameters"])
    overridden = set(_flatten(setup.overrides)) | {"knowledge.bank_path"}
    listed = c.call(ListParameters, "/zoa_node/list_parameters",
                    ListParameters.Request()).result.names
    assert set(expected) <= set(listed)
    actual = c.get_params("/zoa_node", sorted(expected))
    for name, value in expected.items():
        if name not in overridden:
            assert actual[name] == value, name
    assert "ignoring unknown parameters" not in setup.nodes["main"].output()


def test_bad_dynamic_values_are_rejected_with_a_reason(setup) -> None:
    c = setup.client
    cases = {
        "adaptation__interval_frames": 0,       # below the declared range
        "adaptation__lr": -1.0,
        "top_k": 5000,                          # more than the 1000 labels
        "adaptation__enabled": "yes",           # wrong type
        "pack": "/elsewhere.zoapack",           # read-only
        "transport": "compressed",              # read-only
    }
    for key, value in cases.items():
        (result,) = c.set_params("/zoa_node", **{key: value})
        assert not result.successful and result.reason, key
    (top_k,) = c.set_params("/zoa_node", top_k=5000)
    assert "1000" in top_k.reason
    ok = c.set_params("/zoa_node", adaptation__interval_frames=8, adaptation__lr=0.001,
                      adaptation__domain_threshold=0.5, top_k=3)
    assert all(r.successful for r in ok), [r.reason for r in ok]
    assert c.get_params("/zoa_node", ["adaptation.lr"])["adaptation.lr"] == 0.001
    assert all(r.successful for r in c.set_params("/zoa_node", adaptation__lr=0.0))


def test_compressed_input(setup) -> None:
    c = setup.client
    pub = c.publisher(CompressedImage, C_TOPIC, RELIABLE)
    for fmt in ("jpeg", "png"):
        result = c.send_until(pub, lambda i, f=fmt: compressed(f, 100 + i, f"c_{f}"),
                              _result(c, "/c/", frame_id=f"c_{fmt}"))
        assert result["camera"] == "image" and set(result) == RESULT_KEYS
    name = "/c/zoa_node: camera image/compressed"
    assert c.diag(name)["subscribed_topic"] == C_TOPIC
    assert f"active: classifying {C_TOPIC}" in setup.nodes["c"].output()
    before = int(c.diag(name)["malformed"])
    pub.publish(compressed("jpeg", 1, "c_bad", data=b"\xff\xd8 not really a jpeg"))
    pub.publish(compressed("jpeg", 2, "c_empty", data=b""))
    c.wait(lambda: int(values_of(c.status[name])["malformed"]) >= before + 2, 10,
           "malformed compressed frames counted")
    c.send_until(pub, lambda i: compressed("jpeg", 200 + i, "c_after"),
                 _result(c, "/c/", frame_id="c_after"))


def test_frames_over_max_pixels_are_refused_with_the_reason(setup) -> None:
    """Header bombs (raw fields, a PNG header) and, after max_pixels is lowered at run time, a
    normal frame: counted as malformed, the reason in /diagnostics; the node classifies on."""
    from zoa_ros.ros.hostile_messages import png_header_bomb

    c = setup.client
    raw = c.publisher(Image, "/image")
    bomb = image("rgb8", pixels=PHOTO[:4, :4])
    bomb.height, bomb.width, bomb.step = 100000, 100000, 300000
    _refused(c, raw, bomb, "/zoa_node: camera image", "100000x100000 = 10000000000 pixels "
             "exceeds max_pixels 67108864")
    comp = c.publisher(CompressedImage, C_TOPIC, RELIABLE)
    _refused(c, comp, compressed("png", 1, "bomb", data=png_header_bomb(100000, 100000)),
             "/c/zoa_node: camera image/compressed", "decompression bomb")
    assert all(r.successful for r in c.set_params("/zoa_node", max_pixels=1000))
    try:
        _refused(c, raw, image("rgb8", frame_id="too_big"), "/zoa_node: camera image",
                 "640x480 = 307200 pixels exceeds max_pixels 1000")
    finally:
        assert all(r.successful for r in c.set_params("/zoa_node", max_pixels=67108864))
    c.send_until(raw, lambda i: image("rgb8", sec=9700 + i, frame_id="after_bombs"),
                 _result(c, "/", frame_id="after_bombs"))


def _refused(c: Client, pub: Any, msg: Any, status: str, reason: str) -> None:
    """Publish ``msg`` until its camera's /diagnostics names ``reason`` as the last refusal."""
    deadline = time.monotonic() + 20
    while True:
        pub.publish(msg)
        values = c.diag(status.split(": camera")[0] + ": classifier")
        cam = values_of(c.status[status])
        if reason in cam["last_malformed"]:
            assert "malformed" in values["reasons"] or int(cam["malformed"]) > 0
            return
        assert time.monotonic() < deadline, cam


def test_saves_never_replace_a_file_that_is_not_a_bank(setup) -> None:
    c = setup.client
    entries = c.diag("/zoa_node: classifier")["bank_entries"]
    notes = setup.tmp / "notes.txt"
    notes.write_text("precious")
    for target in (notes, setup.tmp):   # a text file, a folder
        assert all(r.successful for r in c.set_params("/zoa_node",
                                                      knowledge__bank_path=str(target)))
        refused = c.trigger("/zoa_node/save_knowledge")
        assert not refused.success and "is not a zoa_ros knowledge bank" in refused.message
        assert "refusing to replace it" in refused.message
    assert notes.read_text() == "precious"
    _back_to_the_bank(c, setup, entries)


def _back_to_the_bank(c: Client, setup: Any, entries: str) -> None:
    """The running bank is intact and saves to its own file again."""
    assert c.diag("/zoa_node: classifier")["bank_entries"] == entries
    path = setup.overrides["knowledge"]["bank_path"]
    assert all(r.successful for r in c.set_params("/zoa_node", knowledge__bank_path=path))
    saved = c.trigger("/zoa_node/save_knowledge")
    assert saved.success and f"saved {entries} bank entries" in saved.message


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_a_save_into_a_read_only_or_full_folder_fails_and_keeps_the_bank(setup, kind) -> None:
    c = setup.client
    folder = setup.tmp / kind
    folder.mkdir(exist_ok=True)
    entries = c.diag("/zoa_node: classifier")["bank_entries"]
    with _unwritable(folder, kind) as why:
        assert all(r.successful for r in c.set_params(
            "/zoa_node", knowledge__bank_path=str(folder / "k.zoabank")))
        failed = c.trigger("/zoa_node/save_knowledge")
        assert not failed.success and why in failed.message, failed.message
        assert "the running bank is kept" in failed.message
        assert not list(folder.glob("*k.zoabank*"))   # no file, no temp file left
    _back_to_the_bank(c, setup, entries)


@contextlib.contextmanager
def _unwritable(folder: Path, kind: str):
    """``folder`` read-only or full; yields the error text a write there gives. A small
    tmpfs (root), or for read-only without root a folder without write permission."""
    root = os.geteuid() == 0
    if not root and kind == "full":
        pytest.skip("a full file system needs a tmpfs mount (root)")
    if root:
        options = "ro" if kind == "read-only" else "size=4k"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        if kind == "full":
            (folder / "filler").write_bytes(b"\0" * 4096)
    else:
        folder.chmod(0o555)
    try:
        yield {"read-only": "Read-only file system" if root else "Permission denied",
               "full": "No space left on device"}[kind]
    finally:
        if root:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_bank_dir_confines_the_bank_path(setup) -> None:
    c = setup.client
    folder = setup.tmp / "c_banks"
    folder.mkdir(exist_ok=True)
    outside = setup.tmp / "outside.zoabank"
    (folder / "link.zoabank").symlink_to(outside)
    for path in (str(outside), "../outside.zoabank", "link.zoabank"):
        (result,) = c.set_params("/c/zoa_node", knowledge__bank_path=path)
        assert not result.successful and "outside knowledge.bank_dir" in result.reason, path
    (result,) = c.set_params("/c/zoa_node", knowledge__bank_path="sub/../mission.zoabank")
    assert result.successful, result.reason
    saved = c.trigger("/c/zoa_node/save_knowledge")
    assert saved.success and str(folder / "mission.zoabank") in saved.message
    assert not outside.exists()
    assert c.set_params("/c/zoa_node", knowledge__bank_path="c.zoabank")[0].successful


def test_diagnostics_report_everything(setup) -> None:
    c = setup.client
    main = c.diag("/zoa_node: classifier")
    for key in ("state", "health", "reasons", "frames_classified", "inference_latency_p50_ms",
                "inference_latency_p99_ms", "malformed_messages", "dropped_frames",
                "adaptation_enabled", "adaptation_steps", "last_step_ms", "adaptation_paused_s",
                "domain_changes", "shift_gate", "shift_gate_openings", "frames_adapting",
                "bank_entries", "bank_bytes", "statistics_memory_entries",
                "statistics_recalls", "resets"):
        assert key in main, key
    assert main["shift_gate"] in ("closed", "adapting", "resting", "")   # "": no gate
    assert int(main["frames_adapting"]) >= 0 and int(main["shift_gate_openings"]) >= 0
    assert main["state"] == "active" and float(main["inference_latency_p99_ms"]) > 0
    assert float(main["last_step_ms"]) > 0 and int(main["adaptation_steps"]) > 0
    cam = c.diag("/zoa_node: camera image")
    for key in ("input_rate_hz", "classified_rate_hz", "received", "dropped", "malformed"):
        assert key in cam, key


def test_min_period_follows_sim_time(setup) -> None:
    """With use_sim_time the adaptation period runs on /clock (bag replay)."""
    from rosgraph_msgs.msg import Clock

    c = setup.client
    name = "/c/zoa_node: classifier"
    clock_pub = c.node.create_publisher(Clock, "/clock", RELIABLE)
    now = {"sec": 10}
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.05):
            clock_pub.publish(Clock(clock=Time(sec=now["sec"])))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    pub = c.publisher(CompressedImage, C_TOPIC, RELIABLE)
    try:
        ok = c.set_params("/c/zoa_node", use_sim_time=True, adaptation__min_period_s=1000.0)
        assert all(r.successful for r in ok)
        c.wait(lambda: clock_pub.get_subscription_count() >= 1, 15, "a /clock subscriber")
        time.sleep(0.5)   # let the node receive /clock
        before = int(c.diag(name)["adaptation_steps"])
        for phase in ("first", "frozen"):
            steps = int(c.diag(name)["adaptation_steps"])
            # 3 x interval_frames classified while sim time stands still at 10 s
            c.send_each(pub, lambda i, p=phase: compressed("jpeg", 400 + i, f"sim_{p}"), "/c/",
                        f"sim_{phase}", 24)
            time.sleep(0.5)
            # first phase: at most the one step that no earlier step holds back
            assert int(c.diag(name)["adaptation_steps"]) - steps <= (phase == "first")
        assert int(c.diag(name)["adaptation_steps"]) <= before + 1
        now["sec"] = 2_000_000_000   # far past the last step + 1000 s
        c.send_until(pub, lambda i: compressed("jpeg", 500 + i, "sim2"),
                     lambda: int(values_of(c.status[name])["adaptation_steps"]) > steps,
                     timeout=30, period=0.08)
    finally:
        stop.set()
        ticker.join(2)
        c.set_params("/c/zoa_node", use_sim_time=False, adaptation__min_period_s=0.0)


def test_deactivate_autosaves_and_activate_resumes(setup) -> None:
    c = setup.client
    bank = setup.tmp / "c_banks" / "c.zoabank"
    assert not bank.exists()
    assert c.transition("/c/zoa_node", Transition.TRANSITION_DEACTIVATE, "inactive")
    assert c.state("/c/zoa_node") == "inactive"
    assert bank.is_file()
    assert c.diag("/c/zoa_node: classifier")["health"] == "WARN"   # "node is inactive"
    assert all(cpus == CPUS for cpus in _per_thread(os.sched_getaffinity,   # unpinned
                                                    setup.nodes["c"].proc.pid))
    assert c.transition("/c/zoa_node", Transition.TRANSITION_ACTIVATE, "active")
    assert c.state("/c/zoa_node") == "active"
    pub = c.publisher(CompressedImage, C_TOPIC, RELIABLE)
    c.send_until(pub, lambda i: compressed("png", 300 + i, "c_again"),
                 _result(c, "/c/", frame_id="c_again"))


def test_only_the_adapting_main_thread_runs_at_idle_priority(setup) -> None:
    """The running node (shipped config) has exactly one SCHED_IDLE thread: the main thread,
    which runs the adaptation (its heap holds an adaptation batch's largest blocks), with one
    compute thread, so no OpenMP worker of its own; classification keeps normal priority."""
    pid = setup.nodes["main"].proc.pid
    idle = [tid for tid, policy in _per_thread(lambda tid: (tid, os.sched_getscheduler(tid)),
                                               pid) if policy == os.SCHED_IDLE]
    assert idle == [pid]
    assert len(_per_thread(os.sched_getscheduler, pid)) > 1


def _per_thread(query: Callable[[int], Any], pid: int) -> list[Any]:
    """``query(tid)`` for each thread of process ``pid`` (threads that end meanwhile skipped)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append(query(int(task.name)))
        except OSError:
            continue
    return out


@pytest.mark.skipif(C_CPU is None, reason="needs two CPUs")
def test_inference_cpus_reserve_a_cpu_for_classification(setup) -> None:
    """Node "c" (inference.cpus = the last CPU): one thread, classification with its one compute
    thread, runs on that CPU alone and every other thread on the rest; the unpinned node keeps
    every thread on every CPU. Node "c" classifies all along (test_compressed_input)."""
    pinned = _per_thread(os.sched_getaffinity, setup.nodes["c"].proc.pid)
    assert pinned.count({C_CPU}) == 1
    assert pinned.count(CPUS - {C_CPU}) == len(pinned) - 1 > 0
    assert all(cpus == CPUS for cpus in _per_thread(os.sched_getaffinity,
                                                    setup.nodes["main"].proc.pid))
    assert f"classification on CPU(s) {C_CPU}, the node's other threads on" in \
        setup.nodes["c"].output()


def test_sigint_exits_cleanly_and_autosaves(setup) -> None:
    main, comp = setup.nodes["main"], setup.nodes["c"]
    main_bank = Path(setup.overrides["knowledge"]["bank_path"])
    c_bank = setup.tmp / "c_banks" / "c.zoabank"
    mtimes = [main_bank.stat().st_mtime_ns, c_bank.stat().st_mtime_ns]
    start = time.monotonic()
    for proc in (main, comp):
        proc.proc.send_signal(signal.SIGINT)
    for proc in (main, comp):
        assert proc.proc.wait(timeout=15) == 0, proc.output()
    assert time.monotonic() - start < 10
    assert all(p.stat().st_mtime_ns > m for p, m in zip((main_bank, c_bank), mtimes))
    assert "autosave on shutdown: saved" in comp.output()


def test_start_up_errors_are_clear(tmp_path: Path) -> None:
    env = {**os.environ, "ROS_HOME": str(tmp_path)}
    run = [sys.executable, "-m", "zoa_ros.ros.node", "--ros-args"]
    missing = subprocess.run([*run, "-p", f"pack:={tmp_path / 'missing.zoapack'}"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 1
    assert "no such pack file" in missing.stderr + missing.stdout
    bad = subprocess.run([*run, "-p", "adaptation.interval_frames:=0", "-p", "transport:=h264",
                          "-p", "inference.cpus:=fast"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2
    assert "adaptation.interval_frames" in bad.stderr and "transport" in bad.stderr
    assert "inference.cpus: bad CPU list 'fast'" in bad.stderr
    far = max(CPUS) + 1
    absent = subprocess.run([*run, "-p", "knowledge.autoload:=false", "-p",
                             f"inference.cpus:={far}"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert absent.returncode == 1
    assert f"inference.cpus: CPU(s) {far} not available" in absent.stderr + absent.stdout

