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

Per domain (segment) and method, besides ``acc``: ``entropy`` (mean prediction entropy),
``agreement`` (percent of frames where the method predicts the class the unadapted model
``none`` predicts, when ``none`` runs) and ``recovery_frames`` (:func:`recovery_frames`, after
every change of domain, labelled streams only), ``acc_head`` (the first frames of the domain).
An unlabelled stream (``Segment.labels is None``, e.g. a bag without labels) has no ``acc``:
the unsupervised numbers are all there is. With ``none`` on a labelled stream,
``result["harm"]`` is the harm table (:mod:`.harm`): each method's accuracy minus ``none``'s
per domain, the worst domain and the clean segments.

Costs per method (``costs``):

* ``forward_per_frame`` - frames pushed through the network (counted at its stem, all passes of
  inference and adaptation together) per streamed frame; e.g. ``none`` 1.0, ZOA 2.0 in batch
  mode.
* ``backward_per_frame`` - backward passes x mean adaptation batch / frames.
* ``ms_per_frame`` - wall time inside the engine per frame (preprocessing and corruption
  excluded), measured on the chunks without a memory probe.
* ``peak_mb`` - peak tensor memory one chunk's engine call allocates on top of what existed
  before (activations, perturbations, temporaries; not the model, the input or the bank),
  sampled every ``memory_every`` chunks; see :mod:`zoa_ros.core.runtime.memory`.
* ``state_mb`` - the model's parameters and buffers plus the knowledge bank.

Knowledge banks (methods with one, i.e. ``export_bank``/``import_bank``, such as ZOA):
``load_bank`` loads one bank file into every such method before the first frame (methods without
a bank ignore it; a refused file raises :class:`~zoa_ros.core.bank.file.BankError` before the
stream starts); ``save_bank`` writes their banks after the last frame, to the paths
:func:`bank_save_paths` gives. ``result["bank_files"]`` records both. Each domain row of such a
method holds ``bank_weights``: the mixing weights ``softmax(S·α)`` at the end of the segment,
the source entry first, then the stored entries in bank order (loaded ones first).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoa_ros.core.data.stream import FrameStream, Segment
from zoa_ros.core.engine import Engine, EngineConfig, MethodFactory, Prediction
from zoa_ros.core.eval.harm import HEAD_FRAMES, harm_table
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.runtime.memory import MIB, PeakTensorMemory, module_bytes

RECOVERY_WINDOW = 32     # frames
RECOVERY_MARGIN = 5.0    # accuracy points

METRIC_NOTES = {
    "acc": "top-1 accuracy in percent of the predictions returned before adapting on a frame",
    "acc_head": f"acc over the first {HEAD_FRAMES} frames of the domain (right after a change)",
    "harm": "per method and domain, its accuracy minus that of the unadapted model none on the "
            "same frames (diff; diff_head over the first frames); worst domain, clean "
            "segments and shifted domains summarised",
    "forward_per_frame": "frames through the network stem (all passes) per streamed frame",
    "backward_per_frame": "backward passes x mean adaptation batch size / streamed frames",
    "ms_per_frame": "engine wall time per frame, chunks with a memory probe excluded",
    "peak_mb": "peak tensor memory (MiB) allocated during one chunk's engine call, beyond "
               "model, input and bank; sampled; CUDA: max_memory_allocated delta, CPU: "
               "TorchDispatchMode storage tracker",
    "state_mb": "model parameters + buffers + knowledge bank (MiB)",
    "graph_mb": "largest autograd graph of one adaptation step (MiB; back-propagating methods)",
    "peak_rss_mb": "process-wide peak resident set size (MiB), all methods together",
    "entropy": "mean Shannon entropy (nats) of the softmax over all classes of the predictions "
               "returned before adapting on a frame",
    "agreement": "percent of frames on which the method predicts the same class as the "
                 "unadapted model (method none) on the same frame",
    "adapting": "methods with a shift gate: percent of the domain's frames classified with the "
                "adapted model (the rest with the source model: the input looked clean)",
    "bank_weights": "methods with a knowledge bank: mixing weights softmax(alpha_scale * alpha) "
                    "at the end of the domain, the source entry first, then the stored entries "
                    "in bank order",
    "recovery_frames": f"after each change of domain: the number of frames from the boundary "
                       f"to the start of the first window of {RECOVERY_WINDOW} consecutive "
                       f"frames (the whole segment if shorter) whose top-1 accuracy is at least "
                       f"the method's accuracy on that segment minus {RECOVERY_MARGIN:g} "
                       f"points; 0 = no dip after the change; null (shown as —) if no window "
                       f"qualifies",
}


@dataclass
class _MethodRun:
    """One method's engine and what it scored."""

    name: str
    engine: Engine
    domains: list[dict] = field(default_factory=list)
    curve_frames: list[int] = field(default_factory=list)
    curve_acc: list[float] = field(default_factory=list)
    curve_entropy: list[float] = field(default_factory=list)
    curve_agreement: list[float] = field(default_factory=list)
    seconds: float = 0.0
    timed_frames: int = 0
    probe_seconds: float = 0.0
    probe_frames: int = 0
    peak_bytes: int = 0
    frames: int = 0
    # the current segment, frame by frame
    hits: list[bool] = field(default_factory=list)
    agrees: int = 0
    entropy_sum: float = 0.0
    gate_frames: int = 0      # frames the shift gate let adaptation classify, so far

    def chunk(self, x: torch.Tensor, probe: bool) -> list[Prediction]:
        """Run one chunk through the engine; its predictions."""
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
        return predicted

    def score(self, predicted: list[Prediction], labels: list[int] | None,
              reference: list[int] | None) -> None:
        """Book one chunk's predictions against the labels and the reference predictions."""
        classes = [p.class_index for p in predicted]
        entropies = [p.entropy for p in predicted]
        self.frames += len(classes)
        self.curve_frames.append(self.frames)
        self.entropy_sum += sum(entropies)
        self.curve_entropy.append(_mean(entropies))
        if labels is not None:
            hits = [c == y for c, y in zip(classes, labels)]
            self.hits += hits
            self.curve_acc.append(100.0 * sum(hits) / len(hits))
        if reference is not None:
            agree = sum(c == r for c, r in zip(classes, reference))
            self.agrees += agree
            self.curve_agreement.append(100.0 * agree / len(classes))

    def end_segment(self, segment: Segment, boundary: bool, reference: bool) -> dict:
        """Close the current segment: its row of the per-domain table."""
        n = max(len(segment), 1)
        labelled = segment.labels is not None
        correct = sum(self.hits) if labelled else None
        head = self.hits[:HEAD_FRAMES]
        row = {"name": segment.name, "round": segment.round,
               "acc": 100.0 * correct / n if labelled else None,
               "acc_head": 100.0 * sum(head) / len(head) if labelled and head else None,
               "frames": len(segment), "correct": correct,
               "entropy": self.entropy_sum / n,
               "agreement": 100.0 * self.agrees / n if reference else None,
               "recovery_frames": recovery_frames(self.hits) if labelled and boundary else None}
        if has_bank(self.engine):
            row["bank_weights"] = bank_weights(self.engine)
        summary = self.engine.method.bank_summary()
        gate = summary.get("gate")
        if gate is not None:
            adapting = gate["frames_adapting"] - self.gate_frames
            self.gate_frames = gate["frames_adapting"]
            row["adapting"] = 100.0 * adapting / n
        if "deep_trust" in summary:     # ZOA's deep-layer trust at the segment's end
            row["deep_trust"] = summary["deep_trust"]
        if "source_share" in summary:   # ... and the shallow layers' source share
            row["source_share"] = summary["source_share"]
        self.domains.append(row)
        self.hits, self.agrees, self.entropy_sum = [], 0, 0.0
        return row

    def _classify(self, x: torch.Tensor) -> list[Prediction]:
        engine = self.engine
        if engine.mode == "batch":
            return engine.run_batch(x)
        out = []
        for i in range(len(x)):
            out.append(engine.predict(x[i:i + 1], observe=True)[0])
            engine.maybe_adapt()
        return out

    def result(self) -> dict:
        stats = self.engine.stats()
        method = self.engine.method
        frames = max(stats.frames, 1)
        per_step = stats.frames_adapted / stats.adapt_steps if stats.adapt_steps else 0.0
        seconds, timed = (self.seconds, self.timed_frames) if self.timed_frames else \
            (self.probe_seconds, self.probe_frames)
        rounds = sorted({d["round"] for d in self.domains})
        labelled = [d for d in self.domains if d["acc"] is not None]
        return {
            "mean_acc": _mean([d["acc"] for d in labelled]) if labelled else None,
            "mean_entropy": _mean([d["entropy"] for d in self.domains]),
            "mean_agreement": _mean_of(self.domains, "agreement"),
            "mean_recovery_frames": _mean_of(self.domains, "recovery_frames"),
            "domains": self.domains,
            "rounds": [{"round": r, "mean_acc": _mean([d["acc"] for d in labelled
                                                       if d["round"] == r])
                        if labelled else None} for r in rounds],
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
                "graph_mb": getattr(method, "peak_graph_bytes", method.graph_bytes) / MIB,
            },
            "note": method.note,
            "backend": stats.backend,
            "backend_warning": self.engine.backend_warning,
            "streaming": {"supported": method.supports_streaming,
                          "reason": method.streaming_reason},
            "bank": {"entries": stats.bank_entries, "bytes": stats.bank_bytes,
                     **{k: v for k, v in method.bank_summary().items() if k.startswith("recall")}},
            "gate": method.bank_summary().get("gate"),
            "domain_changes": stats.domain_changes,
            "curve": {"frames": self.curve_frames, "acc": self.curve_acc or None,
                      "entropy": self.curve_entropy,
                      "agreement": self.curve_agreement or None},
            "engine": stats.to_dict(),
        }


def evaluate(pack: ModelPack, stream: FrameStream, methods: Sequence[str], *,
             mode: str = "batch", batch_size: int = 64, seed: int = 0,
             method_configs: Mapping[str, Mapping] | None = None, device: str = "cpu",
             memory_every: int = 8, progress: bool = True,
             method_factory: MethodFactory | None = None,
             on_segment: Callable[[Segment, dict[str, float | None]], None] | None = None,
             load_bank: str | Path | None = None, save_bank: str | Path | None = None,
             save_bank_method: str | None = None,
             bank_provenance: Mapping[str, str] | None = None,
             backend: str = "torch", int8_model: str | None = None,
             stats_every: int | None = None) -> dict:
    """Run ``methods`` side by side over ``stream``; see the module docstring for the numbers.

    ``load_bank``: a knowledge bank file loaded into every method that has a bank before the
    first frame. ``save_bank``/``save_bank_method``: where the banks go after the last frame
    (:func:`bank_save_paths`; ``bank_provenance`` labels the entries stored during the run).
    Both are checked before the first frame (``ValueError``, ``BankError``). ``backend``,
    ``int8_model``, ``stats_every``: what classifies and when statistics that follow the frames
    take them in (``EngineConfig``); each method's result names the backend it got.

    Returns ``{"methods": {name: {...}}, "stream": [...], "run": {...}, "bank_files": {...}}``.
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
                              min_frames=min(16, batch_size), top_k=1, device=device,
                              backend=backend, int8_model=int8_model,
                              stats_every=stats_every)
        runs.append(_MethodRun(name, Engine(pack, config, method_factory=method_factory)))
    try:
        bank_files = _prepare_banks(runs, load_bank, save_bank, save_bank_method)
    except BaseException:
        for run in runs:
            run.engine.close()
        raise
    pre = Preprocessor(pack.data_config)
    num_classes = len(pack.labels)
    reference = next((r for r in runs if r.name == "none"), None)
    segments, chunk_index, previous, labelled = [], 0, None, True
    wall = time.perf_counter()
    stream_seconds, start = 0.0, time.perf_counter()
    bar = tqdm(total=stream.total_frames, unit="frame", desc="evaluate", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for segment in stream:
            stream_seconds += time.perf_counter() - start
            _check_labels(segment, num_classes)
            bar.set_postfix_str(f"r{segment.round} {segment.name}")
            for a in range(0, len(segment), batch_size):
                frames = segment.frames[a:a + batch_size]
                x = pre.normalize(frames) if segment.at_input_size else pre(frames)
                labels = None if segment.labels is None else segment.labels[a:a + batch_size]
                probe = chunk_index % memory_every == 0
                predicted = [run.chunk(x, probe) for run in runs]
                ref = None if reference is None else \
                    [p.class_index for p in predicted[runs.index(reference)]]
                for run, preds in zip(runs, predicted):
                    run.score(preds, labels, ref)
                chunk_index += 1
                bar.update(len(frames))
            boundary = previous is not None and previous != segment.name
            accs = {run.name: run.end_segment(segment, boundary, reference is not None)["acc"]
                    for run in runs}
            previous = segment.name
            labelled = labelled and segment.labels is not None
            segments.append({"name": segment.name, "round": segment.round,
                             "frames": len(segment)})
            if on_segment is not None:
                on_segment(segment, accs)
            start = time.perf_counter()
        for run in runs:
            path = bank_files["saved"].get(run.name)
            if path is not None:
                _save(run.engine, path, bank_provenance)
    finally:
        bar.close()
        for run in runs:
            run.engine.close()
    wall = time.perf_counter() - wall
    frames = sum(s["frames"] for s in segments)
    result = {
        "methods": {run.name: run.result() for run in runs},
        "stream": segments,
        "labelled": labelled,
        "run": {"wall_s": wall, "stream_s": stream_seconds, "frames": frames,
                "frames_per_s": frames / wall if wall > 0 else 0.0,
                "peak_rss_mb": _peak_rss_mb(), "torch_threads": torch.get_num_threads(),
                "device": device, "notes": METRIC_NOTES},
        "bank_files": bank_files,
    }
    result["harm"] = harm_table(result)
    return result


def has_bank(engine: Engine) -> bool:
    """Whether the engine's method keeps a knowledge bank that can be saved and loaded."""
    method = engine.method
    return hasattr(method, "export_bank") and hasattr(method, "import_bank")


def bank_weights(engine: Engine) -> list[float]:
    """The method's current mixing weights ``softmax(alpha_scale * alpha)``: the source entry
    first, then the stored entries in bank order."""
    state = engine.method.export_bank()
    return torch.softmax(state.alpha_scale * state.alpha.double(), dim=0).tolist()


def bank_save_paths(path: str | Path, bank_methods: Sequence[str],
                    method: str | None = None) -> dict[str, str]:
    """Where ``save_bank`` writes each method's bank: ``{method: file}``.

    ``method`` given: only that method's bank, to ``path`` (it must be one of ``bank_methods``).
    Otherwise one method with a bank saves to ``path``; several save each to ``path`` with the
    method name inserted before the suffix (``fleet.zoabank`` -> ``fleet.zoa.zoabank``).
    ``ValueError`` if no method of the run has a bank."""
    path = Path(path)
    if method is not None:
        if method not in bank_methods:
            raise ValueError(f"save-bank method {method!r} is not a method of this run with a "
                             f"knowledge bank (those: {list(bank_methods) or 'none'})")
        return {method: str(path)}
    if not bank_methods:
        raise ValueError("no method of this run has a knowledge bank to save (ZOA has one)")
    if len(bank_methods) == 1:
        return {bank_methods[0]: str(path)}
    return {m: str(path.with_name(f"{path.stem}.{m}{path.suffix}")) for m in bank_methods}


def _prepare_banks(runs: list[_MethodRun], load_bank: str | Path | None,
                   save_bank: str | Path | None, save_bank_method: str | None) -> dict:
    """Resolve the save paths and load ``load_bank`` into every method with a bank (all
    checks before the first frame); the ``bank_files`` record."""
    bank_methods = [run.name for run in runs if has_bank(run.engine)]
    if save_bank_method is not None and save_bank is None:
        raise ValueError("a save-bank method needs a file to save to (--save-bank)")
    saved = {} if save_bank is None else \
        bank_save_paths(save_bank, bank_methods, save_bank_method)
    loaded = None
    if load_bank is not None:
        if not bank_methods:
            print(f"note: no method of this run has a knowledge bank; {load_bank} is not "
                  "loaded", file=sys.stderr)
        meta: dict = {}
        for run in runs:
            if run.name in bank_methods:
                meta = run.engine.load_bank(load_bank)
        loaded = {"path": str(load_bank), "methods": bank_methods,
                  "entries": meta.get("entries"),
                  "pack_fingerprint": meta.get("pack_fingerprint"),
                  "content_sha256": meta.get("content_sha256"),
                  "provenance": meta.get("provenance")}
    return {"load": loaded, "saved": saved}


def _save(engine: Engine, path: str, provenance: Mapping[str, str] | None) -> None:
    from zoa_ros.core.bank.file import BankError
    try:
        engine.save_bank(path, dict(provenance or {}))
    except OSError as e:
        raise BankError(f"saving the knowledge bank to {path} failed: {e}") from e


def recovery_frames(hits: Sequence[bool], window: int = RECOVERY_WINDOW,
                    margin: float = RECOVERY_MARGIN) -> int | None:
    """Frames from a domain boundary to the start of the first window of ``window``
    consecutive frames (all of them if fewer) whose accuracy is at least the segment's accuracy
    minus ``margin`` points; ``None`` if no window qualifies. ``hits``: the segment's per-frame
    correctness in stream order."""
    n = len(hits)
    if n == 0:
        return None
    w = min(window, n)
    target = 100.0 * sum(hits) / n - margin
    sums = np.concatenate([[0], np.cumsum(np.asarray(hits, dtype=np.int64))])
    window_acc = 100.0 * (sums[w:] - sums[:-w]) / w
    reached = np.flatnonzero(window_acc >= target - 1e-9)
    return int(reached[0]) if len(reached) else None


def _check_labels(segment: Segment, num_classes: int) -> None:
    if segment.labels is None:
        return
    if len(segment.labels) != len(segment.frames):
        raise ValueError(f"segment {segment.name!r}: {len(segment.frames)} frames but "
                         f"{len(segment.labels)} labels")
    bad = [c for c in segment.labels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"segment {segment.name!r}: class index {bad[0]} is outside the "
                         f"model's {num_classes} classes")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return _mean(values) if values else None


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (MIB if sys.platform == "darwin" else 1024.0)
