"""Domain recall: single frames of a BatchNorm model normalised with a known domain's statistics.

In streaming mode a BatchNorm model classifies single frames with a running estimate of the test
statistics (:mod:`.bn_stats`). That estimate lags every change by tens of frames and carries the
content of the last ~100 frames, so it needs the source prior and stays well below what batch
statistics give. ZOA already knows more: each domain it has seen has a *signature* - the
detector's statistics of the earliest features and the BatchNorm statistics of its adaptation
batches - and each bank entry keeps the signature of the domain it was stored for
(METHOD.md §4.7).

:class:`DomainMemory` compares a sliding window of the last ``window`` classified frames (their
earliest-feature statistics, already measured by the prediction's forward) with the current
domain's signature and the stored ones, using the detector's own test: the window *matches* a
domain when their divergence is at most the detector's threshold, i.e. when the detector would
call them the same domain. While a domain matches (the nearest one if several do), frames are
normalised with that domain's BatchNorm statistics alone, as in batch mode; when none does, with
the running estimate and its source prior. A returning domain is therefore recognised within
one window instead of relearned, which is what makes knowledge accumulate in streaming mode.

Thread model: prediction threads call :meth:`observe_frames` and :meth:`match`; the adaptation
step calls :meth:`observe_batch` and :meth:`end_domain`. All state changes happen under one
lock, and the published candidate list is an immutable tuple.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zoa_ros.core.adapt.bn_stats import Sink, fold_batch
from zoa_ros.core.adapt.detector import jeffreys
from zoa_ros.core.adapt.params import BnStats
from zoa_ros.core.adapt.taps import EarlyStats


@dataclass(frozen=True)
class DomainSignature:
    """What identifies a domain and how to normalise its frames."""

    early_mean: torch.Tensor     # [C] detector statistics of the earliest features
    early_var: torch.Tensor      # [C]
    bn_stats: BnStats            # one (mean, var) per BatchNorm, from its adaptation batches

    def divergence(self, window: EarlyStats) -> float:
        return jeffreys(self.early_mean, self.early_var, window.mean, window.var)

    def to(self, device: torch.device | str) -> DomainSignature:
        return DomainSignature(self.early_mean.float().to(device),
                               self.early_var.float().to(device),
                               tuple((m.float().to(device), v.float().to(device))
                                     for m, v in self.bn_stats))


@dataclass(frozen=True)
class Match:
    """The domain a window matched: ``entry`` is the stored entry's index, ``None`` for the
    current (not yet stored) domain."""

    signature: DomainSignature
    entry: int | None
    divergence: float


class DomainMemory:
    """The current domain's signature, the stored ones (one per bank entry, ``None`` where an
    entry has none) and the match of the latest window of classified frames."""

    def __init__(self, threshold: float, window: int, momentum: float) -> None:
        if window < 1:
            raise ValueError(f"recall window must be >= 1 frame, not {window}")
        self.threshold = float(threshold)
        self.window = int(window)
        self.momentum = float(momentum)
        self._lock = threading.Lock()
        self._frames: deque[tuple[EarlyStats, int]] = deque()
        self._frame_count = 0
        self._stored: tuple[DomainSignature | None, ...] = ()
        self._current: DomainSignature | None = None
        self._match: Match | None = None
        self.matches = 0             # windows that matched a domain

    # ---- adaptation side --------------------------------------------------------------------
    def observe_batch(self, early_mean: torch.Tensor, early_var: torch.Tensor,
                      reference: BnStats, sink: Sink | None) -> None:
        """Fold an adaptation batch into the current domain: ``early_*`` is the detector's
        estimate after this batch, ``sink`` the batch's BatchNorm statistics (layers missing
        from it keep ``reference``'s)."""
        if not sink:
            return
        with self._lock:
            old = self._current
            start = reference if old is None else old.bn_stats
            rho = 1.0 if old is None else self.momentum
            self._current = DomainSignature(early_mean.clone(), early_var.clone(),
                                            fold_batch(start, sink, rho))

    def end_domain(self, removed: int | None) -> None:
        """The detector saw a change and the bank stored the current domain as a new entry
        (after dropping entry ``removed``): its signature goes with it."""
        with self._lock:
            stored = [s for i, s in enumerate(self._stored) if i != removed]
            self._stored = (*stored, self._current)
            self._current = None
            self._match = None

    # ---- prediction side --------------------------------------------------------------------
    def observe_frames(self, early: EarlyStats, frames: int) -> None:
        """Slide the window over ``frames`` newly classified frames and re-match it."""
        with self._lock:
            self._frames.append((early, frames))
            self._frame_count += frames
            while self._frame_count - self._frames[0][1] >= self.window:
                self._frame_count -= self._frames.popleft()[1]
            self._match = self._best() if self._frame_count >= self.window else None
            self.matches += self._match is not None

    def _best(self) -> Match | None:
        stats = [early for early, _ in self._frames]
        window = stats[0]
        for more in stats[1:]:
            window = window + more
        best: Match | None = None
        for entry, signature in [*enumerate(self._stored), (None, self._current)]:
            if signature is None:
                continue
            d = signature.divergence(window)
            if d <= self.threshold and (best is None or d < best.divergence):
                best = Match(signature, entry, d)
        return best

    def match(self) -> Match | None:
        """The domain the latest window matched, if any."""
        with self._lock:
            return self._match

    # ---- state --------------------------------------------------------------------------------
    @property
    def stored(self) -> tuple[DomainSignature | None, ...]:
        with self._lock:
            return self._stored

    def replace_stored(self, signatures: Sequence[DomainSignature | None]) -> None:
        """Swap in the signatures of a loaded bank; the current domain starts afresh."""
        with self._lock:
            self._stored = tuple(signatures)
            self._current = None
            self._match = None

    def clear(self) -> None:
        with self._lock:
            self._stored = ()
            self._current = None
            self._match = None
            self._frames.clear()
            self._frame_count = 0


def signature_tensors(signatures: Sequence[DomainSignature | None]) -> dict[str, torch.Tensor]:
    """Bank-file tensors for per-entry signatures: ``signature.present`` [K],
    ``signature.early`` [K, 2, C], ``signature.bn`` [K, 2, N] (all BatchNorm channels in layer
    order) and ``signature.bn_sizes`` [L]; nothing when no entry has one."""
    known = [s for s in signatures if s is not None]
    if not known:
        return {}
    first = known[0]
    channels, sizes = first.early_mean.numel(), [m.numel() for m, _ in first.bn_stats]
    k, total = len(signatures), sum(sizes)
    early, bn = torch.zeros(k, 2, channels), torch.zeros(k, 2, total)
    present = torch.zeros(k)
    for i, sig in enumerate(signatures):
        if sig is None:
            continue
        if [m.numel() for m, _ in sig.bn_stats] != sizes or sig.early_mean.numel() != channels:
            raise ValueError("domain signatures of one bank must have the same shapes")
        present[i] = 1.0
        early[i, 0], early[i, 1] = sig.early_mean.cpu(), sig.early_var.cpu()
        bn[i, 0] = torch.cat([m.detach().cpu().flatten() for m, _ in sig.bn_stats])
        bn[i, 1] = torch.cat([v.detach().cpu().flatten() for _, v in sig.bn_stats])
    return {"signature.present": present, "signature.early": early, "signature.bn": bn,
            "signature.bn_sizes": torch.tensor(sizes, dtype=torch.float32)}


def signatures_from_tensors(tensors: dict[str, torch.Tensor],
                            entries: int) -> tuple[DomainSignature | None, ...]:
    """Inverse of :func:`signature_tensors`; ``()`` when the file has none, ``ValueError`` when
    they are inconsistent."""
    keys = ("signature.present", "signature.early", "signature.bn", "signature.bn_sizes")
    found = [key in tensors for key in keys]
    if not any(found):
        return ()
    if not all(found):
        raise ValueError("bank holds only some of the domain-signature tensors")
    present, early, bn, sizes_t = (tensors[key] for key in keys)
    sizes = [int(n) for n in sizes_t.tolist()]
    if (present.shape != (entries,) or early.dim() != 3 or early.shape[:2] != (entries, 2)
            or bn.shape != (entries, 2, sum(sizes)) or any(n < 1 for n in sizes)):
        raise ValueError(f"domain-signature tensors do not fit {entries} entries")
    out: list[DomainSignature | None] = []
    for i in range(entries):
        if not present[i]:
            out.append(None)
            continue
        means, variances = bn[i, 0].split(sizes), bn[i, 1].split(sizes)
        out.append(DomainSignature(early[i, 0].clone(), early[i, 1].clone(),
                                   tuple((m.clone(), v.clone())
                                         for m, v in zip(means, variances, strict=True))))
    return tuple(out)
