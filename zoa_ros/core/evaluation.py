"""Continual evaluation: several methods side by side on one labelled frame stream.

Every method gets its own fresh :class:`~zoa_ros.core.engine.Engine` (same pack, same seed) and
sees the identical frames in the identical order: the stream is read once and each chunk of
``batch_size`` frames is normalized once and handed to every engine in turn. Accuracy is scored
on the predictions the engine returned for a frame, i.e. before any step that used that frame.

* ``batch`` mode: one ``run_batch`` per chunk (classify the chunk, then adapt on it). Chunks
  never straddle two segments, as in the reference protocol (each corruption ends with its own
  tail batch). Steps need ``min(16, batch_size)`` frames; smaller tail chunks are only
  classified.
* ``streaming`` mode: every frame is classified alone (``predict(observe=True)``) and
  ``maybe_adapt`` runs after each frame; the buffer carries over segment boundaries, as on a
  robot. Chunks only group frames for the accuracy curve.

Costs per method (``costs``):

* ``forward_per_frame`` - frames pushed through the network (counted at its stem, all passes of
  inference and adaptation together) per streamed frame; e.g. ``none`` 1.0, ZOA 2.0 in batch
  mode.
* ``backward_per_frame`` - backward passes x mean adaptation batch / frames.
* ``ms_per_frame`` - wall time inside the engine per frame (preprocessing and corruption
  excluded), measured on the chunks without a memory probe.
* ``peak_mb`` - peak tensor memory one chunk's engine call allocates on top of what existed
  before (activations, perturbations, temporaries; not the model, the input or the bank),
  sampled every ``memory_every`` chunks; see :mod:`zoa_ros.core.memory`.
* ``state_mb`` - the model's parameters and buffers plus the knowledge bank.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from zoa_ros.core.engine import Engine, EngineConfig, MethodFactory
from zoa_ros.core.memory import MIB, PeakTensorMemory, module_bytes
from zoa_ros.core.pack import ModelPack
from zoa_ros.core.preprocess import Preprocessor
from zoa_ros.core.stream import FrameStream, Segment

METRIC_NOTES = {
    "acc": "top-1 accuracy in percent of the predictions returned before adapting on a frame",
    "forward_per_frame": "frames through the network stem (all passes) per streamed frame",
    "backward_per_frame": "backward passes x mean adaptation batch size / streamed frames",
    "ms_per_frame": "engine wall time per frame, chunks with a memory probe excluded",
    "peak_mb": "peak tensor memory (MiB) allocated during one chunk's engine call, beyond "
               "model, input and bank; sampled; CUDA: max_memory_allocated delta, CPU: "
               "TorchDispatchMode storage tracker",
    "state_mb": "model parameters + buffers + knowledge bank (MiB)",
    "peak_rss_mb": "process-wide peak resident set size (MiB), all methods together",
}


@dataclass
class _MethodRun:
    """One method's engine and what it scored."""

    name: str
    engine: Engine
    domains: list[dict] = field(default_factory=list)
    curve_frames: list[int] = field(default_factory=list)
    curve_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    timed_frames: int = 0
    probe_seconds: float = 0.0
    probe_frames: int = 0
    peak_bytes: int = 0
    frames: int = 0

    def chunk(self, x: torch.Tensor, labels: torch.Tensor, probe: bool) -> int:
        """Run one chunk through the engine; the number of correct predictions."""
        start = time.perf_counter()
        if probe:
            with PeakTensorMemory(self.engine.device) as memory:
                predicted = self._classify(x)
            self.peak_bytes = max(self.peak_bytes, memory.peak_bytes)
            self.probe_seconds += time.perf_counter() - start
            self.probe_frames += len(x)
        else:
            predicted = self._classify(x)
            self.seconds += time.perf_counter() - start
            self.timed_frames += len(x)
        correct = int((torch.tensor(predicted) == labels).sum())
        self.frames += len(x)
        self.curve_frames.append(self.frames)
        self.curve_acc.append(100.0 * correct / len(x))
        return correct

    def _classify(self, x: torch.Tensor) -> list[int]:
        engine = self.engine
        if engine.mode == "batch":
            return [p.class_index for p in engine.run_batch(x)]
        out = []
        for i in range(len(x)):
            out.append(engine.predict(x[i:i + 1], observe=True)[0].class_index)
            engine.maybe_adapt()
        return out

    def result(self) -> dict:
        stats = self.engine.stats()
        frames = max(stats.frames, 1)
        per_step = stats.frames_adapted / stats.adapt_steps if stats.adapt_steps else 0.0
        seconds, timed = (self.seconds, self.timed_frames) if self.timed_frames else \
            (self.probe_seconds, self.probe_frames)
        accs = [d["acc"] for d in self.domains]
        rounds = sorted({d["round"] for d in self.domains})
        return {
            "mean_acc": sum(accs) / len(accs) if accs else 0.0,
            "domains": self.domains,
            "rounds": [{"round": r, "mean_acc": _mean([d["acc"] for d in self.domains
                                                       if d["round"] == r])} for r in rounds],
            "costs": {
                "forward_per_frame": stats.samples_forwarded / frames,
                "backward_per_frame": stats.backward_passes * per_step / frames,
                "ms_per_frame": 1e3 * seconds / timed if timed else 0.0,
                "peak_mb": self.peak_bytes / MIB,
                "state_mb": (module_bytes(self.engine.model) + stats.bank_bytes) / MIB,
                "forward_passes": stats.forward_passes,
                "backward_passes": stats.backward_passes,
                "adapt_steps": self.engine.method.costs.adapt_steps,
                "frames_adapted": self.engine.method.costs.frames_adapted,
                "adapt_skipped": stats.adapt_skipped,
                "timed_frames": timed,
            },
            "bank": {"entries": stats.bank_entries, "bytes": stats.bank_bytes},
            "domain_changes": stats.domain_changes,
            "curve": {"frames": self.curve_frames, "acc": self.curve_acc},
            "engine": stats.to_dict(),
        }


def evaluate(pack: ModelPack, stream: FrameStream, methods: Sequence[str], *,
             mode: str = "batch", batch_size: int = 64, seed: int = 0,
             method_configs: Mapping[str, Mapping] | None = None, device: str = "cpu",
             memory_every: int = 8, progress: bool = True,
             method_factory: MethodFactory | None = None,
             on_segment: Callable[[Segment, dict[str, float]], None] | None = None) -> dict:
    """Run ``methods`` side by side over ``stream``; see the module docstring for the numbers.

    Returns ``{"methods": {name: {...}}, "stream": [...], "run": {...}}``.
    """
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"need distinct method names, got {list(methods)}")
    if memory_every < 1:
        raise ValueError("memory_every must be >= 1")
    method_configs = method_configs or {}
    runs = []
    for name in methods:
        config = EngineConfig(method=name, method_config=dict(method_configs.get(name, {})),
                              seed=seed, mode=mode, batch_size=batch_size,
                              min_frames=min(16, batch_size), top_k=1, device=device)
        runs.append(_MethodRun(name, Engine(pack, config, method_factory=method_factory)))
    pre = Preprocessor(pack.data_config)
    num_classes = len(pack.labels)
    segments, chunk_index = [], 0
    wall = time.perf_counter()
    stream_seconds, start = 0.0, time.perf_counter()
    bar = tqdm(total=stream.total_frames, unit="frame", desc="evaluate", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for segment in stream:
            stream_seconds += time.perf_counter() - start
            _check_labels(segment, num_classes)
            correct = {r.name: 0 for r in runs}
            bar.set_postfix_str(f"r{segment.round} {segment.name}")
            for a in range(0, len(segment), batch_size):
                frames = segment.frames[a:a + batch_size]
                x = pre.normalize(frames) if segment.at_input_size else pre(frames)
                labels = torch.tensor(segment.labels[a:a + batch_size])
                probe = chunk_index % memory_every == 0
                for run in runs:
                    correct[run.name] += run.chunk(x, labels, probe)
                chunk_index += 1
                bar.update(len(frames))
            accs = {}
            for run in runs:
                acc = 100.0 * correct[run.name] / max(len(segment), 1)
                run.domains.append({"name": segment.name, "round": segment.round, "acc": acc,
                                    "frames": len(segment), "correct": correct[run.name]})
                accs[run.name] = acc
            segments.append({"name": segment.name, "round": segment.round,
                             "frames": len(segment)})
            if on_segment is not None:
                on_segment(segment, accs)
            start = time.perf_counter()
    finally:
        bar.close()
        for run in runs:
            run.engine.close()
    wall = time.perf_counter() - wall
    frames = sum(s["frames"] for s in segments)
    return {
        "methods": {run.name: run.result() for run in runs},
        "stream": segments,
        "run": {"wall_s": wall, "stream_s": stream_seconds, "frames": frames,
                "frames_per_s": frames / wall if wall > 0 else 0.0,
                "peak_rss_mb": _peak_rss_mb(), "torch_threads": torch.get_num_threads(),
                "device": device, "notes": METRIC_NOTES},
    }


def _check_labels(segment: Segment, num_classes: int) -> None:
    bad = [c for c in segment.labels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"segment {segment.name!r}: class index {bad[0]} is outside the "
                         f"model's {num_classes} classes")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (MIB if sys.platform == "darwin" else 1024.0)
