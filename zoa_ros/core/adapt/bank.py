"""The domain knowledge bank (METHOD.md §4.3-4.4): save the current domain, drop the most redundant
entry when full, keep the similarity matrix correctly indexed. Every operation folds its change
into ε so that the effective affine - and therefore every output - is unchanged.

Entries are rows ``1..K`` of ``ParamSet.bank`` (row 0 is the zero source entry); the
similarity matrix is ``K x K`` over stored entries in chronological order, filled for ``i < j``
with the mean over layers of the cosine similarities of the Δγ and of the Δβ vectors. Each
entry may carry an :class:`EntryOrigin` (provenance; no effect on any output).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoa_ros.core.adapt.params import ParamLayout, ParamSet


def _compensated(params: ParamSet, bank: torch.Tensor, alpha: torch.Tensor) -> ParamSet:
    """``params`` with a new bank/α and ε chosen so that mixture + ε is unchanged."""
    mixture = torch.softmax(params.alpha_scale * alpha, dim=0) @ bank
    return params.replace(bank=bank, alpha=alpha, eps=params.delta() - mixture)


def delta_scale(params: ParamSet, layout: ParamLayout) -> float:
    """``max_l max(mean|εγ_l|, mean|εβ_l|)``."""
    return max((float(params.eps[s].abs().mean()) for s in layout.segments()), default=0.0)


def append_entry(params: ParamSet, layout: ParamLayout, weight_margin: float = 0.01,
                 alpha_clip: float = 10.0) -> ParamSet:
    """Store the current total delta as a new entry whose logit leaves ε at scale
    ``weight_margin`` (§4.3 steps 2-5)."""
    logits = params.alpha_scale * params.alpha
    s = delta_scale(params, layout) / weight_margin
    ell = math.log(s - 1) + float(torch.logsumexp(logits, dim=0)) if s > 1 else -math.inf
    ell = max(ell, float(logits.max()))
    new_alpha = min(max(ell / params.alpha_scale, -alpha_clip), alpha_clip)
    bank = torch.cat([params.bank, params.delta()[None]])
    alpha = torch.cat([params.alpha, params.alpha.new_tensor([new_alpha])])
    return _compensated(params, bank, alpha)


def remove_entry(params: ParamSet, index: int) -> ParamSet:
    """Drop stored entry ``index`` (0-based, chronological) and compensate into ε."""
    if not 0 <= index < params.entries:
        raise IndexError(f"no stored entry {index} (bank holds {params.entries})")
    keep = [i for i in range(params.entries + 1) if i != index + 1]
    return _compensated(params, params.bank[keep], params.alpha[keep])


def similarity_column(layout: ParamLayout, stored: torch.Tensor,
                      new: torch.Tensor) -> torch.Tensor:
    """Similarity of each stored entry (rows of ``stored``) with ``new``."""
    if stored.shape[0] == 0:
        return stored.new_zeros(0)
    cosines = [F.cosine_similarity(stored[:, s], new[s][None], dim=1, eps=1e-8)
               for s in layout.segments()]
    return torch.stack(cosines).mean(dim=0)


def similarity_matrix(layout: ParamLayout, entries: torch.Tensor) -> torch.Tensor:
    """The full upper-triangular matrix recomputed from scratch (for checks and loading)."""
    k = entries.shape[0]
    sim = entries.new_zeros(k, k)
    for j in range(k):
        sim[:j, j] = similarity_column(layout, entries[:j], entries[j])
    return sim


def pick_removal(sim: torch.Tensor) -> int:
    """Older entry ``i`` of the most similar pair ``i < j``; the oldest entry when there is no
    pair or no pair has positive similarity (the reference's argmax then lands on an empty cell,
    METHOD.md §9.5)."""
    k = sim.shape[0]
    if k < 2:
        return 0
    upper = torch.ones(k, k, dtype=torch.bool, device=sim.device).triu(1)
    masked = sim.masked_fill(~upper, -math.inf)
    if float(masked.max()) <= 0:
        return 0
    return int(torch.argmax(masked)) // k


def save_domain(params: ParamSet, sim: torch.Tensor, layout: ParamLayout, capacity: int,
                weight_margin: float = 0.01, alpha_clip: float = 10.0
                ) -> tuple[ParamSet, torch.Tensor, int | None]:
    """Make room if full, append the current domain, update the similarity matrix.
    Returns the new set, the new matrix and the removed entry index (or ``None``)."""
    removed = None
    if params.entries >= capacity:
        removed = pick_removal(sim)
        params = remove_entry(params, removed)
        keep = [i for i in range(sim.shape[0]) if i != removed]
        sim = sim[keep][:, keep]
    stored = params.bank[1:]
    params = append_entry(params, layout, weight_margin, alpha_clip)
    k = stored.shape[0]
    grown = sim.new_zeros(k + 1, k + 1)
    grown[:k, :k] = sim
    grown[:k, k] = similarity_column(layout, stored, params.bank[-1])
    return params, grown, removed


def utc_now() -> str:
    """The current time as ISO 8601 UTC (``2024-05-01T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class EntryOrigin:
    """Where a stored entry came from: the robot and mission that stored it, when (UTC), its
    domain number there, and the bank file it was saved to or merged from. ``pending``: stored
    during this run and not yet labelled by a save (a save labels it with the saving run's
    provenance; see :meth:`labelled`)."""

    robot: str = ""
    mission: str = ""
    created: str = ""
    domain_id: int | None = None
    source: str = ""
    pending: bool = False

    def labelled(self, provenance: Mapping[str, str], source: str) -> EntryOrigin:
        """A pending origin completed with the saving run's provenance (``robot``, falling back
        to ``writer``, and ``mission``) and the file it is saved to; others are returned as is."""
        if not self.pending:
            return self
        return dataclasses.replace(
            self, robot=str(provenance.get("robot", provenance.get("writer", ""))),
            mission=str(provenance.get("mission", "")), source=source, pending=False)

    def to_json(self) -> dict:
        return {"robot": self.robot, "mission": self.mission, "created": self.created,
                "domain_id": self.domain_id, "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping) -> EntryOrigin:
        """Parse :meth:`to_json` output; ``TypeError``/``ValueError`` if malformed."""
        if not isinstance(data, Mapping):
            raise TypeError(f"entry provenance must be an object, not {type(data).__name__}")
        domain = data.get("domain_id")
        return cls(robot=str(data.get("robot", "")), mission=str(data.get("mission", "")),
                   created=str(data.get("created", "")), source=str(data.get("source", "")),
                   domain_id=None if domain is None else int(domain))


def origins_after_save(origins: Sequence[EntryOrigin | None], removed: int | None,
                       domain_id: int) -> list[EntryOrigin | None]:
    """Entry origins after :func:`save_domain`: ``removed`` dropped, a pending origin for the
    new entry (stored now, as domain ``domain_id``) appended."""
    kept = [o for i, o in enumerate(origins) if i != removed]
    return [*kept, EntryOrigin(created=utc_now(), domain_id=domain_id, pending=True)]


@dataclass
class BankState:
    """Everything of ZOA that persists between missions (what a bank file holds)."""

    layers: list[tuple[str, str, int]]    # adapted layers: name, kind, channels
    eps: torch.Tensor                      # [P] current delta
    alpha: torch.Tensor                    # [K + 1] mixing logits (source entry first)
    entries: torch.Tensor                  # [K, P] stored domains
    similarity: torch.Tensor               # [K, K], filled for i < j
    alpha_scale: float
    detector_mean: torch.Tensor | None = None
    detector_var: torch.Tensor | None = None
    shift_h: torch.Tensor | None = None
    bn_names: tuple[str, ...] = ()
    bn_stats: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    domain_changes: int = 0
    domain_id: int = 0
    origins: tuple[EntryOrigin | None, ...] = ()   # per entry; () = all unknown
    # Streaming statistics memory (stats_recall): R remembered domains, their stem-statistics
    # keys [R, C] and per BatchNorm layer their running (mean, var), [R, channels] each.
    recall_keys: tuple[torch.Tensor, torch.Tensor] | None = None
    recall_stats: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    def entry_origins(self) -> tuple[EntryOrigin | None, ...]:
        """One origin per entry (``None`` = unknown); ``ValueError`` if ``origins`` does not
        match the entries."""
        k = self.entries.shape[0] if self.entries.dim() == 2 else 0
        if not self.origins:
            return (None,) * k
        if len(self.origins) != k:
            raise ValueError(f"{len(self.origins)} entry origins for {k} entries")
        return tuple(self.origins)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"eps": self.eps, "alpha": self.alpha, "entries": self.entries,
               "similarity": self.similarity}
        if self.detector_mean is not None:
            out["detector.mean"], out["detector.var"] = self.detector_mean, self.detector_var
        if self.shift_h is not None:
            out["shift_h"] = self.shift_h
        for i, (mean, var) in enumerate(self.bn_stats):
            out[f"bn.{i}.mean"], out[f"bn.{i}.var"] = mean, var
        if self.recall_keys is not None:
            out["recall.key_mean"], out["recall.key_var"] = self.recall_keys
            for i, (mean, var) in enumerate(self.recall_stats):
                out[f"recall.{i}.mean"], out[f"recall.{i}.var"] = mean, var
        return {k: v.detach().cpu().float().contiguous() for k, v in out.items()}
