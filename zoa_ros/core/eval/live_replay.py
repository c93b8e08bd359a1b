"""Scoring a live replay: a bag's frames published into a running ``zoa_node`` and the node's
``classification_json`` answers, in the result shape of
:func:`zoa_ros.core.eval.evaluation.evaluate` (no rclpy here; the publishing side is
:mod:`zoa_ros.ros.bag_player`).

Answers are matched to frames by header stamp (the node publishes the stamp of the image it
classified). A frame without an answer was dropped: lost in transport, replaced in the node's
newest-frame slot before it was classified, or malformed. Accuracy, recovery and the curve are
computed over the answered frames; every domain row also says how many frames were published,
answered and dropped.

The offline twin (:func:`offline_answers`) runs the node's engine configuration over the same
frames in this process, frame by frame as the node does (classify and buffer, then the
adaptation step if one is due) but synchronously, on the recorded time as the engine clock.
With method ``none`` it must give the node's prediction for every answered frame; an adapting
method can differ once the node classifies a frame while a step is still running. Like the
node, it resizes and crops every frame, also one already at the model's input size (which the
offline ``zoa-ros replay`` uses as it is).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from zoa_ros.core.data.bags.files import typestore
from zoa_ros.core.data.bags.stream import BagStream, PlannedFrame
from zoa_ros.core.data.image_messages import MalformedMessage, to_array
from zoa_ros.core.data.stream import SegmentInfo
from zoa_ros.core.eval.evaluation import recovery_frames
from zoa_ros.core.model.pack import ModelPack

QOS_CHOICES = ("auto", "best_effort", "reliable")   # reliability of the published frames
MAX_LISTED = 200   # dropped / differing frames listed one by one in the result

LIVE_NOTES = {
    "acc (live)": "top-1 accuracy in percent over the frames the node answered; frames it "
                  "dropped are counted per domain, not scored",
    "dropped": "published frames without an answer: lost in transport, replaced in the node's "
               "newest-frame slot before it was classified, or malformed",
    "inference_ms": "the node's own classification time per frame (classification_json)",
    "end_to_end_ms": "from publishing the frame to receiving its answer, in this process",
    "offline": "the same method and node parameters run through the engine in this process, "
               "frame by frame and synchronously, on the same frames",
}


@dataclass(frozen=True)
class Answer:
    """One frame's result, from the node or from the offline twin."""

    class_index: int
    inference_ms: float | None = None
    latency_ms: float | None = None     # publish -> answer received (live only)
    adaptation_steps: int = 0
    bank_entries: int = 0
    domain: int = 0


def stamp_of(doc: Mapping) -> int:
    """Header stamp (ns) of a ``classification_json`` document."""
    return int(doc["stamp"]["sec"]) * 1_000_000_000 + int(doc["stamp"]["nanosec"])


def match_answers(frames: Sequence[PlannedFrame], docs: Iterable[tuple[Mapping, float]],
                  sent_at: Mapping[int, float]) -> tuple[dict[int, Answer], int]:
    """``(answers by frame index, answers that match no published frame)`` from
    ``(classification_json document, time received)`` pairs; frames sharing a stamp are
    answered in publishing order."""
    waiting: dict[int, deque[int]] = defaultdict(deque)
    for i, frame in enumerate(frames):
        if i in sent_at:
            waiting[frame.stamp].append(i)
    answers: dict[int, Answer] = {}
    unmatched = 0
    for doc, received in docs:
        queue = waiting.get(stamp_of(doc))
        if not queue or not doc.get("results"):
            unmatched += 1
            continue
        i = queue.popleft()
        answers[i] = Answer(int(doc["results"][0]["class_index"]),
                            float(doc.get("inference_ms", 0.0)),
                            1e3 * (received - sent_at[i]),
                            int(doc.get("adaptation_steps", 0)),
                            int(doc.get("bank_entries", 0)), int(doc.get("domain", 0)))
    return answers, unmatched


def score(frames: Sequence[PlannedFrame], plan: Sequence[SegmentInfo],
          answers: Mapping[int, Answer], chunk: int = 64) -> dict:
    """One method's entry of an evaluation result (``evaluate``'s keys; what a live run cannot
    measure is ``None``), scored over the answered frames. ``frames[i]`` is answered by
    ``answers[i]``; ``chunk`` frames per point of the curve."""
    by_segment: dict[int, list[int]] = defaultdict(list)
    for i, frame in enumerate(frames):
        by_segment[frame.segment].append(i)
    labelled = all(f.label is not None for f in frames)
    domains, curve_frames, curve_acc, seen = [], [], [], 0
    previous = None
    for s, info in enumerate(plan):
        indices = by_segment.get(s, [])
        answered = [i for i in indices if i in answers]
        hits = [answers[i].class_index == frames[i].label for i in answered] if labelled \
            else []
        for a in range(0, len(indices), chunk):
            part = [answers[i].class_index == frames[i].label
                    for i in indices[a:a + chunk] if i in answers]
            if labelled and part:
                curve_frames.append(seen + min(a + chunk, len(indices)))
                curve_acc.append(100.0 * sum(part) / len(part))
        seen += len(indices)
        boundary = previous is not None and previous != info.name
        previous = info.name
        domains.append({
            "name": info.name, "round": info.round,
            "acc": 100.0 * sum(hits) / len(hits) if hits else None,
            "frames": len(indices), "answered": len(answered),
            "dropped": len(indices) - len(answered),
            "correct": sum(hits) if labelled else None,
            "entropy": None, "agreement": None,
            "recovery_frames": recovery_frames(hits) if hits and boundary else None})
    scored = [d for d in domains if d["acc"] is not None]
    ordered = [answers[i] for i in sorted(answers)]
    steps = ordered[-1].adaptation_steps - ordered[0].adaptation_steps if ordered else 0
    changes = sum(a.domain != b.domain for a, b in pairwise(ordered))
    inference = [a.inference_ms for a in ordered if a.inference_ms is not None]
    rounds = sorted({d["round"] for d in domains})
    return {
        "mean_acc": _mean([d["acc"] for d in scored]) if scored else None,
        "mean_entropy": None, "mean_agreement": None,
        "mean_recovery_frames": _mean_or_none([d["recovery_frames"] for d in domains]),
        "domains": domains,
        "rounds": [{"round": r, "mean_acc": _mean_or_none(
            [d["acc"] for d in scored if d["round"] == r])} for r in rounds],
        "costs": {"forward_per_frame": None, "backward_per_frame": None,
                  "ms_per_frame": _mean(inference) if inference else None,
                  "peak_mb": None, "state_mb": None, "adapt_steps": steps,
                  "timed_frames": len(inference)},
        "bank": {"entries": ordered[-1].bank_entries if ordered else 0, "bytes": None},
        "domain_changes": changes,
        "curve": {"frames": curve_frames, "acc": curve_acc if labelled else None,
                  "entropy": None, "agreement": None},
    }


def compare(frames: Sequence[PlannedFrame], live: Mapping[int, Answer],
            offline: Mapping[int, Answer]) -> dict:
    """Live against offline predictions on the frames both answered."""
    both = sorted(i for i in live if i in offline)
    differing = [i for i in both if live[i].class_index != offline[i].class_index]
    return {
        "compared": len(both), "same": len(both) - len(differing),
        "agreement": 100.0 * (len(both) - len(differing)) / len(both) if both else None,
        "first_difference": differing[0] if differing else None,
        "differing": [{"index": i, "stamp_ns": frames[i].stamp,
                       "live": live[i].class_index, "offline": offline[i].class_index}
                      for i in differing[:MAX_LISTED]],
        "offline_missing": sum(i not in offline for i in live),
    }


def decoded_frames(stream: BagStream) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(frame index, log time ns, image)`` of every planned frame that decodes, decoded as
    the node decodes a received message (no resizing here)."""
    store = typestore()
    for i, (_, raw) in enumerate(stream.raw_frames()):
        try:
            image = to_array(store.deserialize_cdr(raw.rawdata, raw.msgtype), stream.kind)
        except MalformedMessage:
            continue
        yield i, raw.log_time_ns, image


def offline_answers(pack: ModelPack, config: object,
                    frames: Iterable[tuple[int, int, np.ndarray]]) -> dict[int, Answer]:
    """The engine with ``config`` (an :class:`~zoa_ros.core.engine.EngineConfig`) over
    ``(index, log time ns, image)`` frames: classify with observe, then the step if due."""
    from zoa_ros.core.engine import Engine, MalformedFrame

    now = [0.0]
    engine = Engine(pack, config, clock=lambda: now[0])
    out: dict[int, Answer] = {}
    try:
        for index, log_time_ns, image in frames:
            now[0] = log_time_ns * 1e-9
            start = time.perf_counter()
            try:
                p = engine.predict(image, observe=engine.adapt_enabled)[0]
            except MalformedFrame:
                continue
            ms = 1e3 * (time.perf_counter() - start)
            out[index] = Answer(p.class_index, ms, None, p.adapt_steps,
                                engine.stats().bank_entries, int(p.domain_id or 0))
            engine.maybe_adapt()
    finally:
        engine.close()
    return out


def latency_summary(values: Sequence[float]) -> dict | None:
    """count, mean, p50, p90, p99 and max of ``values`` (ms); ``None`` if empty."""
    if not values:
        return None
    v = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"count": len(v), "mean": float(v.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": float(v.max())}


def live_result(frames: Sequence[PlannedFrame], plan: Sequence[SegmentInfo], method: str,
                answers: Mapping[int, Answer], published: int, unmatched: int, chunk: int,
                wall_s: float, live: Mapping, offline: Mapping[int, Answer] | None = None
                ) -> dict:
    """The whole result: ``evaluate``'s shape with ``method`` as the one method, plus a
    ``live`` section (frames published / answered / dropped, latency, the node's counters and
    parameters from ``live``, and the comparison with ``offline`` when given)."""
    result = score(frames, plan, answers, chunk)
    dropped = [i for i in range(published) if i not in answers]
    section = {
        **live,
        "frames_published": published, "frames_answered": len(answers),
        "frames_dropped": len(dropped), "unmatched_answers": unmatched,
        "dropped": [{"index": i, "stamp_ns": frames[i].stamp,
                     "domain": plan[frames[i].segment].name} for i in dropped[:MAX_LISTED]],
        "latency_ms": {
            "inference": latency_summary([a.inference_ms for a in answers.values()
                                          if a.inference_ms is not None]),
            "end_to_end": latency_summary([a.latency_ms for a in answers.values()
                                           if a.latency_ms is not None])},
        "per_frame": {
            "stamp_ns": [f.stamp for f in frames[:published]],
            "label": [f.label for f in frames[:published]],
            "live": [_class(answers.get(i)) for i in range(published)],
            "offline": None if offline is None else
            [_class(offline.get(i)) for i in range(published)],
            "inference_ms": [_round(answers[i].inference_ms) if i in answers else None
                             for i in range(published)],
            "end_to_end_ms": [_round(answers[i].latency_ms) if i in answers else None
                              for i in range(published)]},
    }
    if offline is not None:
        on_answered = score(frames, plan, {i: offline[i] for i in answers if i in offline},
                            chunk)
        everything = score(frames[:published], plan, offline, chunk)
        section["offline"] = {
            **compare(frames, answers, offline),
            "mean_acc_answered": on_answered["mean_acc"],
            "mean_acc_all": everything["mean_acc"],
            "adapt_steps": everything["costs"]["adapt_steps"],
            "domains": [{"name": d["name"], "round": d["round"], "live_acc": d["acc"],
                         "offline_acc_answered": a["acc"], "offline_acc_all": e["acc"]}
                        for d, a, e in zip(result["domains"], on_answered["domains"],
                                           everything["domains"])]}
    segments = [{"name": s.name, "round": s.round, "frames": s.frames} for s in plan]
    return {
        "methods": {method: result},
        "stream": segments,
        "labelled": all(f.label is not None for f in frames),
        "run": {"wall_s": wall_s, "stream_s": 0.0, "frames": published,
                "frames_per_s": published / wall_s if wall_s > 0 else 0.0,
                "device": live.get("device"), "torch_threads": None,
                "notes": LIVE_NOTES},
        "live": section,
    }


def _class(answer: Answer | None) -> int | None:
    return None if answer is None else answer.class_index


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return _mean(present) if present else None
