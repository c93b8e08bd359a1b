"""Thread-safe feature taps and the record of one forward pass that adaptation can reuse.

:class:`~zoa_ros.core.model.features.FeatureExtractor` registers its hooks for the duration of each
call, so two threads running it on one model would add hooks to a module another thread is
iterating and collect each other's taps. :class:`ThreadSafeExtractor` installs its hooks once
and routes each tap to the calling thread's sink, and also measures the domain detector's
early-feature statistics in the same pass (:class:`~zoa_ros.core.model.features.EarlyStats` of
:func:`~zoa_ros.core.model.features.early_module`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from zoa_ros.core.model.features import EarlyStats, FeatureExtractor, Features, early_module


class ThreadSafeExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` whose hooks are installed once; safe from several threads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._local = threading.local()
        self.early, self.prefix, self.early_channels = early_module(model)
        self._handles = [model.get_submodule(name).register_forward_hook(self._on_tap)
                         for name in self.names]
        self._handles.append(self.early.register_forward_hook(self._on_early))

    def _on_tap(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            sink.append(self._pool(out))

    def _on_early(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        if getattr(self._local, "want_early", False):
            if self.token:
                self._local.early = EarlyStats.of(out[:, self.prefix:], channel_dim=2)
            else:
                self._local.early = EarlyStats.of(out, channel_dim=1)
            callback = getattr(self._local, "on_early", None)
            if callback is not None:
                callback(self._local.early, out.shape[0])

    @contextmanager
    def _hooks(self, sink: list[torch.Tensor]) -> Iterator[None]:
        self._local.sink = sink
        try:
            yield
        finally:
            self._local.sink = None

    def run(self, x: torch.Tensor, early: bool = True,
            on_early: Callable[[EarlyStats, int], None] | None = None,
            ) -> tuple[Features, EarlyStats | None]:
        """Unshifted features of ``x`` and (if ``early``) the detector statistics;
        ``on_early(stats, frames)`` is called with them inside the forward pass, right after
        the early module (before any later layer runs)."""
        self._local.want_early, self._local.early = early, None
        self._local.on_early = on_early if early else None
        try:
            features = self(x)
            return features, self._local.early
        finally:
            self._local.want_early, self._local.early = False, None
            self._local.on_early = None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass(frozen=True, eq=False)
class ForwardRecord:
    """One unperturbed forward pass: unshifted features (for the loss), the returned logits
    (shifted), detector statistics, BatchNorm batch statistics (if collected), the version of the
    parameter set it used and its normalisation (``layer`` / ``batch`` / ``running``).

    Adaptation may reuse a record instead of recomputing the forward when its version is still
    the published one and its normalisation is the adaptation normalisation.
    """

    features: Features
    logits: torch.Tensor
    early: EarlyStats | None
    bn_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] | None
    version: int
    norm: str

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    @staticmethod
    def cat(records: Sequence[ForwardRecord]) -> ForwardRecord | None:
        """Records of consecutive frames as one batch record, or ``None`` if they cannot be
        combined (different versions or normalisations, missing detector statistics, or
        batch-statistics records, whose features depend on the batch they were computed in)."""
        if not records:
            return None
        if len(records) == 1:
            return records[0]
        first = records[0]
        if any(r.version != first.version or r.norm != first.norm or r.early is None
               for r in records) or first.norm == "batch":
            return None
        feats = [r.features for r in records]
        early = records[0].early
        for r in records[1:]:
            early = early + r.early
        return ForwardRecord(
            Features([torch.cat([f.taps[i] for f in feats]) for i in range(len(feats[0].taps))],
                     torch.cat([f.pre_logits for f in feats]),
                     torch.cat([f.logits for f in feats])),
            torch.cat([r.logits for r in records]), early, None, first.version, first.norm)
