"""Run-time controls a front end (the ROS node) applies to a running :class:`Engine`.

* :func:`tune` swaps in new engine / method settings atomically (one reference assignment each;
  the engine and ZOA read their config once per call), validating everything first.
* :func:`reset_to_source` returns to the source model, optionally keeping the knowledge bank.

Nothing here imports rclpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from zoa_ros.core.engine import Engine

# EngineConfig fields that may change while frames stream.
ENGINE_TUNABLE = frozenset({"interval_frames", "min_period_s", "stride", "top_k", "shuffle"})


def tune(engine: Engine, engine_changes: Mapping[str, object] | None = None,
         method_changes: Mapping[str, object] | None = None) -> None:
    """Apply ``engine_changes`` (fields of :data:`ENGINE_TUNABLE`) and ``method_changes``
    (fields of the method's ``cfg`` dataclass, e.g. ZOA's ``lr``, ``domain_t``).

    Raises ``ValueError`` with the reason - and changes nothing - if any value is invalid or
    the method has no such setting.
    """
    engine_changes = dict(engine_changes or {})
    method_changes = dict(method_changes or {})
    unknown = sorted(set(engine_changes) - ENGINE_TUNABLE)
    if unknown:
        raise ValueError(f"engine settings {unknown} cannot change at run time")
    new_engine = dataclasses.replace(engine.config, **engine_changes) if engine_changes else None
    method = engine.method
    new_method = None
    if method_changes:
        cfg = getattr(method, "cfg", None)
        if cfg is None or not dataclasses.is_dataclass(cfg):
            raise ValueError(f"method {engine.config.method!r} has no tunable settings "
                             f"({sorted(method_changes)})")
        known = {f.name for f in dataclasses.fields(cfg)}
        bad = sorted(set(method_changes) - known)
        if bad:
            raise ValueError(f"method {engine.config.method!r} has no settings {bad}")
        new_method = dataclasses.replace(cfg, **method_changes)
        validate = getattr(new_method, "validate", None)
        if validate is not None:
            validate()
    if new_engine is not None:
        engine.config = new_engine
    if new_method is not None:
        method.cfg = new_method
        detector = getattr(method, "detector", None)
        if detector is not None:
            detector.threshold = getattr(new_method, "domain_t", detector.threshold)
            detector.momentum = getattr(new_method, "detector_momentum", detector.momentum)
            detector.min_batch = getattr(new_method, "detect_min_batch", detector.min_batch)


def reset_to_source(engine: Engine, keep_bank: bool = True) -> int:
    """Back to the source model's outputs; returns the bank entries kept.

    ``keep_bank=False`` (or a method without a bank): :meth:`Engine.reset` - the in-memory bank
    is emptied too. ``keep_bank=True``: the stored domain entries, their mixing logits α, the
    similarity matrix and the statistics memory (``stats_recall``) survive; ε is set to minus
    the bank mixture so that the effective parameters equal the source ones; the detector,
    shift history and running test statistics start over. Files on disk are never touched.
    """
    method = engine.method
    if not keep_bank or not hasattr(method, "export_bank"):
        engine.reset()
        return 0
    before = method.export_bank()
    engine.reset()
    kept = int(before.entries.shape[0]) if before.entries.dim() == 2 else 0
    if kept == 0 and before.recall_keys is None:
        return 0
    state = dataclasses.replace(method.export_bank(), recall_keys=before.recall_keys,
                                recall_stats=before.recall_stats)
    if kept:
        bank = torch.cat([before.entries.new_zeros(1, before.entries.shape[1]), before.entries])
        mixture = torch.softmax(float(before.alpha_scale) * before.alpha, dim=0) @ bank
        state = dataclasses.replace(
            state, eps=-mixture, alpha=before.alpha.clone(), entries=before.entries.clone(),
            similarity=before.similarity.clone(), domain_changes=before.domain_changes,
            domain_id=before.domain_id, origins=before.origins)
    method.import_bank(state)
    engine.sync_backend()   # the int8 runtime, if any, classifies with the restored state
    return kept
