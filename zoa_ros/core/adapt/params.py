"""ZOA's adapted state as immutable parameter sets, published to the model atomically.

All adapted normalization affines are packed into one flat vector of size ``P``: for layer
``l`` its scale ``γ`` occupies ``[offset, offset + C)`` and its shift ``β`` the next ``C``
entries. A :class:`ParamSet` holds everything a forward pass reads (origin affine, current
delta ε, mixing logits α, bank rows, BatchNorm test statistics, activation-shift history) and
is never modified after construction; an update builds a new set.

Fused layers read the set through a :class:`ParamStore`: a forward pass pins one set for its
whole duration in a thread-local :class:`ForwardContext` (the published set for a prediction,
a perturbed copy for an SPSA probe), so a prediction running in another thread sees either the
old or the new published set, never a perturbed or partially updated one. Publishing is one
reference assignment under a lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

# Normalisation used by fused BatchNorm layers in a forward pass.
BATCH = "batch"      # statistics of the current batch (paper protocol, adaptation forwards)
RUNNING = "running"  # the parameter set's running estimate of the test statistics
SOURCE = "source"    # the source running statistics, as the unadapted model (no prior blend)
LAYER = "layer"      # LayerNorm models: there are no batch statistics (tag only)

BnStats = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # one (mean, var) per BatchNorm


@dataclass(frozen=True)
class NormSlot:
    """Where one adapted layer's affine lives in the flat parameter vector."""

    name: str
    kind: str        # "layernorm" | "batchnorm"
    channels: int
    offset: int

    @property
    def gamma(self) -> slice:
        return slice(self.offset, self.offset + self.channels)

    @property
    def beta(self) -> slice:
        return slice(self.offset + self.channels, self.offset + 2 * self.channels)


class ParamLayout:
    """The adapted layers, in network order, and their slices of the flat vector."""

    def __init__(self, layers: list[tuple[str, str, int]]) -> None:
        slots, offset = [], 0
        for name, kind, channels in layers:
            slots.append(NormSlot(name, kind, int(channels), offset))
            offset += 2 * int(channels)
        self.slots: tuple[NormSlot, ...] = tuple(slots)
        self.size = offset

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def describe(self) -> list[tuple[str, str, int]]:
        return [(s.name, s.kind, s.channels) for s in self.slots]

    def segments(self) -> list[slice]:
        """The 2L per-layer pieces (γ_1, β_1, γ_2, …) used by similarity and scale rules."""
        return [piece for s in self.slots for piece in (s.gamma, s.beta)]

    def __len__(self) -> int:
        return len(self.slots)


@dataclass(frozen=True, eq=False)
class ParamSet:
    """One immutable snapshot of the adapted state; ``effective`` = origin + mixture + ε.

    ``bank`` has ``K + 1`` rows, row 0 being the all-zero source entry; ``alpha`` the ``K + 1``
    mixing logits (weights ``softmax(alpha_scale · alpha)``). ``bn_stats`` holds one
    ``(mean, var)`` pair per BatchNorm layer of the model (adapted or not) for ``running``
    normalisation (the running estimate; ``bn_norm``, when set, what is normalised with);
    ``shift_h`` the activation-shift history ``h`` (``None`` = no shift).
    ``version`` increases with every published set.
    """

    origin: torch.Tensor
    eps: torch.Tensor
    alpha: torch.Tensor
    bank: torch.Tensor
    alpha_scale: float
    bn_stats: BnStats = ()
    # What ``running`` BatchNorms normalise with, when set (recomputed every few frames from
    # ``bn_stats`` by the method, e.g. ZOA's shift-scaled trust); else the store's blend.
    bn_norm: BnStats | None = None
    shift_h: torch.Tensor | None = None
    version: int = 0
    effective: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.bank.shape != (self.alpha.numel(), self.origin.numel()):
            raise ValueError(f"bank shape {tuple(self.bank.shape)} does not fit "
                             f"{self.alpha.numel()} logits x {self.origin.numel()} parameters")
        object.__setattr__(self, "effective", self.origin + self.delta())

    @property
    def entries(self) -> int:
        """Stored domains ``K`` (the source row does not count)."""
        return self.bank.shape[0] - 1

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.alpha_scale * self.alpha, dim=0)

    def mixture(self) -> torch.Tensor:
        """``Σ_k w_k d_k`` over the bank rows."""
        return self.weights() @ self.bank

    def delta(self) -> torch.Tensor:
        """Total change from the origin affine: mixture + ε."""
        return self.mixture() + self.eps

    def affine(self, slot: NormSlot) -> tuple[torch.Tensor, torch.Tensor]:
        return self.effective[slot.gamma], self.effective[slot.beta]

    def replace(self, **changes: object) -> ParamSet:
        """A new set with ``changes`` applied (``effective`` is recomputed)."""
        return dataclasses.replace(self, **changes)


@dataclass
class ForwardContext:
    """What the fused layers of one forward pass read: the pinned set, the BatchNorm
    normalisation, and optional sinks: ``bn_sink`` collects each BatchNorm's batch
    ``(mean, var)`` (``batch`` normalisation), ``frame_sink`` each BatchNorm's input
    ``[B, C, H, W]`` (``running`` normalisation; its per-frame moments are computed later, see
    :func:`~zoa_ros.core.adapt.bn_stats.fold_frames_later`)."""

    params: ParamSet
    norm: str
    bn_sink: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    frame_sink: dict[int, torch.Tensor] | None = None


class ParamStore:
    """The published :class:`ParamSet`, per-thread forward contexts, and at most one piece of
    deferred work on the set (:meth:`defer`, :meth:`settle`)."""

    def __init__(self, default_norm: str, stats_prior: float = 0.0,
                 stats_layers: int | None = None) -> None:
        self.default_norm = default_norm
        # Share of the source statistics blended into ``running`` normalisation (fused_norm).
        self.stats_prior = float(stats_prior)
        # ``running`` normalisation uses test statistics in the first ``stats_layers``
        # BatchNorms only (module order); the others keep the source ones. None: all.
        self.stats_layers = stats_layers
        self._published: ParamSet | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._deferred: Callable[[], None] | None = None
        self._deferred_lock = threading.Lock()   # held while deferred work runs

    @property
    def published(self) -> ParamSet:
        with self._lock:
            if self._published is None:
                raise RuntimeError("no parameter set published yet")
            return self._published

    def publish(self, params: ParamSet, keep_stats: bool = False) -> None:
        """Make ``params`` the set that new forward passes pin (one reference swap).

        ``keep_stats``: keep the published set's ``bn_stats`` and ``bn_norm`` instead of
        ``params``' (an adaptation step built ``params`` from an older snapshot while
        predictions in another thread kept folding frames into the statistics)."""
        with self._lock:
            if keep_stats and self._published is not None:
                params = params.replace(bn_stats=self._published.bn_stats,
                                        bn_norm=self._published.bn_norm)
            self._published = params

    def update_stats(self, fold: Callable[[BnStats], BnStats]) -> None:
        """Replace the published set's ``bn_stats`` with ``fold(bn_stats)``, atomically
        (read-modify-write under the lock; the version is unchanged)."""
        self.update(lambda params: {"bn_stats": fold(params.bn_stats)})

    def update(self, change: Callable[[ParamSet], dict]) -> None:
        """Replace fields of the published set by ``change(published)``'s, atomically
        (read-modify-write under the lock; the version is unchanged)."""
        with self._lock:
            if self._published is None:
                raise RuntimeError("no parameter set published yet")
            self._published = self._published.replace(**change(self._published))

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` at the next :meth:`settle` (work deferred earlier runs first)."""
        self.settle()
        with self._deferred_lock:
            self._deferred = work

    def settle(self) -> None:
        """Run the deferred work, if any; when this returns it has been applied (a settle on
        another thread that got there first is waited for)."""
        with self._deferred_lock:
            work, self._deferred = self._deferred, None
            if work is not None:
                work()

    @contextmanager
    def using(self, params: ParamSet, norm: str, collect_bn: bool = False,
              collect_frames: bool = False) -> Iterator[ForwardContext]:
        """Within the block, forward passes *of this thread* use ``params`` and ``norm``."""
        ctx = ForwardContext(params, norm, {} if collect_bn else None,
                             {} if collect_frames else None)
        previous = getattr(self._local, "ctx", None)
        self._local.ctx = ctx
        try:
            yield ctx
        finally:
            self._local.ctx = previous

    def context(self) -> ForwardContext:
        """This thread's context, or the published set with the default normalisation (a
        plain ``model(x)`` call outside :meth:`using`)."""
        ctx = getattr(self._local, "ctx", None)
        return ctx if ctx is not None else ForwardContext(self.published, self.default_norm)
