"""The ROS layer's parts without a running node: frame slots, conversions, diagnostics,
parameter table vs config/zoa.yaml, the Fast DDS profile and the launch file."""

from __future__ import annotations

import ast
import importlib.util
import os
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml
from cv_bridge import CvBridge
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from zoa_ros.ros import conversions as conv
from zoa_ros.ros import params as P
from zoa_ros.ros.diagnostics import (
    ERROR,
    OK,
    WARN,
    CameraCounts,
    DiagnosticsTracker,
    LatencyWindow,
    Snapshot,
    Thresholds,
    values_of,
)
from zoa_ros.ros.frame_slot import FrameSlots

pytestmark = pytest.mark.filterwarnings("ignore:tostring:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


# ---- frame slots -------------------------------------------------------------------------------
def test_slot_keeps_newest_counts_drops_and_is_fair() -> None:
    slots = FrameSlots(("a", "b"))
    assert slots.take(timeout=0.01) is None
    assert not slots.put("a", 1)
    assert slots.put("a", 2) and slots.put("a", 3)      # 1 and 2 overwritten
    slots.put("b", 10)
    got = [slots.take(0.01), slots.take(0.01), slots.take(0.01)]
    assert [g.message for g in got[:2]] == [3, 10] and got[2] is None
    c = slots.counters()
    assert (c["a"].received, c["a"].dropped, c["a"].taken) == (3, 2, 1)
    assert (c["b"].received, c["b"].dropped, c["b"].taken) == (1, 0, 1)


def test_slot_take_wakes_on_put_and_close() -> None:
    slots = FrameSlots(("a",))
    out = []
    t = threading.Thread(target=lambda: out.append(slots.take(5.0)))
    t.start()
    time.sleep(0.05)
    slots.put("a", "x", "compressed")
    t.join(2)
    assert out[0].message == "x" and out[0].kind == "compressed"
    t = threading.Thread(target=lambda: out.append(slots.take(None)))
    t.start()
    slots.close()
    t.join(2)
    assert not t.is_alive() and out[1] is None


# ---- conversions -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_raw_encodings_made_by_cv_bridge(encoding: str) -> None:
    bridge = CvBridge()
    if encoding == "mono8":
        pixels, expect = RGB[:, :, 0].copy(), RGB[:, :, 0]
    else:
        order = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2, 0],
                 "bgra8": [2, 1, 0, 0]}[encoding]
        pixels, expect = np.ascontiguousarray(RGB[:, :, order]), RGB
    msg = bridge.cv2_to_imgmsg(pixels, encoding=encoding)
    out = conv.image_to_array(msg)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expect)


def _image(arr: np.ndarray, encoding: str, step: int | None = None) -> Image:
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1)
    step = step or row.shape[1]
    padded = np.zeros((h, step), np.uint8)
    padded[:, :row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = padded.tobytes()
    return msg


def test_row_padding_is_respected() -> None:
    # cv_bridge 1.13's imgmsg_to_cv2 ignores the padding; the numpy path must not.
    np.testing.assert_array_equal(conv.image_to_array(_image(RGB, "rgb8", step=7 * 3 + 5)), RGB)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda m: setattr(m, "step", 5), "step 5 < width"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "data has"),
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding"),
    (lambda m: setattr(m, "data", b""), "empty data"),
    (lambda m: setattr(m, "height", 0), "bad size"),
])
def test_malformed_raw_messages_say_why(mutate, reason: str) -> None:
    msg = _image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(conv.MalformedMessage, match=reason):
        conv.image_to_array(msg)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_made_by_cv_bridge(fmt: str) -> None:
    big = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    msg = CvBridge().cv2_to_compressed_imgmsg(np.ascontiguousarray(big[:, :, ::-1]), fmt)
    out = conv.to_array(msg, "compressed")
    assert out.shape == big.shape
    tolerance = 0 if fmt == "png" else 40
    assert np.abs(out.astype(int) - big.astype(int)).mean() <= tolerance


def test_malformed_compressed() -> None:
    with pytest.raises(conv.MalformedMessage, match="empty"):
        conv.compressed_to_array(CompressedImage(format="jpeg"))
    with pytest.raises(conv.MalformedMessage, match="unsupported compressed format"):
        conv.compressed_to_array(CompressedImage(format="tiff", data=b"abc"))
    with pytest.raises(conv.MalformedMessage, match="neither JPEG nor PNG"):
        conv.compressed_to_array(CompressedImage(format="jpeg", data=b"not a jpeg at all"))
    png = cv2.imencode(".png", RGB)[1].tobytes()
    with pytest.raises(conv.MalformedMessage, match="could not decode"):   # header fine, data cut
        conv.compressed_to_array(CompressedImage(format="png", data=png[:60]))


def test_frames_over_max_pixels_are_refused_before_decoding() -> None:
    """From the message fields (raw) or the PNG / JPEG header (compressed), before anything
    decodes: a 66-byte PNG claiming 100000 x 100000 pixels, a JPEG claiming 65500 x 65500."""
    from zoa_ros.ros.hostile_messages import jpeg_header_bomb, png_header_bomb

    raw = _image(RGB, "rgb8")   # 7 x 6 = 42 pixels
    assert conv.image_to_array(raw, max_pixels=42).shape == RGB.shape
    with pytest.raises(conv.MalformedMessage, match="exceeds max_pixels 41"):
        conv.check_image(raw, max_pixels=41)
    png = cv2.imencode(".png", RGB)[1].tobytes()
    assert conv.compressed_to_array(CompressedImage(format="png", data=png), 42).shape == \
        RGB.shape
    with pytest.raises(conv.MalformedMessage, match="7x6 = 42 pixels exceeds max_pixels 41"):
        conv.compressed_to_array(CompressedImage(format="png", data=png), 41)
    for data in (png_header_bomb(100000, 100000), jpeg_header_bomb(65500, 65500),
                 png_header_bomb(9000, 9000)):
        assert len(data) < 1000
        with pytest.raises(conv.MalformedMessage, match=r"pixels exceeds|decompression bomb"):
            conv.compressed_to_array(CompressedImage(format="png", data=data))
    bomb = _image(RGB, "rgb8")
    bomb.height, bomb.width, bomb.step = 100000, 100000, 300000
    with pytest.raises(conv.MalformedMessage, match="exceeds max_pixels"):
        conv.check_image(bomb)


def test_sender_chosen_text_in_a_reason_stays_short() -> None:
    msg = _image(RGB, "x" * 5000)
    with pytest.raises(conv.MalformedMessage) as refused:
        conv.check_image(msg)
    assert len(str(refused.value)) < 150


def test_result_json_has_exactly_the_documented_fields() -> None:
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    top = [SimpleNamespace(class_index=3, label="cat", score=0.5)]
    d = conv.result_dict(header, "image", top, 1.5, 7, 2, None, 1.25, 0.5)
    assert d == {"stamp": {"sec": 12, "nanosec": 34}, "frame_id": "cam", "camera": "image",
                 "results": [{"class_index": 3, "label": "cat", "score": 0.5}],
                 "inference_ms": 1.5, "inference_cpu_ms": 1.25, "queued_ms": 0.5,
                 "adaptation_steps": 7, "bank_entries": 2, "domain": 0}


def test_vision_classification_builder() -> None:
    class Hyp(SimpleNamespace):
        pass

    class Cls(SimpleNamespace):
        pass

    header = Header(frame_id="cam")
    msg = conv.vision_classification(Cls, Hyp, header,
                                     [SimpleNamespace(class_index=5, label="x", score=0.25)])
    assert msg.header is header and msg.results[0].class_id == "5" and msg.results[0].score == 0.25


# ---- diagnostics -------------------------------------------------------------------------------
def _snap(now: float, **kw) -> Snapshot:
    cams = {"image": CameraCounts("image", received=kw.pop("received", 10),
                                  malformed=kw.pop("malformed", 0), classified=5,
                                  last_received=kw.pop("last", now))}
    return Snapshot(now=now, state=kw.pop("state", "active"), active_since=0.0, cameras=cams,
                    **kw)


def test_health_levels_and_reasons() -> None:
    tracker = DiagnosticsTracker("/zoa_node")
    th = Thresholds(stale_input_s=2.0, max_latency_ms=50.0)
    msg = tracker.message(_snap(1.0), th, None)
    assert msg.status[0].level == bytes([OK]) and values_of(msg.status[0])["health"] == "OK"
    msg = tracker.message(_snap(2.0, received=40, malformed=3), th, None)
    main, cam = msg.status
    assert main.level == bytes([WARN]) and "3 malformed" in main.message
    assert values_of(cam)["input_rate_hz"] == "30.00" and values_of(cam)["malformed"] == "3"
    level, reasons, _ = tracker.health(_snap(9.0, last=1.0, latency_p99_ms=80.0), th)
    assert level == WARN and any("no frames on image" in r for r in reasons)
    assert any("p99" in r for r in reasons)
    level, reasons, _ = tracker.health(_snap(9.0, state="unconfigured",
                                             error="configure failed: x"), th)
    assert level == ERROR and reasons[0] == "configure failed: x"


def test_a_backend_fallback_is_a_warning_with_its_reason() -> None:
    tracker = DiagnosticsTracker("/zoa_node")
    reason = "inference backend auto: the int8 runtime is not used (no onnxruntime)"
    msg = tracker.message(_snap(1.0, backend="torch", backend_warning=reason),
                          Thresholds(), None)
    main = msg.status[0]
    assert main.level == bytes([WARN]) and reason in main.message
    assert values_of(main)["inference_backend"] == "torch"
    msg = tracker.message(_snap(2.0, backend="onnxruntime"), Thresholds(), None)
    assert msg.status[0].level == bytes([OK])
    assert values_of(msg.status[0])["inference_backend"] == "onnxruntime"


def test_health_names_refusals_rollbacks_and_stopped_threads() -> None:
    tracker = DiagnosticsTracker("/zoa_node")
    th = Thresholds()
    tracker.message(_snap(1.0, threads={"inference": True, "adaptation": True}), th, None)
    snap = _snap(2.0, malformed=1, adaptation_rolled_back=2,
                 last_rollback="rolled back: non-finite loss (L0 nan, L+ nan)",
                 threads={"inference": True, "adaptation": True, "camera_inputs": False})
    snap.cameras["image"].last_malformed = "frame of 9000x9000 = 81000000 pixels exceeds ..."
    snap.cameras["image"].subscribed = "/camera/image_raw"
    main, cam = tracker.message(snap, th, None).status
    assert main.level == bytes([ERROR])
    values = values_of(main)
    assert "thread(s) stopped: camera_inputs" in values["reasons"]
    assert "2 adaptation step(s) rolled back (rolled back: non-finite loss" in values["reasons"]
    assert "(last: frame of 9000x9000" in values["reasons"]
    assert values["adaptation_rolled_back"] == "2"
    assert values["threads_alive"] == "inference, adaptation"
    assert values["threads_stopped"] == "camera_inputs"
    assert values_of(cam)["subscribed_topic"] == "/camera/image_raw"
    assert values_of(cam)["last_malformed"].startswith("frame of 9000x9000")
    _, reasons, _ = tracker.health(_snap(9.0, last=1.0), th)   # stale: the real topic
    assert any("no frames on image" in r for r in reasons)


def test_latency_window() -> None:
    w = LatencyWindow(10)
    assert w.percentiles(50) == [None]
    for v in range(1, 21):
        w.add(v)
    assert w.percentiles(50, 100) == [15.5, 20.0]


# ---- parameters vs config/zoa.yaml ---------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_yaml_documents_every_parameter_with_its_default() -> None:
    text = (ROOT / "config" / "zoa.yaml").read_text()
    values = _flatten(yaml.safe_load(text)["zoa_node"]["ros__parameters"])
    values.pop("use_sim_time")
    assert set(values) == set(P.BY_NAME)
    for name, value in values.items():
        assert value == P.BY_NAME[name].default, name
        assert type(value) is P.BY_NAME[name].kind, name   # 0.0 not 0 for doubles
        assert P.validate(name, value) is None
    for line in text.splitlines():   # every parameter line carries a comment
        if ":" in line and not line.strip().startswith("#") and "ros__parameters" not in line \
                and not line.rstrip().endswith(":"):
            assert "#" in line, line


def test_validate_rejects_with_reasons() -> None:
    assert "must be >= 1" in P.validate("adaptation.interval_frames", 0)
    assert "one of" in P.validate("transport", "h264")
    assert "must be a float" in P.validate("adaptation.lr", "fast")
    assert P.validate("adaptation.lr", 0) is None            # ints are fine for doubles
    assert "at least one" in P.validate("image_topics", [])
    assert "twice" in P.validate("image_topics", ["a", "a"])
    assert "must be a bool" in P.validate("adaptation.enabled", 1)
    for cpus in ("", "1", 1, [0, 1], "2-3,6"):   # one parameter, several ROS types
        assert P.validate("inference.cpus", cpus) is None, cpus
    assert "inference.cpus: bad CPU list" in P.validate("inference.cpus", "fast")
    assert P.descriptor(P.BY_NAME["inference.cpus"]).dynamic_typing
    d = P.descriptor(P.BY_NAME["pack"])
    assert d.read_only and "restart" in d.additional_constraints
    assert P.descriptor(P.BY_NAME["adaptation.interval_frames"]).integer_range[0].from_value == 1


def test_engine_config_carries_the_statistics_settings() -> None:
    from zoa_ros.ros.node import ZoaNode

    values = {s.name: s.default for s in P.SPECS}
    cfg = ZoaNode.engine_config(values.__getitem__, 1000).method_config
    assert (cfg["bn_stats"], cfg["frame_momentum"], cfg["stats_prior"]) == ("running", 0.01, 0.75)
    assert cfg["stats_reset_on_change"] is False
    assert (cfg["stats_recall"], cfg["recall_window"]) == (True, 32)
    values["adaptation.stats_reset_on_change"] = True
    assert ZoaNode.engine_config(values.__getitem__, 1000).method_config[
        "stats_reset_on_change"] is True


def test_engine_config_carries_the_inference_backend() -> None:
    from zoa_ros.ros.node import ZoaNode

    values = {s.name: s.default for s in P.SPECS}
    config = ZoaNode.engine_config(values.__getitem__, 1000)
    assert (config.backend, config.int8_model, config.backend_threads) == ("auto", None, 1)
    values.update({"inference.backend": "torch", "inference.int8_model": "~/lite0.onnx",
                   "inference.threads": 2})
    config = ZoaNode.engine_config(values.__getitem__, 1000)
    assert config.backend == "torch" and config.backend_threads == 2
    assert config.int8_model == os.path.expanduser("~/lite0.onnx")
    assert "one of" in P.validate("inference.backend", "tensorrt")


def test_help_lists_every_parameter() -> None:
    text = P.help_text()
    assert all(s.name in text for s in P.SPECS)


# ---- config files --------------------------------------------------------------------------------
def test_fastdds_profile_is_found_and_sized_for_large_images() -> None:
    path = P.config_path(P.FASTDDS_PROFILE)
    assert path == ROOT / "config" / P.FASTDDS_PROFILE
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(path).getroot()
    shm = next(t for t in root.iterfind(".//d:transport_descriptor", ns)
               if t.findtext("d:type", namespaces=ns) == "SHM")
    assert shm.findtext("d:segment_size", namespaces=ns) == "16777216"
    assert shm.findtext("d:maxMessageSize", namespaces=ns) == "16777216"
    types = {t.findtext("d:type", namespaces=ns)
             for t in root.iterfind(".//d:transport_descriptor", ns)}
    assert types == {"SHM", "UDPv4"}
    assert root.findtext(".//d:useBuiltinTransports", namespaces=ns) == "false"
    env: dict = {}
    assert P.use_default_fastdds_profile(env) == str(path)
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}
    assert P.use_default_fastdds_profile(env) == "/mine.xml"


LAUNCH = ROOT / "launch" / "zoa.launch.py"
LAUNCH_ARGS = {"params_file", "namespace", "image_topic", "use_sim_time", "bank_file",
               "log_level", "fastdds_profile"}


def test_launch_file_without_the_launch_system() -> None:
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    compile(source, str(LAUNCH), "exec")
    assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert set(ast.literal_eval(assigned["ARGUMENTS"])) == LAUNCH_ARGS
    assert ast.literal_eval(assigned["PACKAGE"]) == "zoa_ros"
    assert '"FASTDDS_DEFAULT_PROFILES_FILE"' in source and 'executable="zoa_node"' in source
    params = yaml.safe_load((ROOT / "config" / "zoa.yaml").read_text())
    assert set(_flatten(params["zoa_node"]["ros__parameters"])) >= set(P.BY_NAME)
    assert (ROOT / "config" / "fastdds_large_images.xml").is_file()
    scripts = Path(__import__("sys").executable).parent
    assert (scripts / "zoa_node").is_file()   # the executable the launch file starts


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros is not installed (no ROS 2 distribution)")
def test_launch_description_with_launch_ros() -> None:  # pragma: no cover - needs ROS 2
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location("zoa_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert declared == LAUNCH_ARGS
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)
    assert context.environment["FASTDDS_DEFAULT_PROFILES_FILE"].endswith(
        "fastdds_large_images.xml")


@pytest.mark.parametrize("idle", [True, False])
def test_adaptation_thread_priority_is_lowered_for_that_thread_only(idle: bool) -> None:
    """SCHED_IDLE (the default) or nice + 5, for the calling thread only."""
    import os

    from zoa_ros.ros.adaptation_worker import lower_priority

    warnings: list[str] = []
    log = SimpleNamespace(warning=warnings.append)
    seen: dict[str, int] = {}

    def adaptation() -> None:
        lower_priority(idle, 5, log)
        tid = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["policy"] = os.sched_getscheduler(tid)

    me = threading.get_native_id()
    before, policy = os.getpriority(os.PRIO_PROCESS, me), os.sched_getscheduler(me)
    thread = threading.Thread(target=adaptation)
    thread.start()
    thread.join(timeout=10)
    assert not warnings
    if idle:
        assert seen == {"nice": before, "policy": os.SCHED_IDLE}
    else:
        assert seen == {"nice": min(before + 5, 19), "policy": policy}
    assert os.getpriority(os.PRIO_PROCESS, me) == before
    assert os.sched_getscheduler(me) == policy
