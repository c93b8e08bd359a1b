"""``zoa_node``: a lifecycle node that classifies camera frames with a quantized model and adapts
it at test time, driving :class:`zoa_ros.core.engine.Engine` (no model math here).

Lifecycle: *configure* loads the pack (or builds one from ``pack_build.*``; with neither, the
default pack of :mod:`zoa_ros.core.model.default_pack`, built once into the cache), creates the
engine with the method preset and autoloads the knowledge bank; *activate* subscribes to the
cameras, starts the inference thread and lets the adaptation run; *deactivate* stops both and
autosaves; *shutdown* (also on SIGINT/SIGTERM) autosaves when it was active. With
``autostart`` the node configures and activates itself.

Threads: subscription callbacks only check headers and put the message into its camera's
newest-frame slot (:mod:`.frame_slot`); one inference thread converts and classifies the newest
frames (``Engine.predict(observe=True)``) and publishes; the process's main thread, at idle
priority, calls ``Engine.maybe_adapt()`` when woken (every ``adaptation.interval_frames`` frames,
or sooner when ZOA asks to measure a new domain, at most every ``adaptation.min_period_s`` of
node time), so a step never blocks classification
(:mod:`.adaptation_worker`: why the main thread); a thread of normal priority runs autostart,
signals and shutdown.

Topics (relative, so namespaced and remappable): in ``<camera>`` (sensor_msgs/Image) or
``<camera>/compressed`` (CompressedImage); out ``classification_json`` (std_msgs/String),
``classification`` (vision_msgs/Classification, when vision_msgs is installed), ``~/labels``
(transient local, JSON list), ``/diagnostics`` (1 Hz). Services: ``~/save_knowledge``,
``~/load_knowledge``, ``~/reset`` (std_srvs/Trigger), ``~/set_adaptation`` (SetBool).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from zoa_ros.ros import params as P

P.use_default_fastdds_profile()   # before this process creates its first DDS participant

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.callback_groups import (  # noqa: E402
    MutuallyExclusiveCallbackGroup,
)
from rclpy.clock import Clock, ClockType  # noqa: E402
from rclpy.exceptions import InvalidHandle  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from zoa_ros.core.runtime.allocator import heap_per_thread, keeps_freed_memory  # noqa: E402
from zoa_ros.core.runtime.cpus import (  # noqa: E402
    format_cpus,
    parse_cpus,
    pin_threads,
    process_cpus,
    reserve_cpus,
)
from zoa_ros.ros import conversions  # noqa: E402
from zoa_ros.ros.adaptation_worker import AdaptationWorker, ControlBusy  # noqa: E402
from zoa_ros.ros.camera_inputs import CameraInputs  # noqa: E402
from zoa_ros.ros.conversions import MalformedMessage  # noqa: E402
from zoa_ros.ros.diagnostics import (  # noqa: E402
    CameraCounts,
    DiagnosticsTracker,
    LatencyWindow,
    Snapshot,
    Thresholds,
)
from zoa_ros.ros.frame_slot import FrameSlots  # noqa: E402

try:   # optional: ROS 2 vision_msgs (not on PyPI)
    from vision_msgs.msg import Classification, ObjectHypothesis
except ImportError:  # pragma: no cover - depends on the installation
    Classification = ObjectHypothesis = None

NODE_NAME = "zoa_node"
# The inference thread runs hundreds of short torch kernels per frame, each releasing and
# retaking the GIL; a thread waiting for it (executor, subscription callbacks) then gets it only
# when its wait times out. `zoa-ros bench node --sizes 224x224 --seconds 10` (30 Hz, 2 cores)
# with this at Python's default 5 ms: 154 of 301 frames lost before the callback; at 0.5 ms: 6.
GIL_SWITCH_INTERVAL_S = 0.0005

# Dynamic parameters -> (target, field): "engine" = EngineConfig, "method" = the method's cfg.
TUNING = {
    "adaptation.interval_frames": ("engine", "interval_frames"),
    "adaptation.min_period_s": ("engine", "min_period_s"),
    "adaptation.stride": ("engine", "stride"),
    "top_k": ("engine", "top_k"),
    "adaptation.lr": ("method", "lr"),
    "adaptation.alpha_lr": ("method", "alpha_lr"),
    "adaptation.domain_threshold": ("method", "domain_t"),
    "adaptation.detect_domains": ("method", "detect"),
}
PRESET_ZERO = {"adaptation.lr", "adaptation.alpha_lr", "adaptation.domain_threshold"}


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """The camera subscriptions' QoS: keep the last ``depth``, volatile, ``reliability``
    ``"reliable"`` or best effort (the ``qos.*`` parameters)."""
    return QoSProfile(depth=int(depth), history=HistoryPolicy.KEEP_LAST,
                      reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                   else ReliabilityPolicy.BEST_EFFORT),
                      durability=DurabilityPolicy.VOLATILE)


def use_compute_threads(n: int) -> None:
    """:func:`zoa_ros.core.runtime.threads.use_compute_threads`, importing torch only when
    needed."""
    from zoa_ros.core.runtime.threads import use_compute_threads as use

    use(n)


class ZoaNode(LifecycleNode):
    """See the module docstring. Raises :class:`params.ParameterError` on bad start-up
    parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        P.declare_all(self)
        self._warn_unknown_overrides()
        log = self.get_logger()
        self._engine: Any = None
        self._initial_method_cfg: Any = None
        self._error = ""
        self._autosave_blocked = ""
        self._state = "unconfigured"
        self._active_since: float | None = None
        self._cameras = list(self.p("image_topics"))
        self._transport = self.p("transport")
        self._max_pixels = self.p("max_pixels")
        folder = str(self.p("knowledge.bank_dir")).strip()
        self._bank_dir = Path(os.path.realpath(_expand(folder))) if folder else None
        self._slots = FrameSlots(tuple(self._cameras))
        self._counts = {c: CameraCounts(self._input_topic(c)) for c in self._cameras}
        self._counts_lock = threading.Lock()
        self._logged: dict[tuple[str, str], float] = {}   # throttled malformed-message logs
        self._latency = LatencyWindow(self.p("diagnostics.latency_window"))
        self._inference_errors = 0
        self._inputs: CameraInputs | None = None
        self._threads: list[threading.Thread] = []
        self._streaming = False   # the inference thread and the camera inputs run (and should)
        self._inference_cpus = parse_cpus(self.p("inference.cpus"))
        self._process_cpus: frozenset[int] = frozenset()
        self._stop = threading.Event()
        # its lock: an adaptation step, a reset, a bank load or save never overlap
        self._adapter = AdaptationWorker(threading.Lock(), log, lambda: (
            self.p("adaptation.threads"), self.p("adaptation.idle_priority"),
            self.p("adaptation.thread_nice")))
        self._tracker = DiagnosticsTracker(self.get_fully_qualified_name())

        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._json_pub = self.create_publisher(String, "classification_json", 10)
        self._vision_pub = (self.create_publisher(Classification, "classification", 10)
                            if Classification is not None else None)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._labels_pub = self.create_publisher(String, "~/labels", latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for name, kind, handler in (("~/save_knowledge", Trigger, self._srv_save),
                                    ("~/load_knowledge", Trigger, self._srv_load),
                                    ("~/reset", Trigger, self._srv_reset),
                                    ("~/set_adaptation", SetBool, self._srv_set_adaptation)):
            self.create_service(kind, name, handler, callback_group=self._service_group)
        self._diag_timer = self.create_timer(
            self.p("diagnostics.period_s"), self._publish_diagnostics,
            callback_group=self._timer_group, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        log.info(f"{len(self._cameras)} camera(s) {self._cameras} ({self._transport}); "
                 f"vision_msgs {'available' if Classification else 'not installed'}")

    # ---- small helpers ------------------------------------------------------------------
    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    @property
    def engine(self) -> Any:
        return self._engine

    def _input_topic(self, camera: str) -> str:
        """The camera's input as named in diagnostics (relative, before remapping)."""
        return f"{camera}/compressed" if self._transport == "compressed" else camera

    def _bank_path(self, text: str | None = None) -> Path | None:
        """``knowledge.bank_path`` (or ``text``) as an absolute path, ``None`` if empty;
        ValueError when ``knowledge.bank_dir`` is set and it resolves outside that folder."""
        text = str(self.p("knowledge.bank_path") if text is None else text).strip()
        if not text:
            return None
        path = Path(_expand(text))
        folder = self._bank_dir
        if folder is None:
            return path.absolute()
        real = Path(os.path.realpath(folder / path))   # absolute paths stay as they are
        if not real.is_relative_to(folder):
            raise ValueError(f"knowledge.bank_path {text!r} resolves to {real}, outside "
                             f"knowledge.bank_dir {folder}")
        return real

    def _node_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn_unknown_overrides(self) -> None:
        known = set(P.BY_NAME) | {"use_sim_time", "start_type_description_service"}
        unknown = sorted(set(self._parameter_overrides) - known)
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameters {unknown} (typo?)")

    # ---- lifecycle ----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            engine = self._build_engine()
        except Exception as e:  # any failure: report it and stay unconfigured
            self._error = f"configure failed: {e}"
            log.error(self._error)
            return TransitionCallbackReturn.FAILURE
        self._engine = engine
        self._initial_method_cfg = getattr(engine.method, "cfg", None)
        self._error = ""
        self._labels_pub.publish(String(data=json.dumps(list(engine.labels))))
        self._autoload()
        self._state = "inactive"
        log.info(f"configured: {engine.pack.spec.name} {engine.pack.quant.name}, method "
                 f"{engine.config.method}, {len(engine.labels)} labels")
        if engine.config.keep_freed_memory and not keeps_freed_memory():
            log.warning("inference.keep_freed_memory: this C library has no glibc mallopt; "
                        "freed memory is handled by its defaults")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._engine is None:
            return TransitionCallbackReturn.FAILURE
        self._start_streaming()
        self._state = "active"
        with self._counts_lock:
            topics = [self._counts[c].subscribed for c in self._cameras]
        self.get_logger().info("active: classifying " + ", ".join(topics))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._state = "inactive"
        self._autosave("deactivate")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_engine()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if state.label == "active":
            self._stop_streaming()
            self._autosave("shutdown")
        self._drop_engine()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._drop_engine()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    @property
    def state_label(self) -> str:
        return self._state

    def start(self) -> bool:
        """configure + activate (autostart); False if either failed."""
        return (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)

    def finish(self) -> None:
        """The shutdown transition, from whatever state the node is in."""
        if self._state != "finalized":
            try:
                self.trigger_shutdown()
            except Exception as e:   # e.g. a transition was in progress
                self.get_logger().error(f"shutdown transition failed: {e}")
                self._stop_streaming()
                if self._state == "active":
                    self._autosave("shutdown")
                self._drop_engine()
                self._state = "finalized"

    # ---- configure ----------------------------------------------------------------------
    def _build_engine(self) -> Any:
        self._check_cpus()
        use_compute_threads(1)   # only the inference thread computes on several CPUs
        pack = self._load_pack()
        from zoa_ros.core.engine import Engine

        config = self.engine_config(self.p, len(pack.labels))
        return Engine(pack, config, clock=self._node_seconds)

    def _check_cpus(self) -> None:
        """ValueError unless inference.cpus is empty or among the CPUs this process may use."""
        if not self._inference_cpus:
            return
        if not hasattr(os, "sched_setaffinity"):
            raise ValueError("inference.cpus needs Linux (CPU affinity); leave it empty here")
        self._process_cpus = process_cpus()
        missing = self._inference_cpus - self._process_cpus
        if missing:
            raise ValueError(f"inference.cpus: CPU(s) {format_cpus(missing)} not available; "
                             f"this process may use {format_cpus(self._process_cpus)}")

    @staticmethod
    def engine_config(p: Callable[[str], Any], num_labels: int) -> Any:
        """The EngineConfig the parameter values ``p(name)`` describe, for a pack with
        ``num_labels`` labels (also the offline twin of a live replay)."""
        from zoa_ros.core.engine import EngineConfig

        method = p("adaptation.method")
        batch = p("adaptation.batch_size")
        min_batch = p("adaptation.min_batch") or batch
        if not 2 <= min_batch <= batch:
            raise ValueError(f"adaptation.min_batch {min_batch} must be 2..batch_size ({batch})")
        buffer = p("adaptation.buffer_size") or None
        top_k = p("top_k")
        if top_k > num_labels:
            raise ValueError(f"top_k {top_k} > the pack's {num_labels} labels")
        method_config: dict[str, Any] = {}
        if method == "zoa":
            method_config = {
                "preset": p("adaptation.preset"),
                "bn_stats": p("adaptation.bn_stats"),
                "frame_momentum": p("adaptation.frame_momentum"),
                "stats_prior": p("adaptation.stats_prior"),
                "stats_reset_on_change": p("adaptation.stats_reset_on_change"),
                "stats_recall": p("adaptation.stats_recall"),
                "recall_window": p("adaptation.recall_window"),
                "no_harm": p("adaptation.no_harm"),
                "gate_false_alarm": p("adaptation.gate_false_alarm"),
                "gate_dwell": p("adaptation.gate_dwell"),
                "min_adapt_batch": min_batch,
                "detect_min_batch": p("adaptation.detect_min_batch") or batch,
                "detect": p("adaptation.detect_domains"),
            }
            for name in PRESET_ZERO:
                if p(name) > 0:
                    method_config[TUNING[name][1]] = p(name)
        config = EngineConfig(
            method=method, method_config=method_config, seed=p("seed"), mode="streaming",
            batch_size=batch, interval_frames=p("adaptation.interval_frames"),
            buffer_size=buffer, min_frames=min_batch,
            min_period_s=p("adaptation.min_period_s"), stride=p("adaptation.stride"),
            top_k=top_k, device=p("device"), adapt_enabled=p("adaptation.enabled"),
            keep_freed_memory=p("inference.keep_freed_memory"),
            backend=p("inference.backend"),
            int8_model=os.path.expanduser(str(p("inference.int8_model")).strip()) or None,
            backend_threads=p("inference.threads") or len(process_cpus()),
            max_pause_s=p("adaptation.max_pause_ms") / 1e3)
        return config

    def _load_pack(self) -> Any:
        text = str(self.p("pack")).strip()
        model = str(self.p("pack_build.model")).strip()
        from zoa_ros.core.model.pack import ModelPack

        if text:
            return ModelPack.load(Path(os.path.expandvars(os.path.expanduser(text))))
        if model:
            return self._build_pack(model)
        from zoa_ros.core.model.default_pack import ensure_default_pack

        return ModelPack.load(ensure_default_pack(log=self.get_logger().info).path)

    def _build_pack(self, model: str) -> Any:
        from zoa_ros.core.files.images import find_images
        from zoa_ros.core.model.calibration import build_pack
        from zoa_ros.core.model.factory import ModelSpec
        from zoa_ros.core.model.pack import ModelPack, PackError
        from zoa_ros.core.quant import QuantConfig

        spec = ModelSpec(model, self.p("pack_build.weights") or "random")
        quant = QuantConfig.parse(self.p("pack_build.quant"))
        out_text = str(self.p("pack_build.out")).strip()
        out = Path(os.path.expanduser(out_text)) if out_text else None
        if out is not None and out.is_file():
            try:
                pack = ModelPack.load(out)
                if pack.spec.name == spec.name and pack.spec.weights == spec.weights \
                        and pack.quant.name == quant.name:
                    self.get_logger().info(f"reusing built pack {out}")
                    return pack
            except PackError as e:
                self.get_logger().warning(f"rebuilding {out}: {e}")
        folder = str(self.p("pack_build.images")).strip()
        images = find_images(Path(os.path.expanduser(folder))) if folder else []
        if not images:
            raise ValueError(f"pack_build.images {folder!r}: no calibration images found")
        self.get_logger().info(f"calibrating {model} {quant.name} on {len(images)} images ...")
        pack = build_pack(spec, quant, images, num_images=self.p("pack_build.num_images"),
                          progress=False)
        if out is not None:
            pack.save(out)
        return pack

    def _has_bank(self) -> bool:
        return self._engine is not None and hasattr(self._engine.method, "export_bank")

    def _bank_target(self) -> tuple[Path | None, str]:
        """(the bank file, "") or (None, why there is none)."""
        try:
            path = self._bank_path()
        except ValueError as e:
            return None, str(e)
        return (path, "") if path is not None else (None, "knowledge.bank_path is empty")

    def _autoload(self) -> None:
        path, _ = self._bank_target()
        if not (self.p("knowledge.autoload") and self._has_bank()):
            return
        if path is None and not str(self.p("knowledge.bank_path")).strip():
            return   # no bank file configured
        if path is not None and not path.is_file():
            return   # none saved yet
        ok, message = self._load_bank()
        if ok:
            self.get_logger().info(f"autoload: {message}")
        else:
            self._autosave_blocked = (f"autosave suspended: autoload failed ({message}); "
                                      "~/save_knowledge or ~/load_knowledge clears this")
            self.get_logger().error(self._autosave_blocked)

    def _drop_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None
        self._initial_method_cfg = None

    # ---- streaming ----------------------------------------------------------------------
    def _input_qos(self) -> QoSProfile:
        return input_qos(self.p("qos.reliability"), self.p("qos.depth"))

    def _start_streaming(self) -> None:
        self._stop.clear()
        self._slots.clear()
        self._slots.reopen()
        kind = "compressed" if self._transport == "compressed" else "raw"
        msg_type = CompressedImage if kind == "compressed" else Image
        qos = self._input_qos()
        self._inputs = CameraInputs(self)
        for camera in self._cameras:
            # compressed: <camera's resolved topic>/compressed, image_transport's convention,
            # so a remapping of the camera topic moves both transports
            topic = self._inputs.subscribe(msg_type, camera, self._input_callback(camera, kind),
                                           qos, "compressed" if kind == "compressed" else "")
            with self._counts_lock:
                self._counts[camera].subscribed = topic
        self._active_since = time.monotonic()
        ready = threading.Event()
        self._threads = [threading.Thread(target=self._inference_loop, args=(ready,),
                                          name="zoa_inference", daemon=True)]
        self._threads[0].start()
        ready.wait(10.0)
        use_compute_threads(1)   # threads that compute from now on default to one CPU
        if self._engine is not None:
            self._adapter.start(self._engine)
        self._inputs.start()
        self._streaming = True

    def _stop_streaming(self) -> None:
        self._streaming = False
        if self._inputs is not None:
            self._inputs.close()
            self._inputs = None
        self._stop.set()
        self._slots.close()
        if not self._adapter.stop():   # a running step is abandoned and undone
            self.get_logger().error("an adaptation step did not end within 60 s")
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads = []
        if self._inference_cpus and self._process_cpus:
            pin_threads(self._process_cpus)   # every thread back on the process's CPUs
        self._active_since = None

    def _input_callback(self, camera: str, kind: str) -> Any:
        counts = self._counts[camera]

        def check(msg: Any) -> None:
            if kind == "compressed":
                conversions.check_compressed(msg)
            else:
                conversions.check_image(msg, self._max_pixels)

        def callback(msg: Any) -> None:
            with self._counts_lock:
                counts.received += 1
                counts.last_received = time.monotonic()
            try:
                check(msg)
            except MalformedMessage as e:
                self._malformed(camera, str(e))
                return
            self._slots.put(camera, msg, kind)

        return callback

    def _malformed(self, camera: str, reason: str) -> None:
        """Count a malformed message; log each kind of problem at most every 5 s per camera.

        The kind is the reason without numbers and quoted text (which a sender chooses); the
        table of last log times forgets kinds not seen for 5 s once it holds 64, so hostile
        input cannot grow it."""
        key = (camera, re.sub(r"'[^']*'|[\d.]+", "#", reason)[:80])
        now = time.monotonic()
        with self._counts_lock:
            counts = self._counts[camera]
            counts.malformed += 1
            counts.last_malformed = reason
            due = now - self._logged.get(key, -math.inf) >= 5.0
            if due:
                if len(self._logged) >= 64:
                    self._logged = {k: t for k, t in self._logged.items() if now - t < 5.0}
                self._logged[key] = now
        if due:
            self.get_logger().warning(
                f"malformed message on {counts.subscribed or counts.topic}: {reason}")

    def _inference_loop(self, ready: threading.Event) -> None:
        log = self.get_logger()
        if self._inference_cpus:
            self._reserve_cpus()
        use_compute_threads(self.p("inference.threads"))
        ready.set()
        engine = self._engine
        while not self._stop.is_set():
            item = self._slots.take(timeout=0.25)
            if item is None:
                continue
            try:
                self._classify(engine, item)
            except Exception as e:   # counted and logged: no frame ends the loop
                self._inference_errors += 1
                log.error(f"classifying a frame from {item.camera} failed: {e!r}",
                          throttle_duration_sec=5.0)

    def _reserve_cpus(self) -> None:
        """inference.cpus for this (the inference) thread, the rest for the others."""
        log = self.get_logger()
        try:
            rest = reserve_cpus(self._inference_cpus, self._process_cpus)
        except OSError as e:
            log.warning(f"inference.cpus: cannot pin the threads ({e}); the scheduler places them")
            return
        log.info(f"classification on CPU(s) {format_cpus(self._inference_cpus)}, the node's "
                 f"other threads on " + (format_cpus(rest) if rest else
                                        "any (inference.cpus leaves none for them)"))

    def _classify(self, engine: Any, item: Any) -> None:
        """Convert, classify and publish one frame, then fold its statistics (adaptation on)."""
        from zoa_ros.core.engine import MalformedFrame

        queued_ms = (time.monotonic() - item.received) * 1e3
        try:
            frame = conversions.to_array(item.message, item.kind, self._max_pixels)
        except MalformedMessage as e:
            engine.note_malformed(1)
            self._malformed(item.camera, str(e))
            return
        observe = engine.adapt_enabled
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            prediction = engine.predict(frame, observe=observe)[0]
        except MalformedFrame as e:   # already counted by the engine
            self._malformed(item.camera, str(e))
            return
        ms = (time.perf_counter() - start) * 1e3
        cpu_ms = (time.thread_time() - cpu_start) * 1e3
        self._latency.add(ms)
        with self._counts_lock:   # counted before publishing: diagnostics never lag a result
            self._counts[item.camera].classified += 1
        header = item.message.header
        self._json_pub.publish(String(data=conversions.result_json(
            header, item.camera, prediction.top, ms, prediction.adapt_steps,
            engine.stats().bank_entries, prediction.domain_id, cpu_ms, queued_ms)))
        if self._vision_pub is not None:
            self._vision_pub.publish(conversions.vision_classification(
                Classification, ObjectHypothesis, header, prediction.top))
        if observe:
            try:
                engine.settle()   # the frame's statistics, now that its result is out
            finally:
                self._adapter.wake()

    def run_adaptation(self, until: threading.Event) -> None:
        """Adaptation steps on the calling thread until ``until`` is set; ``main()`` gives it
        the main thread (:mod:`.adaptation_worker` says why). Call :meth:`interrupt_adaptation`
        after setting ``until``."""
        self._adapter.run(until)

    def interrupt_adaptation(self) -> None:
        self._adapter.interrupt()

    def _control(self) -> AbstractContextManager[None]:
        """The control lock for a reset, bank load or save, a running step abandoned rather
        than waited for; :class:`ControlBusy` after ``adaptation.control_wait_s``."""
        return self._adapter.control(self.p("adaptation.control_wait_s"))

    # ---- knowledge bank -----------------------------------------------------------------
    def _save_bank(self) -> tuple[bool, str]:
        """Save through the engine: atomic, never over a file that is not a bank, never a
        non-finite value, only inside knowledge.bank_dir; a failure keeps the running bank and
        the file there."""
        engine, (path, why) = self._engine, self._bank_target()
        if engine is None:
            return False, "not configured: no model loaded"
        if path is None:
            return False, f"not saved: {why}"
        try:
            with self._control():
                engine.save_bank(path, provenance={"writer": self.get_fully_qualified_name()})
        except ControlBusy as e:
            return False, f"not saved: {e}; any previous file is unchanged, try again"
        except (ValueError, OSError) as e:
            return False, (f"save to {path} failed: {e}; any previous file is unchanged and "
                           "the running bank is kept")
        self._autosave_blocked = ""
        entries = engine.stats().bank_entries
        return True, f"saved {entries} bank entries ({path.stat().st_size} bytes) to {path}"

    def _load_bank(self) -> tuple[bool, str]:
        engine, (path, why) = self._engine, self._bank_target()
        if engine is None:
            return False, "not configured: no model loaded"
        if path is None:
            return False, f"not loaded: {why}; the running bank is unchanged"
        if not path.is_file():
            return False, f"no bank file at {path}; the running bank is unchanged"
        try:
            with self._control():
                engine.load_bank(path)
        except ControlBusy as e:
            return False, f"not loaded: {e}; the running bank is unchanged, try again"
        except (ValueError, OSError) as e:
            return False, f"refused {path}: {e}; the running bank is unchanged"
        self._autosave_blocked = ""
        entries = engine.stats().bank_entries
        return True, f"loaded {entries} bank entries ({path.stat().st_size} bytes) from {path}"

    def _autosave(self, when: str) -> None:
        if not (self.p("knowledge.autosave") and self._has_bank()):
            return
        log = self.get_logger()
        if self._autosave_blocked:
            log.warning(f"{when}: {self._autosave_blocked}")
            return
        ok, message = self._save_bank()
        (log.info if ok else log.error)(f"autosave on {when}: {message}")

    # ---- services -----------------------------------------------------------------------
    def _srv_save(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        response.success, response.message = self._save_bank()
        return response

    def _srv_load(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        response.success, response.message = self._load_bank()
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        from zoa_ros.core.controls import reset_to_source

        engine = self._engine
        if engine is None:
            response.success, response.message = False, "not configured: no model loaded"
            return response
        keep = self.p("reset.keep_bank")
        try:
            with self._control():
                kept = reset_to_source(engine, keep)
        except ControlBusy as e:
            response.success, response.message = False, f"not reset: {e}; try again"
            return response
        except (ValueError, RuntimeError) as e:
            response.success, response.message = False, f"reset failed: {e}"
            return response
        response.success = True
        response.message = ("back to the source model; " + (
            f"kept {kept} bank entries" if keep else
            "in-memory bank emptied (the bank file is untouched)"))
        self.get_logger().info(f"reset: {response.message}")
        return response

    def _srv_set_adaptation(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        result = self.set_parameters([Parameter("adaptation.enabled", value=bool(request.data))])
        response.success = result[0].successful
        response.message = (f"adaptation {'on' if request.data else 'off'}"
                            + ("" if self._engine is not None else " (applies once configured)")
                            if response.success else result[0].reason)
        return response

    # ---- parameters ---------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        values = {}
        for prm in parameters:
            value = list(prm.value) if isinstance(prm.value, list | tuple) else prm.value
            reason = P.validate(prm.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            values[prm.name] = value
        if "knowledge.bank_path" in values:
            try:
                self._bank_path(values["knowledge.bank_path"])
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        engine = self._engine
        if engine is None:
            self._max_pixels = int(values.get("max_pixels", self._max_pixels))
            return SetParametersResult(successful=True)
        if "top_k" in values and values["top_k"] > len(engine.labels):
            return SetParametersResult(
                successful=False, reason=f"top_k must be <= {len(engine.labels)} (labels)")
        changes: dict[str, dict[str, Any]] = {"engine": {}, "method": {}}
        for name, value in values.items():
            if name not in TUNING:
                continue
            target, field = TUNING[name]
            if name in PRESET_ZERO and value == 0:
                if self._initial_method_cfg is None:
                    continue
                value = getattr(self._initial_method_cfg, field)
            if target == "method" and self._initial_method_cfg is None and \
                    value == P.BY_NAME[name].default:
                continue
            changes[target][field] = float(value) if isinstance(
                P.BY_NAME[name].default, float) else value
        from zoa_ros.core.controls import tune
        try:
            tune(engine, changes["engine"], changes["method"])
        except (ValueError, TypeError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        self._max_pixels = int(values.get("max_pixels", self._max_pixels))
        if "adaptation.enabled" in values:
            engine.set_adaptation(bool(values["adaptation.enabled"]))
            self.get_logger().info(
                f"adaptation {'on' if values['adaptation.enabled'] else 'off'}")
        return SetParametersResult(successful=True)

    # ---- diagnostics --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        engine = self._engine
        slots = self._slots.counters()
        with self._counts_lock:
            cameras = {c: CameraCounts(k.topic, k.received, slots[c].dropped, k.malformed,
                                       k.classified, k.last_received, k.subscribed,
                                       k.last_malformed)
                       for c, k in self._counts.items()}
        p50, p99 = self._latency.percentiles(50, 99)
        snap = Snapshot(now=time.monotonic(), state=self._state, error=self._error,
                        active_since=self._active_since, cameras=cameras,
                        latency_p50_ms=p50, latency_p99_ms=p99,
                        inference_errors=self._inference_errors,
                        adaptation_errors=self._adapter.errors,
                        autosave_blocked=self._autosave_blocked, threads=self._thread_states())
        if engine is not None:
            stats = engine.stats()
            snap.adaptation_enabled = engine.adapt_enabled
            snap.method = engine.config.method
            snap.adaptation_steps = stats.adapt_steps
            snap.adaptation_skipped = stats.adapt_skipped
            snap.adaptation_rolled_back = stats.adapt_rolled_back
            snap.last_rollback = stats.last_rollback
            snap.last_step_ms = stats.last_step_ms
            snap.adaptation_paused_s = stats.adapt_paused_s
            snap.domain_changes = stats.domain_changes
            snap.domain = stats.domain_id or 0
            snap.bank_entries = stats.bank_entries
            snap.bank_bytes = stats.bank_bytes
            snap.recall_entries, snap.recalls = stats.recall_entries, stats.recalls
            snap.resets = stats.resets
            snap.model = f"{engine.pack.spec.name} {engine.pack.quant.name}"
            snap.backend = stats.backend
            snap.stats_frames_replayed = stats.stats_frames_replayed
            snap.stats_frames_dropped = stats.stats_frames_dropped
            snap.backend_warning = engine.backend_warning or ""
            snap.shift_gate, snap.gate_openings = stats.shift_gate, stats.gate_openings
            snap.frames_gate_adapting = stats.frames_gate_adapting
        return snap

    def _thread_states(self) -> dict[str, bool]:
        """The streaming threads (while active) and whether each is alive."""
        if not self._streaming:
            return {}
        states = {t.name.removeprefix("zoa_"): t.is_alive() for t in self._threads}
        states["adaptation"] = self._adapter.running
        inputs = self._inputs
        if inputs is not None:
            states["camera_inputs"] = inputs.alive()
        return states

    def _publish_diagnostics(self) -> None:
        thresholds = Thresholds(self.p("diagnostics.stale_input_s"),
                                self.p("diagnostics.max_latency_ms"))
        stamp = self.get_clock().now().to_msg()   # before the snapshot: its values are newer
        self._diag_pub.publish(self._tracker.message(self.snapshot(), thresholds, stamp))


def _expand(text: str) -> str:
    return os.path.expandvars(os.path.expanduser(text))


def spin(executor: MultiThreadedExecutor, node: ZoaNode) -> None:
    """``executor.spin()`` until shutdown, through rclpy's race with a destroyed entity.

    rclpy's executor raises ``InvalidHandle`` when an entity is destroyed after it has gathered
    it and before it adds it to its wait set (a fresh-clone test run once lost ``zoa_node``'s
    executor thread this way while a deactivate stopped the streams, and with it every service).
    The next spin gathers the entities afresh, so the node spins on.
    """
    while node.context.ok():
        try:
            executor.spin()
            return
        except InvalidHandle as e:
            node.get_logger().warning(f"executor: {e}; spinning on")


def main(argv: list[str] | None = None, prog: str = "zoa_node") -> int:
    """Run the node until SIGINT/SIGTERM or a lifecycle shutdown; 0 on a clean exit, 1 if
    autostart could not configure/activate, 2 on bad parameters."""
    args = list(sys.argv if argv is None else ["zoa_node", *argv])
    if any(a in ("-h", "--help") for a in args[1:args.index("--ros-args")
                                                 if "--ros-args" in args else None]):
        print(P.help_text(prog))
        return 0
    P.use_default_fastdds_profile()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    heap_per_thread()   # before DDS starts its threads: none may share the main thread's heap
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = ZoaNode()
    except P.ParameterError as e:
        print(f"zoa_node: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    wakeup = _signal_wakeup()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=spin, args=(executor, node), name="zoa_executor",
                               daemon=True)
    spinner.start()
    code: list[int] = []
    supervisor = threading.Thread(target=_supervise, name="zoa_main",
                                  args=(node, executor, spinner, stop, wakeup[0], code))
    supervisor.start()
    node.run_adaptation(stop)   # on the main thread: see zoa_ros/ros/adaptation_worker.py
    supervisor.join()
    signal.set_wakeup_fd(-1)
    for end in wakeup:
        end.close()
    return code[0] if code else 0


def _supervise(node: ZoaNode, executor: MultiThreadedExecutor, spinner: threading.Thread,
               stop: threading.Event, wakeup: socket.socket, code: list[int]) -> None:
    """The process's life at normal priority, beside the main thread's adaptation: autostart,
    then wait for a signal (through ``wakeup``: the main thread, which runs Python's signal
    handlers, may wait long for a CPU at idle priority), a lifecycle shutdown or a lost
    executor; then end the adaptation and shut the node down (autosave included)."""
    if node.p("autostart") and not node.start():
        node.get_logger().error(f"autostart failed: {node._error or 'see the log above'}")
        code.append(1)
        stop.set()
    while not stop.is_set():
        if select.select([wakeup], [], [], 0.2)[0]:
            wakeup.recv(64)
            stop.set()
        elif node.state_label == "finalized" or not spinner.is_alive():
            stop.set()
    node.interrupt_adaptation()
    node.finish()
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    rclpy.try_shutdown()
    spinner.join(timeout=5)


def _signal_wakeup() -> tuple[socket.socket, socket.socket]:
    """A socket pair whose first end receives a byte the moment SIGINT or SIGTERM arrives (the C
    signal handler writes it, whichever thread the signal interrupts and whether or not the main
    thread runs)."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    return reader, writer


if __name__ == "__main__":
    sys.exit(main())
