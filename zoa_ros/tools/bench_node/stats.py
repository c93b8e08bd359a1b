"""TODO"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

TARGET_P50_RATIO = 1.10   # node p50 / model p50, adaptation off


TARGET_P99_RATIO = 1.50   # node p99 with adaptation on / off


REFERENCES = {"alongside": "alongside the stream, against the node's next answers",
              "between slices": "once per camera period, between the stream's slices"}


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99, mean, max of latencies in ms (None when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def percentile_ratio_interval(num: Sequence[float], den: Sequence[float], q: float = 99.0,
                              level: float = 0.95, draws: int = 2000, seed: int = 0,
                              paired: bool = False) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of ``percentile(num, q) / percentile(den, q)``: both
    samples resampled ``draws`` times (seeded, so a report is reproducible), independently, or
    with ``paired`` as pairs (``num[i]`` with ``den[i]``, measured in the same moments, so the
    machine's drift that moves both together drops out of the interval). ``None`` with fewer
    than two values on either side. A p99 of a few hundred frames rests on its few largest
    values, and a p50 ratio near its target moves by a few hundredths between runs on a shared
    machine; the interval says how much."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    if paired and a.size != b.size:
        raise ValueError(f"paired samples of different lengths: {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, (draws, a.size))
    top = np.percentile(a[picks], q, axis=1)
    if not paired:
        picks = rng.integers(0, b.size, (draws, b.size))
    bottom = np.percentile(b[picks], q, axis=1)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(top / bottom, [tail, 100.0 - tail])
    return float(lo), float(hi)


class Reference(NamedTuple):
    """What a condition's p50 target compares, over the same moments: the node's latency and its
    inference's CPU time against the model's latency and CPU time."""

    name: str             # "alongside" or "between slices"
    node_ms: dict         # summaries (:func:`summary`): e2e latency
    node_inference_ms: dict
    node_cpu_ms: dict
    model_ms: dict
    model_cpu_ms: dict
    node_samples_ms: Sequence[float] = ()    # e2e latencies and the model's: in pairs where
    model_samples_ms: Sequence[float] = ()   # the model ran alongside
    node_at_callback_ms: dict | None = None  # e2e up to the bench's callback (older reports)

    def p50_interval(self) -> tuple[float, float] | None:
        """95 % bootstrap interval of node p50 / model p50: resampling the pairs alongside,
        else both samples independently (that one does not see the drift between the shares,
        so it is narrower than the truth)."""
        return percentile_ratio_interval(self.node_samples_ms, self.model_samples_ms, q=50.0,
                                         paired=self.name == "alongside")


def reference(condition: dict) -> Reference:
    """The model's runs alongside the stream and the node's answers paired with them, where
    they stand as the reference; else the model once per camera period between the stream's
    slices and all of the node's answers."""
    c = condition
    if c.get("model_reference") == "alongside":
        return Reference("alongside", c["latency_paired_ms"], c["node_inference_paired_ms"],
                         c["node_inference_cpu_paired_ms"], c["model_alongside_ms"],
                         c["model_alongside_cpu_ms"], c.get("latency_paired_samples_ms", ()),
                         c.get("model_alongside_samples_ms", ()),
                         c.get("latency_paired_at_callback_ms"))
    return Reference("between slices", c["latency_ms"], c["node_inference_ms"],
                     c["node_inference_cpu_ms"], c["model_ms"], c.get("model_cpu_ms") or {},
                     c.get("latency_samples_ms", ()), c.get("model_samples_ms", ()),
                     c.get("latency_at_callback_ms"))


def ratios(conditions: Sequence[dict], relay: Sequence[dict] = ()) -> dict[str, dict]:
    """Per size: node p50 / model p50 (off and on, against each condition's
    :func:`reference`) and p99 on / p99 off, with pass/fail; with ``relay`` conditions also the
    transport floor against the model and the node."""
    out: dict[str, dict] = {}
    floors = {c["size"]: c["latency_ms"]["p50"] for c in relay}
    for size in dict.fromkeys(c["size"] for c in conditions):
        by = {c["adaptation"]: c for c in conditions if c["size"] == size}
        off, on = by.get("off"), by.get("on")
        row: dict[str, Any] = {}
        for name, c in (("off", off), ("on", on)):
            if c is not None:   # also against the node's own Engine.predict time
                ref = reference(c)
                row[f"model_reference_{name}"] = ref.name
                row[f"node_p50_over_model_p50_{name}"] = ratio(ref.node_ms["p50"],
                                                               ref.model_ms["p50"])
                row[f"node_p50_over_inference_p50_{name}"] = ratio(
                    c["latency_ms"]["p50"], c["node_inference_ms"]["p50"])
        r50 = row.get("node_p50_over_model_p50_off")
        row["p50_target_met"] = None if r50 is None else r50 <= TARGET_P50_RATIO
        if off is None:
            out[size] = row
            continue
        ref = reference(off)
        interval = ref.p50_interval()
        if interval is not None:
            row["node_p50_over_model_p50_off_ci95"] = list(interval)
        row["node_p50_over_model_between_p50_off"] = ratio(off["latency_ms"]["p50"],
                                                           off["model_ms"]["p50"])
        if ref.node_at_callback_ms:   # e2e up to this process's callback, as reports before
            row["node_p50_at_callback_over_model_p50_off"] = ratio(
                ref.node_at_callback_ms["p50"], ref.model_ms["p50"])
        if ref.name == "alongside":   # the two references side by side
            row["model_alongside_p50_over_between_p50_off"] = ratio(ref.model_ms["p50"],
                                                                    off["model_ms"]["p50"])
        if "model_back_to_back_ms" in off:
            tight = off["model_back_to_back_ms"]["p50"]
            row["node_p50_over_model_back_to_back_p50_off"] = ratio(off["latency_ms"]["p50"],
                                                                    tight)
            row["model_p50_over_back_to_back_p50_off"] = ratio(off["model_ms"]["p50"], tight)
        if ref.model_cpu_ms:   # computing slower, or waiting?
            row["inference_cpu_p50_over_model_cpu_p50_off"] = ratio(ref.node_cpu_ms["p50"],
                                                                    ref.model_cpu_ms["p50"])
        if ref.node_ms["p50"] is not None and ref.model_ms["p50"]:
            model = ref.model_ms["p50"]
            row["node_added_p50_ms"] = ref.node_ms["p50"] - model
            row["target_added_p50_ms"] = (TARGET_P50_RATIO - 1) * model
            floor = floors.get(size)
            if floor is not None:
                row["floor_p50_ms"] = floor
                row["floor_p50_over_model_p50"] = floor / model
        if on is not None:
            r99 = ratio(on["latency_ms"]["p99"], off["latency_ms"]["p99"])
            row["p99_on_over_p99_off"] = r99
            row["p99_target_met"] = None if r99 is None else r99 <= TARGET_P99_RATIO
            interval = percentile_ratio_interval(on.get("latency_samples_ms", ()),
                                                 off.get("latency_samples_ms", ()))
            if interval is not None:
                row["p99_on_over_p99_off_ci95"] = list(interval)
        out[size] = row
    return out


def pooled(blocks: Sequence[Sequence[float]]) -> dict[str, Any]:
    """:func:`summary` of all the blocks' times, with each block's own p50 (``p50_blocks``)."""
    out: dict[str, Any] = summary([ms for block in blocks for ms in block])
    out["p50_blocks"] = [summary(block)["p50"] for block in blocks]
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Counters over the measured window (``last_step_ms`` is the newest value, not a delta)."""
    out: dict[str, Any] = {k: int(after[k] - before[k]) for k in after if k != "last_step_ms"}
    out["last_step_ms"] = after["last_step_ms"]
    return out
