"""The model beside the node: its latency on the bench's frames, the runs alongside the
stream after the node's answers and their pairing with those answers, and the engine the node
builds from its parameters."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zoa_ros.tools.bench_node.stats import summary


class Answer(NamedTuple):
    """The node's answer to one frame, as this process received it."""

    e2e_ms: float           # header stamp -> the result's DDS reception here
    inference_ms: float     # the node's Engine.predict on the frame
    cpu_ms: float           # its CPU time on the classifying thread
    stamp: int              # the frame's header stamp, ns
    queued_ms: float = 0.0  # in the node: camera callback -> start of the classification
    wake_ms: float = 0.0    # here: the result's DDS reception -> this process's callback

    @property
    def at_callback_ms(self) -> float:
        """Header stamp -> this process's callback: e2e as reports before the DDS reception
        time had it."""
        return self.e2e_ms + self.wake_ms


@dataclass
class Alongside:
    """The model run after the node's answers (where it has room) on one condition's stream."""

    key: str
    frames: list[np.ndarray]
    predict: Callable[[np.ndarray], object]
    expected_ms: float    # how long a run takes: the first share's p50, then the last run's
    idle: threading.Event = field(default_factory=threading.Event)
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)   # the frame each run was on
    busy: int = 0         # answers that came while the model still ran: no run for them
    no_room: int = 0      # answers too close to the camera's next frame: no run either
    overlapped: int = 0   # runs during which the camera sent its next frame all the same

    def __post_init__(self) -> None:
        self.idle.set()


def alongside_fields(along: Alongside | str, answers: Sequence[Answer],
                      period_s: float) -> dict[str, Any]:
    """A condition's ``model_alongside*`` fields, the node's answers paired with its runs
    (``*_paired_ms``; ``latency_paired_samples_ms`` and ``model_alongside_samples_ms`` hold
    the pairs, in order) and ``model_reference``: "alongside" when the model ran after at least a
    quarter of the answers (too few runs, on a machine too slow for the rate, say little),
    else "between slices", with the reason in ``not_run_because``.

    Each run is paired with the node's answer to the camera's *next* frame: whether the model
    runs depends on how soon the node answered the frame before it, so pairing it with that
    answer would pick the node's own lucky frames."""
    if isinstance(along, str):
        along, why = Alongside("", [], lambda frame: None, 0.0), along
    else:
        why = None if 4 * len(along.wall_ms) >= len(answers) > 0 else (
            f"it ran after only {len(along.wall_ms)} of {len(answers)} answers (the node was "
            f"rarely idle long enough between frames: too little CPU for this rate)")
    stamps = sorted(a.stamp for a in answers)
    by_stamp = {a.stamp: a for a in answers}
    runs, node = [], []
    for run, stamp in enumerate(along.stamps):
        i = bisect.bisect_right(stamps, stamp)
        if i < len(stamps) and stamps[i] - stamp <= 1.5e9 * period_s:   # not after a share
            runs.append(run)
            node.append(by_stamp[stamps[i]])
    counts = {"runs": len(along.wall_ms), "paired": len(runs), "skipped_busy": along.busy,
              "skipped_no_room": along.no_room, "overlapped_next_frame": along.overlapped,
              "not_run_because": why}
    return {"model_alongside_ms": summary([along.wall_ms[i] for i in runs]),
            "model_alongside_cpu_ms": summary([along.cpu_ms[i] for i in runs]),
            "model_alongside": counts,
            "latency_paired_ms": summary([a.e2e_ms for a in node]),
            "latency_paired_at_callback_ms": summary([a.at_callback_ms for a in node]),
            "latency_paired_samples_ms": [round(a.e2e_ms, 3) for a in node],
            "model_alongside_samples_ms": [round(along.wall_ms[i], 3) for i in runs],
            "node_inference_paired_ms": summary([a.inference_ms for a in node]),
            "node_inference_cpu_paired_ms": summary([a.cpu_ms for a in node]),
            "model_reference": "between slices" if why else "alongside"}


def model_latency(predict: Callable[[np.ndarray], object], frames: Sequence[np.ndarray],
                  runs: int, warmup: int = 3, period: float = 0.0,
                  cpu_ms: list[float] | None = None) -> list[float]:
    """Wall time (ms) of ``predict(frame)`` over ``runs`` calls, cycling through ``frames``:
    back to back, or with ``period`` > 0 each call starting ``period`` seconds after the one
    before (at once when that one took longer), as a camera at ``1 / period`` Hz feeds the node.
    ``cpu_ms`` receives each call's CPU time on the calling thread."""
    if runs < 1:
        return []
    for i in range(warmup):
        predict(frames[i % len(frames)])
    times: list[float] = []
    start = time.perf_counter()
    for i in range(runs):
        if period > 0 and times:
            time.sleep(max(0.0, start + period - time.perf_counter()))
        frame = frames[i % len(frames)]
        start, cpu_start = time.perf_counter(), time.thread_time()
        predict(frame)
        times.append((time.perf_counter() - start) * 1e3)
        if cpu_ms is not None:
            cpu_ms.append((time.thread_time() - cpu_start) * 1e3)
    return times


def frames_at(source: str, size: tuple[int, int], domain: str = "clean"
              ) -> list[np.ndarray]:
    """uint8 HxWx3 RGB frames of ``size`` (w, h) from the sample photos or an image folder,
    under ``domain`` (``clean`` or ``CORRUPTION@SEVERITY``, e.g. ``contrast@5``)."""
    from zoa_ros.core.data.domain_schedule import parse_schedule
    from zoa_ros.ros.virtual_camera import render_frames

    try:
        visit = parse_schedule(f"{domain}:1")[0]
    except ValueError as e:
        raise ValueError(f"--domain {domain!r}: {e}") from None
    if visit.domain != "clean" and visit.severity is None:
        raise ValueError(f"--domain {domain!r}: give the severity, e.g. {domain}@5")

    if source == "photos":
        from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
        images = [load_photo(n) for n in PHOTOS]
    else:
        from zoa_ros.core.files.images import find_images, read_rgb
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"--frames-source: no such folder {source}")
        images = [read_rgb(p) for p in find_images(folder)[:32]]
        if not images:
            raise ValueError(f"--frames-source: no images in {source}")
    rendered = render_frames(images, {visit.domain}, size, severity=visit.severity or 1)
    return [rendered[(visit.domain, i)] for i in range(len(images))]


def node_params(extra: dict[str, Any]) -> dict[str, Any]:
    """The node's parameters: the shipped config (flattened) with ``extra`` on top."""
    import yaml

    from zoa_ros.ros.params import SPECS, config_path

    values = {s.name: s.default for s in SPECS}
    path = config_path("zoa.yaml")
    if path is not None:
        doc = yaml.safe_load(path.read_text()) or {}
        values.update(_flatten(doc.get("zoa_node", {}).get("ros__parameters", {})))
    values.update(extra)
    return values


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_engine(pack_path: Path, values: dict[str, Any]) -> Any:
    """The engine the node builds from ``values`` (same pack, method, preset, BN statistics),
    with adaptation off: its ``predict`` is the model's per-frame cost."""
    from dataclasses import replace

    from zoa_ros.core.engine import Engine
    from zoa_ros.core.model.pack import ModelPack
    from zoa_ros.ros.node import ZoaNode

    pack = ModelPack.load(pack_path)
    config = ZoaNode.engine_config(values.__getitem__, len(pack.labels))
    return Engine(pack, replace(config, adapt_enabled=False))
