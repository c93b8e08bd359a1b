"""The node's parameters: one table (name, default, description, range/choices, read-only),
declaration with descriptors, validation with reasons, and where config files live.

Read-only parameters need a restart (they shape the model, the inputs or the threads); the
others are validated in the node's set-parameters callback and applied while it runs.
``config/zoa.yaml`` documents every entry of :data:`SPECS` (a test keeps the two in sync).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from zoa_ros.core.files.config_files import config_path
from zoa_ros.core.files.images import DEFAULT_MAX_PIXELS
from zoa_ros.core.runtime.cpus import parse_cpus


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None            # numeric range (inclusive), enforced by ROS too
    high: float | None = None
    choices: tuple[str, ...] = ()
    constraints: str = ""               # extra human-readable constraint text
    check: Callable[[Any], str | None] | None = None   # validates instead of the kind's rules
    dynamic_typing: bool = False        # several ROS types accepted (``check`` says which)

    @property
    def kind(self) -> type:
        return list if isinstance(self.default, list) else type(self.default)


INT_MAX = 2**31 - 1


def _cpu_list_error(value: Any) -> str | None:
    try:
        parse_cpus(value)
    except ValueError as e:
        return f"inference.cpus: {e}"
    return None


SPECS: tuple[Spec, ...] = (
    # ---- start-up -------------------------------------------------------------------------
    Spec("autostart", True, "configure and activate on start (false: wait for a lifecycle "
         "manager)", read_only=True),
    Spec("pack", "", "model pack (.zoapack from 'zoa-ros calibrate'); empty: build one from "
         "pack_build.* if pack_build.model is set, else the default pack (W8A8 "
         "EfficientNet-Lite0 calibrated on the photos bundled with scikit-image, built once "
         "into $ZOA_ROS_CACHE or ~/.ros/zoa_ros)", read_only=True),
    Spec("pack_build.model", "", "timm model to calibrate into a pack when 'pack' is empty "
         "(empty too: the default pack)", read_only=True),
    Spec("pack_build.weights", "random", "weights for pack_build.model: a local checkpoint, "
         "'efficientnet-lite0' or 'random'", read_only=True),
    Spec("pack_build.quant", "w8a8", "quantization of the built pack (bits)", read_only=True,
         choices=("none", "w8a8", "w6a6", "w4a4")),
    Spec("pack_build.images", "", "folder of clean calibration images for pack_build",
         read_only=True),
    Spec("pack_build.num_images", 32, "calibration images used by pack_build",
         read_only=True, low=1, high=100000),
    Spec("pack_build.out", "", "where to save (and next time reuse) the built pack; empty: "
         "not saved", read_only=True),
    Spec("device", "cpu", "torch device (cpu, cuda, cuda:0, ...)", read_only=True),
    Spec("seed", 0, "seed of the engine's random generator", read_only=True, low=0,
         high=INT_MAX),
    Spec("inference.threads", 1, "CPU compute threads of classification (0: all CPUs this "
         "process may use; more than 1 is faster only while no other process wants those CPUs: "
         "docs/lab/node-latency.md §4.2)", read_only=True, low=0, high=256),
    Spec("inference.cpus", "", "CPUs that only classification runs on, the node's other threads "
         "on the rest of the process's CPUs: a Linux CPU list ('3', '2-3,6') or a list of CPU "
         "numbers; empty: wherever the scheduler puts it (docs/lab/node-latency.md §4.8)",
         read_only=True, check=_cpu_list_error, dynamic_typing=True,
         constraints="CPU list, a CPU number or a list of them"),
    Spec("inference.backend", "auto", "what classifies: onnxruntime (the pack's int8 export "
         "on ONNX Runtime, adaptation folded in after every step), torch (the fake-quantized "
         "simulation) or auto (onnxruntime where it works, else torch with a WARN in "
         "/diagnostics saying why)", read_only=True, choices=("auto", "torch", "onnxruntime")),
    Spec("inference.int8_model", "", "the pack's int8 export (.onnx from 'zoa-ros export'), "
         "refused unless made from this pack; empty: export it at configure (a few seconds)",
         read_only=True),
    Spec("inference.keep_freed_memory", True, "keep freed memory in the process (glibc malloc "
         "settings; resident memory stays at its peak) instead of page-faulting activations in "
         "again on every forward pass; process-wide, set once", read_only=True),
    # ---- inputs ---------------------------------------------------------------------------
    Spec("image_topics", ["image"], "camera topics (relative names are namespaced and "
         "remappable); each is one camera", read_only=True),
    Spec("transport", "raw", "raw: sensor_msgs/Image on each topic; compressed: "
         "sensor_msgs/CompressedImage on <topic>/compressed", read_only=True,
         choices=("raw", "compressed")),
    Spec("max_pixels", DEFAULT_MAX_PIXELS, "refuse (count as malformed) frames with more "
         "pixels, read from the message's width x height or the JPEG/PNG header before "
         "anything is decoded or allocated; default 8192 x 8192 = 67 Mpx, twice 8K UHD",
         low=1, high=2**30, constraints="compressed frames above PIL's own limit (179 Mpx) "
         "are refused whatever this says"),
    Spec("qos.reliability", "best_effort", "input QoS reliability (sensor data: best_effort)",
         read_only=True, choices=("best_effort", "reliable")),
    Spec("qos.depth", 5, "input QoS history depth (the node keeps only the newest frame per "
         "camera anyway)", read_only=True, low=1, high=1000),
    # ---- outputs --------------------------------------------------------------------------
    Spec("top_k", 5, "classes per result", low=1, high=100000,
         constraints="at most the number of labels"),
    # ---- adaptation -----------------------------------------------------------------------
    Spec("adaptation.enabled", True, "adapt at test time (also ~/set_adaptation)"),
    Spec("adaptation.method", "zoa", "adaptation method", read_only=True,
         choices=("zoa", "none")),
    Spec("adaptation.preset", True, "start from the model family x quantization preset in "
         "config/zoa_presets.yaml", read_only=True),
    Spec("adaptation.batch_size", 32, "frames per adaptation step", read_only=True, low=2,
         high=4096),
    Spec("adaptation.buffer_size", 0, "frames kept for adaptation (0: batch_size)",
         read_only=True, low=0, high=65536, constraints="0 or >= batch_size"),
    Spec("adaptation.min_batch", 0, "fewest frames a step runs on (0: batch_size)",
         read_only=True, low=0, high=4096, constraints="2..batch_size when set"),
    Spec("adaptation.detect_min_batch", 0, "fewest frames the domain detector tests "
         "(0: batch_size; the reference uses 64)", read_only=True, low=0, high=4096),
    Spec("adaptation.bn_stats", "running", "BatchNorm statistics for prediction: running "
         "(single frames) or batch", read_only=True, choices=("running", "batch")),
    Spec("adaptation.frame_momentum", 0.01, "share of each classified frame in the running "
         "BatchNorm statistics (0: only adaptation batches update them)", read_only=True,
         low=0.0, high=1.0),
    Spec("adaptation.stats_prior", 0.75, "share of the source statistics blended into the "
         "running BatchNorm statistics single frames are classified with (0: test only)",
         read_only=True, low=0.0, high=1.0),
    Spec("adaptation.stats_reset_on_change", False, "at a detected domain change, replace the "
         "running BatchNorm statistics by the adaptation batch's (helps when domains last under "
         "~100 frames; costs accuracy on longer ones)", read_only=True),
    Spec("adaptation.stats_recall", True, "remember each domain's running BatchNorm statistics "
         "and normalise with them again when the stream returns to that domain (tested on the "
         "stem statistics of the classified frames)", read_only=True),
    Spec("adaptation.recall_window", 32, "classified frames per test of that memory",
         read_only=True, low=2, high=4096),
    Spec("adaptation.no_harm", True, "no-harm adaptation: the source model while the input "
         "looks like the clean calibration images (shift gate), statistics restarted from the "
         "source ones in a new domain, each BatchNorm trusting its test statistics as far as "
         "the measured shift exceeds what clean content explains (false: the fixed "
         "stats_prior, always adapting)", read_only=True),
    Spec("adaptation.gate_false_alarm", 0.01, "share of the shift gate's tests that open it "
         "on clean input as correlated as class-ordered images", read_only=True, low=1e-4,
         high=0.5),
    Spec("adaptation.gate_dwell", 4, "frames per distinct view the shift gate's thresholds "
         "assume (a camera that holds a view longer: raise it)", read_only=True, low=1,
         high=1000),
    Spec("adaptation.interval_frames", 32, "adapt after this many new frames", low=1,
         high=1000000),
    Spec("adaptation.min_period_s", 0.0, "at least this long between steps, in node time "
         "(use_sim_time aware)", low=0.0, high=86400.0),
    Spec("adaptation.stride", 1, "buffer every n-th classified frame", low=1, high=10000),
    Spec("adaptation.threads", 1, "CPU compute threads of an adaptation step (0: all CPUs; "
         "more than 1 slows classification: see zoa_ros.core.runtime.threads)", read_only=True,
         low=0, high=256),
    Spec("adaptation.idle_priority", True, "run adaptation (the node's main thread) under Linux's "
         "SCHED_IDLE policy: it gets a CPU only when classification leaves one idle (false: "
         "adaptation.thread_nice)", read_only=True),
    Spec("adaptation.max_pause_ms", 100.0, "longest an adaptation step waits, before each "
         "normalisation layer, for a frame being classified (classification first: a step "
         "running beside a prediction slows it down; 0: never waits)",
         read_only=True, low=0.0, high=10000.0),
    Spec("adaptation.control_wait_s", 5.0, "longest ~/reset, ~/load_knowledge and "
         "~/save_knowledge (and autosave) wait for a running adaptation step to let go of the "
         "model once asked to stop at its next layer; then they fail, saying so (at idle "
         "priority, on CPUs saturated by other work, a step may get no CPU for minutes)",
         low=0.1, high=3600.0),
    Spec("adaptation.thread_nice", 10, "with idle_priority false: nice increment of the "
         "adapting thread and the compute threads it starts (0: same priority as "
         "classification)", read_only=True,
         low=0, high=19),
    Spec("adaptation.lr", 0.0, "learning rate of eps (0: preset)", low=0.0, high=1.0),
    Spec("adaptation.alpha_lr", 0.0, "learning rate of the bank weights alpha (0: preset)",
         low=0.0, high=1.0),
    Spec("adaptation.domain_threshold", 0.0, "domain-change detector threshold on the "
         "divergence (0: preset)", low=0.0, high=1e6),
    Spec("adaptation.detect_domains", True, "run the domain-change detector"),
    # ---- knowledge bank -------------------------------------------------------------------
    Spec("knowledge.bank_path", "~/.ros/zoa_ros/knowledge.zoabank", "bank file for autoload, "
         "autosave and the save/load services (~ and $VARS expanded)"),
    Spec("knowledge.bank_dir", "", "confine bank files to this folder: knowledge.bank_path "
         "(relative: to this folder) must lie inside it, symlinks followed, or it is refused "
         "(~ and $VARS expanded); empty: anywhere the node's user may write", read_only=True),
    Spec("knowledge.autoload", True, "load the bank at configure if the file exists"),
    Spec("knowledge.autosave", True, "save the bank on deactivate and shutdown"),
    Spec("reset.keep_bank", True, "~/reset keeps the bank entries (false: empties the "
         "in-memory bank; the file is untouched)"),
    # ---- diagnostics ----------------------------------------------------------------------
    Spec("diagnostics.period_s", 1.0, "/diagnostics period (steady clock)", read_only=True,
         low=0.1, high=60.0),
    Spec("diagnostics.stale_input_s", 2.0, "WARN when an active camera sends nothing for this "
         "long", low=0.1, high=3600.0),
    Spec("diagnostics.max_latency_ms", 0.0, "WARN when p99 inference latency exceeds this "
         "(0: off)", low=0.0, high=1e6),
    Spec("diagnostics.latency_window", 200, "frames in the latency percentiles",
         read_only=True, low=1, high=100000),
)

BY_NAME = {s.name: s for s in SPECS}


def validate(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name``, or None (ranges are enforced by
    ROS from the descriptors as well; this also covers choices and types)."""
    spec = BY_NAME.get(name)
    if spec is None:
        return None
    if spec.check is not None:
        return spec.check(value)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.kind is list:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return f"{name} must be a list of strings"
        if not value or not all(v.strip() for v in value):
            return f"{name} must name at least one topic and no empty ones"
        if len(set(value)) != len(value):
            return f"{name} lists a topic twice"
        return None
    if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
        return f"{name} must be a {spec.kind.__name__}, got {type(value).__name__}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.low is not None and value < spec.low:
        return f"{name} must be >= {spec.low}, got {value}"
    if spec.high is not None and value > spec.high:
        return f"{name} must be <= {spec.high}, got {value}"
    return None


def descriptor(spec: Spec) -> Any:
    """The rcl_interfaces ParameterDescriptor of ``spec``."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
             list: ParameterType.PARAMETER_STRING_ARRAY}
    text = spec.constraints
    if spec.choices:
        text = "; ".join(filter(None, [f"one of {', '.join(spec.choices)}", text]))
    if spec.read_only:
        text = "; ".join(filter(None, [text, "read-only: restart to change"]))
    d = ParameterDescriptor(name=spec.name, description=spec.description,
                            additional_constraints=text, read_only=spec.read_only,
                            dynamic_typing=spec.dynamic_typing)
    if not spec.dynamic_typing:
        d.type = types[spec.kind]
    if spec.kind is int and spec.low is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                        step=0)]
    elif spec.kind is float and spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                     to_value=float(spec.high), step=0.0)]
    return d


class ParameterError(ValueError):
    """A parameter given at start-up that the node cannot accept."""


def declare_all(node: Any, specs: Iterable[Spec] = SPECS) -> None:
    """Declare every parameter on ``node``; :class:`ParameterError` listing every bad
    start-up value (wrong type, out of range, not a choice) at once."""
    from rclpy.exceptions import ParameterException

    errors = []
    for spec in specs:
        try:
            value = node.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        except (ParameterException, TypeError, ValueError) as e:
            errors.append(f"{spec.name}: {e}")
            continue
        reason = validate(spec.name, list(value) if spec.kind is list else value)
        if reason:
            errors.append(reason)
    if errors:
        raise ParameterError("bad parameters: " + "; ".join(errors))




FASTDDS_PROFILE = "fastdds_large_images.xml"


def use_default_fastdds_profile(environ: dict | None = None) -> str | None:
    """Point ``FASTDDS_DEFAULT_PROFILES_FILE`` at the shipped large-image profile unless it is
    already set. Fast DDS reads it when a process creates its first participant (measured:
    setting it after ``import rclpy`` and even after ``rclpy.init()`` still works, once the
    first node exists it is too late). Returns the value in effect."""
    env = os.environ if environ is None else environ
    if not env.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        path = config_path(FASTDDS_PROFILE)
        if path is not None:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return env.get("FASTDDS_DEFAULT_PROFILES_FILE")


def help_text(prog: str = "zoa_node") -> str:
    """Every parameter with its default and description (``zoa_node --help``)."""
    lines = [f"usage: {prog} [--ros-args --params-file config/zoa.yaml -p NAME:=VALUE ...]",
             "",
             "ROS 2 lifecycle node zoa_node: classify camera frames with a quantized model "
             "adapted at test time.",
             "", "parameters (* = read-only, needs a restart):"]
    for s in SPECS:
        extra = f" [{', '.join(s.choices)}]" if s.choices else (
            f" [{s.low:g}..{s.high:g}]" if s.low is not None else "")
        lines.append(f"  {s.name}{'*' if s.read_only else ''} = {s.default!r}{extra}")
        lines.append(f"      {s.description}")
    return "\n".join(lines)
