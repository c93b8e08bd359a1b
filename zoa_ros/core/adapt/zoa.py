"""ZOA: zeroth-order test-time adaptation of a quantized model's norm affines (forward only).

Per adapted batch (METHOD.md §4.6), exactly two full forward passes:

1. unperturbed forward (this is the prediction, activation-shifted; §2.3), which also yields the
   detector statistics; domain-change detection once per batch (§4.2), which on a change saves
   the current knowledge into the bank (outputs unchanged, §4.3-4.4) and clears the shift
   history; ``L0`` from the unshifted features;
2. forward with ``ε + c·z`` and ``α + c_α·z_α`` (segmented-uniform ``z``), giving ``L+``;

then ``ĝ = (L+ − L0)/(c·z)``, SGD on ε, the closed-form sign step on α when the bank holds an
entry, the shift history update, and one atomic publish of the new parameter set (see
:mod:`.params`). :meth:`ZOA.adapt` on already-predicted frames costs 2 forwards, or 1 when the
caller passes the :class:`~.taps.ForwardRecord` s of those frames and the parameters have not
changed since (``version`` check) and their normalisation is the adaptation one (LayerNorm
models always; BatchNorm models only for a batch-statistics record of the whole batch).

BatchNorm models: adaptation forwards always normalise with the batch's statistics (as the
reference, and as the source statistics in the pack were measured). :meth:`ZOA.predict` uses
``bn_stats``: ``batch`` (the predicted batch's statistics, paper protocol) or ``running`` - a
running estimate of the test statistics, initialised from the source running buffers, so single
frames can be classified with statistics of the current domain (:mod:`.bn_stats`). With
``frame_momentum`` ρ_f > 0 (the streaming default) every predicted frame folds its own
per-layer moments into it inside the prediction's forward pass; with ρ_f = 0 every adapted
batch folds its mean and unbiased variance in with ρ = ``stats_momentum``. With
``stats_reset_on_change`` a detected domain change replaces the estimate by the adapted batch's
statistics: on by default, off in streaming mode (``streaming_defaults``), where the frames
rule follows a new domain within ~1/ρ_f frames by itself and replacing a ~100-frame estimate by
one 64-frame batch cost 0.4 points on full-length domains (docs/lab/streaming-statistics.md
§2.4f-g).
With ``stats_recall`` (streaming default) a revisited domain gets its own running estimate
back as soon as its stem statistics are recognised (:mod:`.stats_recall`).
(:meth:`ZOA.forward_and_adapt` predicts from its adaptation forward, i.e. with batch
statistics, in either mode.)

The domain detector starts empty (deployment choice, METHOD.md §9.5b); :meth:`ZOA.prime_detector`
on clean batches reproduces the reference's ResNet path. Thread model: :meth:`ZOA.predict` may
run in any thread at any time; adaptation calls are serialised by an internal lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from zoa_ros.core.adapt.bank import BankState, EntryOrigin, origins_after_save, save_domain
from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.adapt.bn_stats import (
    STREAMING_STATS,
    StatsConfig,
    check_momenta,
    fold_batch,
    frames_fold,
)
from zoa_ros.core.adapt.detector import DomainDetector
from zoa_ros.core.adapt.fused_norm import blend_source, fuse_norms
from zoa_ros.core.adapt.layer_select import select_layers
from zoa_ros.core.adapt.loss import source_statistics, zoa_loss
from zoa_ros.core.adapt.params import (
    BATCH,
    LAYER,
    RUNNING,
    SOURCE,
    BnStats,
    ParamSet,
    ParamStore,
)
from zoa_ros.core.adapt.presets import load_preset
from zoa_ros.core.adapt.shift_gate import (
    CHANGED,
    CLOSED,
    OPENED,
    SETTLED,
    GateConfig,
    ShiftGate,
)
from zoa_ros.core.adapt.spsa import first_adamw_step, segmented_uniform, sgd_step, spsa_gradient
from zoa_ros.core.adapt.stats_recall import StatsRecall
from zoa_ros.core.adapt.taps import ForwardRecord, ThreadSafeExtractor
from zoa_ros.core.model.factory import model_family
from zoa_ros.core.model.features import EarlyStats, Features
from zoa_ros.core.model.pack import ModelPack
from zoa_ros.core.model.shift_reference import entropy
from zoa_ros.core.runtime.prediction_first import StepAborted

log = logging.getLogger(__name__)

TRUSTS = ("prior", "stem")
DEEP_FROM = 0.5       # no-harm: the second half of the BatchNorms trusts by the source entropy


def log_ramp(level: float, threshold: float, span: float) -> float:
    """0 up to ``threshold``, 1 from ``span`` times it on, log-linear between (how far a
    measured level is past a calibrated threshold, for the trust in test statistics)."""
    if threshold <= 0 or level <= threshold:
        return 0.0
    return min(1.0, math.log(level / threshold) / math.log(span))


def no_harm_config(on: bool) -> dict:
    """The settings of no-harm adaptation (METHOD.md §10), or of the always-adapting streaming
    rule before it: the shift gate, new domains restarted from the source statistics, trust
    in test statistics growing with the gate's measured shift, and in the deep half of the
    BatchNorms only as far as the shift confuses the source model. ``no_harm`` in a ZOA config
    expands to these (keys given explicitly win)."""
    return {"gate": on, "restart_from_source": on, "trust": "stem" if on else "prior",
            "deep_from": DEEP_FROM if on else 1.0}

@dataclass(frozen=True)
class ZOAConfig(StatsConfig):
    """ZOA hyperparameters (METHOD.md §5) plus the BatchNorm-statistics settings shared with
    the baselines (``bn_stats`` ``batch`` or ``running``); YAML key ``lambda`` maps to ``lam``."""

    lr: float = 5e-4                    # SGD on ε
    weight_decay: float = 0.4
    momentum: float = 0.0
    spsa_c: float = 0.02                # ε perturbation scale c
    spsa_c_alpha: float = 0.05          # α perturbation scale c_α
    alpha_lr: float = 0.01
    alpha_weight_decay: float = 0.1
    alpha_scale: float = 10.0           # S
    alpha_init: float | str = 0.0       # a value, or "normal" (N(0,1) from the generator)
    alpha_clip: float = 10.0
    lam: float = 30.0                   # λ
    domain_t: float = 0.1
    detect: bool = True
    detector_momentum: float = 0.36
    detect_min_batch: int = 64
    min_adapt_batch: int = 16
    capacity: int = 32
    weight_margin: float = 0.01
    shift: bool = True
    shift_momentum: float = 0.1
    shift_step: float = 1.0
    compat_scalar_shift: bool = False
    stats_reset_on_change: bool = True
    stats_recall: bool = False          # per-domain memory of the running BN statistics
    recall_window: int = 32             # frames per stem-statistics test of that memory
    early_recall: bool = True           # with the gate: look a new domain up from its first
    #                                     few frames (the gate's fast window), confirmed once
    #                                     a window of it is in
    gate: bool = False                  # shift gate: the source model while input looks clean
    gate_window: int = 32               # frames per gate test
    gate_hop: int = 4                   # frames between gate tests
    gate_dwell: int = 4                 # frames per distinct view the gate's thresholds assume
    gate_false_alarm: float = 0.01      # gate openings per test on clean class-ordered input
    gate_entropy: bool = True           # also open on the source model's prediction entropy
    gate_probe_every: int = 256         # re-test an entropy-opened gate after this many frames
    gate_fast_source: bool = True       # the source model while the gate's newest few frames
    #                                     look clean (the gate stays open)
    gate_frame_source: bool = True      # the source model for a frame nearer the clean
    #                                     reference than the gate's newest few frames (its
    #                                     stem decides, in its own forward pass)
    gate_typical_source: bool = True    # ... and for a frame as close to clean as a typical
    #                                     clean photo while the source model was measured as
    #                                     confident on this domain as on clean input
    restart_from_source: bool = False   # a domain the memory does not know starts from source
    trust: str = "prior"                # running BN statistics: "prior" (a fixed stats_prior
    #                                     share of the source) or "stem" (grows with the gate's
    #                                     stem divergence), METHOD §10
    trust_span: float = 8.0             # "stem": full trust at this many times the threshold
    deep_from: float = 1.0              # "stem": the BatchNorms from this share of the network on
    #                                     trust test statistics only as far as the source model's
    #                                     entropy says the shift hurts it (1.0: all layers alike)
    deep_entropy_span: float = 1.5      # full deep trust at this many times the gate's clean
    #                                     entropy threshold
    entropy_samples: int = 8            # frames of each step's batch the source model classifies
    early_measure: bool = True          # ... of the current domain only, and a first step
    #                                     once 2 * gate_fast_window frames of it are in
    stats_depth: float = 1.0            # share of the BatchNorms (first in module order) that
    #                                     normalise single frames with test statistics
    layers: str | list[str] = "auto"
    block_start: int = 1
    block_end_fraction: float | None = None

    def gate_config(self) -> GateConfig:
        return GateConfig(self.gate_window, self.gate_hop, self.gate_dwell,
                          self.gate_false_alarm, self.gate_entropy, self.gate_probe_every,
                          self.gate_window // 2, fast_source=self.gate_fast_source,
                          frame_source=self.gate_frame_source)

    @classmethod
    def from_dict(cls, values: dict) -> ZOAConfig:
        values = dict(values)
        values.pop("preset", None)
        if "no_harm" in values:
            values = {**no_harm_config(bool(values.pop("no_harm"))), **values}
        if "lambda" in values:
            values["lam"] = values.pop("lambda")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ZOA settings {unknown}; known: {sorted(known)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.spsa_c <= 0 or self.spsa_c_alpha <= 0:
            raise ValueError("spsa_c and spsa_c_alpha must be > 0")
        if self.min_adapt_batch < 2 or self.detect_min_batch < 2:
            raise ValueError("min_adapt_batch and detect_min_batch must be >= 2 "
                             "(the loss and the detector use unbiased statistics)")
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if self.recall_window < 2:
            raise ValueError("recall_window must be >= 2")
        self.gate_config().validate()
        check_momenta(self.stats_momentum, self.frame_momentum, self.stats_prior)
        if self.bn_stats not in (BATCH, RUNNING):
            raise ValueError(f"bn_stats must be {BATCH!r} or {RUNNING!r}, not {self.bn_stats!r}")
        if self.trust not in TRUSTS:
            raise ValueError(f"trust must be one of {TRUSTS}, not {self.trust!r}")
        if not 0.0 <= self.deep_from <= 1.0 or self.deep_entropy_span <= 1.0 or \
                self.entropy_samples < 1:
            raise ValueError("deep_from must be in [0, 1], deep_entropy_span > 1 and "
                             "entropy_samples >= 1")
        if not (isinstance(self.alpha_init, int | float) or self.alpha_init == "normal"):
            raise ValueError(f"alpha_init must be a number or 'normal', not {self.alpha_init!r}")


@dataclass(frozen=True)
class StepInfo:
    """What one adaptation step did (``ZOA.last_step``; returned by :meth:`ZOA.adapt`)."""

    adapted: bool
    reason: str = ""                    # why no update was made
    loss: float | None = None           # L0, unperturbed
    loss_plus: float | None = None      # L+, perturbed
    changed: bool = False               # domain change detected on this batch
    divergence: float | None = None
    detection_skipped: bool = False     # batch below detect_min_batch
    removed_entry: int | None = None
    forwards: int = 0
    reused_forward: bool = False
    rolled_back: bool = False           # a non-finite loss or parameters: the step was undone


@dataclass(frozen=True)
class _Undo:
    """What a step may change besides the published set, to put back when it is rolled back."""

    similarity: torch.Tensor
    origins: list
    domain_changes: int
    domain_id: int
    detector: tuple
    momentum: torch.Tensor | None


class ZOA(AdaptMethod):
    """ZOA for LayerNorm (ViT) and BatchNorm (CNN) models; see the module docstring.

    ``config`` overrides the preset of ``(pack.family, pack.quant.name)`` from
    ``config/zoa_presets.yaml`` (``preset: false`` to use only ``config`` + built-in defaults).
    The model is modified in place (norm layers fused); use one fresh model per method.
    """

    name: ClassVar[str] = "zoa"
    streaming_defaults: ClassVar[dict] = {**STREAMING_STATS, "stats_reset_on_change": False,
                                          "stats_recall": True, "no_harm": True}

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        family = model_family(model)
        if family != pack.family:
            raise ValueError(f"model family {family!r} differs from the pack's {pack.family!r}")
        preset = load_preset(family, pack.quant.name) if config.get("preset", True) else {}
        self.cfg = ZOAConfig.from_dict({**preset, **config})
        self.family = family
        cfg = self.cfg
        names = select_layers(model, family, cfg.layers, cfg.block_start, cfg.block_end_fraction)
        self._adapt_norm = BATCH if family == "batchnorm" else LAYER
        self._predict_norm = cfg.bn_stats if family == "batchnorm" else LAYER
        self._source_norm = SOURCE if family == "batchnorm" else LAYER
        self._collect_bn = family == "batchnorm" and cfg.bn_stats == RUNNING
        self._fold_frames = self._collect_bn and cfg.frame_momentum > 0
        self.store = ParamStore(self._predict_norm, cfg.stats_prior)
        model.eval()
        self.device = next(model.parameters()).device
        fusion = fuse_norms(model, names, self.store)
        if cfg.stats_depth < 1.0:
            self.store.stats_layers = round(cfg.stats_depth * len(fusion.bn_names))
        self.layout = fusion.layout
        self.bn_names = fusion.bn_names
        self.extractor = ThreadSafeExtractor(model)
        self.classifier = model.get_classifier()
        self.source_mean, self.source_std, self.tap_sizes = source_statistics(pack, self.device)
        self._source_last = self.source_mean[-self.tap_sizes[-1]:]
        if cfg.alpha_init == "normal":
            alpha0 = torch.randn(1, generator=generator, device=generator.device)
        else:
            alpha0 = torch.tensor([float(cfg.alpha_init)])
        size = self.layout.size
        self._initial = ParamSet(
            origin=fusion.origin.to(self.device), eps=torch.zeros(size, device=self.device),
            alpha=alpha0.float().to(self.device), bank=torch.zeros(1, size, device=self.device),
            alpha_scale=float(cfg.alpha_scale),
            bn_stats=tuple((m.to(self.device), v.to(self.device)) for m, v in fusion.bn_stats))
        self.store.publish(self._initial)
        self.detector = DomainDetector(cfg.domain_t, cfg.detector_momentum, cfg.detect_min_batch)
        self.recall = StatsRecall(cfg.domain_t, cfg.detector_momentum, cfg.recall_window,
                                  cfg.capacity) if self._fold_frames and cfg.stats_recall else None
        self.gate = self._make_gate(pack)
        # (key, estimate) at each gate test while adapting, a window back: a domain as it
        # stood before the frames that ended it
        self._history: deque = deque(maxlen=cfg.gate_window // cfg.gate_hop + 1)
        # "stem" trust: the source share from the gate's stem divergence, smoothed over tests
        self._stem_trust = cfg.trust == "stem" and self._fold_frames and self.gate is not None
        self._shift_level: float | None = None
        self._since_norm = 0          # frames since bn_norm was computed
        self.source_share = 1.0       # the source statistics' share in the last bn_norm
        # deep layers: from this BatchNorm index on, trust scaled by the source model's entropy
        deep = round(cfg.deep_from * len(self.bn_names))
        self._deep_from = deep if self._stem_trust and deep < len(self.bn_names) else None
        self.deep_trust = 0.0         # 0: deep layers keep the source statistics; 1: as shallow
        self._deep_measured = False   # deep_trust measured by a step since the last event
        self._since_event = 0         # frames observed since the gate opened or changed
        # early recall: looking a new domain up until it settles, and what it recalled
        self._seeking = False
        self._early: BnStats | None = None
        self._ended: BnStats | None = None   # the domain a change just ended, as remembered
        self.early_recalls = self.undone_recalls = 0
        self.similarity = torch.zeros(0, 0, device=self.device)
        self._origins: list[EntryOrigin | None] = []    # provenance per stored entry
        # A loaded statistics memory this method does not use (stats_recall off), kept so that
        # saving the bank again does not drop it.
        self._dormant_recall: tuple = (None, ())
        self._momentum_buffer: torch.Tensor | None = None
        self._domain_changes = 0
        self._domain_id = 0
        self.last_step: StepInfo | None = None
        self._adapt_lock = threading.RLock()
        self._costs_lock = threading.Lock()

    # ---- public state ---------------------------------------------------------------------
    @property
    def params(self) -> ParamSet:
        """The published parameter set, the last observed frames folded in."""
        self.store.settle()
        return self.store.published

    @property
    def follows_frames(self) -> bool:
        return self._fold_frames

    @property
    def observes_frame_by_frame(self) -> bool:
        return self.gate is not None   # the gate's windows and tests count frames

    @property
    def step_wanted(self) -> bool:
        """``early_measure``: the domain the gate opened or changed to has had twice the gate's
        fast window of frames, and no step has measured the source model on it yet."""
        gate = self.gate
        return (self.cfg.early_measure and self._deep_from is not None and gate is not None
                and gate.adapting and not self._deep_measured
                and self._since_event >= 2 * gate.config.fast_window)

    @property
    def layer_names(self) -> list[str]:
        return self.layout.names

    @property
    def domain_changes(self) -> int:
        return self._domain_changes

    @property
    def domain_id(self) -> int:
        return self._domain_id

    def bank_summary(self) -> dict:
        params = self.store.published
        k, p = params.entries, self.layout.size
        summary = {"entries": k, "bytes": 4 * (k * p + k + 1), "capacity": self.cfg.capacity,
                   "params_per_entry": p, "layers": len(self.layout),
                   "domain_changes": self._domain_changes, "domain_id": self._domain_id}
        if self.recall is not None:
            summary.update(recall_entries=len(self.recall.entries), recalls=self.recall.recalls,
                           recall_bytes=self.recall.nbytes, recall_early=self.early_recalls,
                           recall_undone=self.undone_recalls)
        if self.gate is not None:
            summary["gate"] = self.gate.summary()
        if self._stem_trust:
            summary["source_share"] = self.source_share
            if self._deep_from is not None:
                summary["deep_trust"] = self.deep_trust
        return summary

    # ---- forward passes -------------------------------------------------------------------
    def _count(self, **amounts: int) -> None:
        with self._costs_lock:
            for key, value in amounts.items():
                setattr(self.costs, key, getattr(self.costs, key) + value)

    def _forward(self, x: torch.Tensor, params: ParamSet, norm: str, early: bool = False,
                 collect_bn: bool = False, fold: bool = False, recall: bool = False,
                 gate: bool = False, rest: bool = False) -> ForwardRecord:
        """One full forward pass of ``x`` with ``params`` pinned for this thread; ``fold``
        (``running`` normalisation) also folds these frames into the running BatchNorm
        estimate and ``gate`` hands them to the shift gate (both at the next settle);
        ``recall`` lets the statistics memory swap that estimate after the stem, ``rest`` the
        gate hand the frames to the source model there (:meth:`_rest_if_nearer_source`)."""
        x = x.to(self.device)
        on_early = self._recall if recall and self.recall is not None else None
        if rest:
            on_early = self._rest_if_nearer_source
        with torch.no_grad(), self.store.using(params, norm, collect_bn, fold) as ctx:
            features, early_stats = self.extractor.run(x, early=early or gate,
                                                       on_early=on_early)
            logits = self._shifted_logits(features, ctx.params)
        rested = rest and ctx.params is self._initial
        work = []
        if ctx.frame_sink:
            work.append(frames_fold(self.store, ctx.frame_sink, self.cfg.frame_momentum))
            if self._stem_trust:
                work.append(lambda: self._folded_frames(x.shape[0]))
        if gate and self.gate is not None and early_stats is not None:
            work.append(lambda: self._gate_observe(early_stats, logits, rested))
        if work:
            self.store.defer(lambda: [step() for step in work])
        self._count(forward_passes=1)
        return ForwardRecord(features, logits, early_stats, ctx.bn_sink, ctx.params.version,
                             ctx.norm)

    def _predict(self, x: torch.Tensor, observe: bool) -> ForwardRecord:
        """The prediction forward with the published set - or, while the shift gate says the
        input looks like the source, with the source model; ``observe`` (frames offered for
        adaptation) also yields the detector statistics, feeds the gate and, with the *frames*
        statistics rule, folds the frames into the running BatchNorm estimate (at the next
        :meth:`settle`)."""
        self.store.settle()
        adapting = self.gate is None or self.gate.adapting
        params, norm = (self.store.published, self._predict_norm) if adapting else \
            (self._initial, self._source_norm)
        rec = self._forward(x, params, norm, early=observe,
                            fold=observe and self._fold_frames and adapting,
                            recall=observe and self.gate is None, gate=observe,
                            rest=observe and adapting and self.gate is not None)
        self._count(frames_predicted=x.shape[0])
        return rec

    def prediction_params(self) -> tuple[ParamSet, str]:
        """The parameter set and normalisation a prediction would use now (the source model's
        while the shift gate is closed): what another runtime must reproduce per BatchNorm."""
        self.store.settle()
        if self.gate is None or self.gate.adapting:
            return self.store.published, self._predict_norm
        return self._initial, self._source_norm

    def _make_gate(self, pack: ModelPack) -> ShiftGate | None:
        if not self.cfg.gate:
            return None
        if pack.shift_reference is None:
            log.warning("the pack has no clean reference for the shift gate (it was calibrated "
                        "before the gate existed): adapting without it; recalibrate the pack "
                        "with 'zoa-ros calibrate' for no-harm adaptation")
            return None
        return ShiftGate(pack.shift_reference, self.cfg.gate_config())

    def _folded_frames(self, frames: int) -> None:
        """Deferred work after a fold: every ``gate_hop`` frames recompute what the BatchNorms
        normalise with."""
        self._since_norm += frames
        if self._since_norm >= self.cfg.gate_hop:
            self._refresh_norm()

    def _refresh_norm(self) -> None:
        """"stem" trust: every BatchNorm normalises with the source statistics and the running
        estimate blended at the source share :meth:`_stem_share` (for a shift only the entropy
        test saw, at most ``1 − (1 − stats_prior) · deep_trust``); with ``deep_from`` the deep
        ones at ``1 − (1 − w) · deep_trust`` (:meth:`_measure_deep_trust`)."""
        self._since_norm = 0
        w = self._stem_share()
        if not self.gate.stem_sees:
            # a shift the stem statistics do not show (the gate opened on the source model's
            # entropy): every layer trusts test statistics as far as the shift confuses it
            w = min(w, 1.0 - (1.0 - self.cfg.stats_prior) * self.deep_trust)
        self.source_share = w
        deep = 1.0 - (1.0 - w) * self.deep_trust
        first = len(self.bn_names) if self._deep_from is None else self._deep_from
        norm = tuple(blend_source(m, v, sm, sv, w if i < first else deep)
                     for i, ((m, v), (sm, sv)) in enumerate(
                         zip(self.store.published.bn_stats, self._initial.bn_stats, strict=True)))
        self.store.update(lambda _params: {"bn_norm": norm})

    def _measure_deep_trust(self, x: torch.Tensor) -> None:
        """How much the shift hurts the source model, from its mean prediction entropy on
        ``entropy_samples`` frames of a step's batch spread over it (with ``early_measure`` over
        its frames of the current domain: :func:`measured_frames`): 0 up to the gate's clean
        entropy threshold, 1 at ``deep_entropy_span`` times it, log-linear between. Applied at
        the next recomputation of the normalisation."""
        picked = measured_frames(x.shape[0], self.cfg.entropy_samples,
                                 self._since_event if self.cfg.early_measure else None)
        if picked is None:
            return      # too few of the current domain's frames yet: keep the last measurement
        rec = self._forward(x[picked], self._initial, self._source_norm)
        self.deep_trust = log_ramp(float(entropy(rec.logits).mean()),
                                   self.gate.entropy_threshold, self.cfg.deep_entropy_span)
        self._deep_measured = True

    def _stem_share(self) -> float:
        """"stem" trust: the source share falls from 1 at the gate's opening threshold to
        ``stats_prior`` at ``trust_span`` times it, log-linearly in the smoothed divergence."""
        level = self._shift_level
        ramp = 0.0 if level is None else log_ramp(level, self.gate.stem_threshold,
                                                  self.cfg.trust_span)
        return 1.0 - (1.0 - self.cfg.stats_prior) * ramp

    def _restart_stats(self, stats: BnStats | None) -> None:
        """Continue from ``stats`` (``None``: the source statistics; else a remembered
        estimate)."""
        stats = self._initial.bn_stats if stats is None else stats
        self.store.update_stats(lambda _current: stats)
        if self._stem_trust:
            self._refresh_norm()

    def _rest_if_nearer_source(self, early: EarlyStats, frames: int) -> None:
        """Stem hook of an adapting prediction: frames nearer the clean reference than the
        gate's newest few frames, or as close to it as a typical clean photo while the source
        model is confident (:meth:`ShiftGate.nearer_source`, :meth:`_source_confident`), go on
        as the source model's, bit for bit as while the gate is closed, and are not folded."""
        if self.gate.nearer_source(early, typical=self._source_confident()):
            ctx = self.store.context()
            ctx.params, ctx.norm, ctx.frame_sink = self._initial, self._source_norm, None

    def _source_confident(self) -> bool:
        """``gate_typical_source``: a step measured, since the domain began, that the source
        model is as confident on it as on clean input (deep trust 0, METHOD §10): a frame that
        looks like a typical clean photo is then the source model's too. Before that first
        measurement the domain may be one (noise) whose single frames look clean."""
        return self.cfg.gate_typical_source and self._deep_measured and self.deep_trust == 0.0

    def _gate_observe(self, stem: EarlyStats, logits: torch.Tensor,
                      rested: bool = False) -> None:
        """Deferred work of an observed prediction: the gate's test, and what its events do
        to the statistics and the memory (METHOD.md §10): a new domain restarts from the source
        statistics or a remembered domain's; a domain that ends is remembered."""
        gate = self.gate
        tests = gate.tests
        event = gate.observe(stem, float(entropy(logits).mean()), rested)
        self._since_event += logits.shape[0]
        if gate.tests != tests and gate.open:   # each test while adapting: the history
            self._history.append((gate.key(), self.store.published.bn_stats))
            level, d = self._shift_level, gate.last_divergence
            self._shift_level = d if level is None else 0.75 * level + 0.25 * d
            if event is None and self._seeking:
                self._recall_early()
        if event is None:
            return
        log.info("shift gate %s (stem divergence %s, threshold %.3f; entropy %s, threshold "
                 "%.3f; change %s, threshold %.3f)", event, _num(gate.last_divergence),
                 gate.stem_threshold, _num(gate.last_entropy), gate.entropy_threshold,
                 _num(gate.last_change), gate.change_threshold)
        if event in (CLOSED, CHANGED):
            self._remember_domain()
        if event == OPENED:   # from the source model: nothing ended; the deep layers keep the
            self.deep_trust, self._ended = 0.0, None   # source statistics until a step measures
        if event in (OPENED, CHANGED):
            self._deep_measured, self._since_event = False, 0
            self._shift_level = gate.last_divergence
            self._enter_domain()
            self._seeking = self.recall is not None and self.cfg.early_recall
        elif event == SETTLED and self.recall is not None:
            self._recall_domain(gate.key())
        elif event == CLOSED:
            self._seeking, self._early = False, None

    def _remember_domain(self) -> None:
        """The domain that just ended, as it stood a window before (its first frames of the
        new input not yet in), goes into the statistics memory."""
        self._ended = None
        if self.recall is not None and len(self._history) == self._history.maxlen:
            key, stats = self._history[0]
            if key is not None:
                self._ended = self.recall.remember(key, stats, self.gate.change_threshold)
        self._history.clear()

    def _enter_domain(self) -> None:
        """A new shifted domain: the source statistics to start from, no shift history. Its
        frames so far are few, or mixed with the previous input's: the memory is asked once a
        window holds only the new domain (``settled``)."""
        if self.cfg.restart_from_source:
            self._restart_stats(None)
        params = self.store.published
        self.store.publish(params.replace(shift_h=None, version=params.version + 1),
                           keep_stats=True)

    def _recall_early(self) -> None:
        """Until the new domain settles: once its newest ``gate_fast_window`` frames alone
        look shifted, look them up at the gate's threshold for that few images; a remembered
        domain normalises from then on, ~a window earlier than :meth:`_recall_domain`. After a
        change, the domain that just ended is left out: the gate has just told them apart."""
        key = self.gate.fast_key()
        stats = None if key is None else self.recall.find(key, self.gate.fast_threshold,
                                                          skip=self._ended)
        if stats is None:
            return
        self._seeking, self._early = False, stats
        self.early_recalls += 1
        self._restart_stats(stats)
        log.info("recalled the BatchNorm statistics of a known domain early (%d stored)",
                 len(self.recall.entries))

    def _recall_domain(self, key: tuple | None) -> None:
        """A window of the new domain is in: look it up at the change threshold. An early
        recall it does not confirm is undone (another domain's statistics, or the source's)."""
        early, self._early, self._seeking = self._early, None, False
        stats = None if key is None else self.recall.find(key, self.gate.change_threshold,
                                                          early)
        if stats is not None and stats is early:
            return
        if stats is None and early is not None:
            self.undone_recalls += 1
            self._restart_stats(None)
            log.info("an early recall was not confirmed: back to the source statistics")
        elif stats is not None:
            self._restart_stats(stats)
            log.info("recalled the BatchNorm statistics of a known domain (%d stored)",
                     len(self.recall.entries))

    def _recall(self, early: EarlyStats, frames: int) -> None:
        """Stem hook of an observed prediction: on a change to a remembered domain, normalise
        this forward pass and the following ones with that domain's statistics (a domain the
        memory does not know starts from the source ones with ``restart_from_source``)."""
        ctx = self.store.context()
        restart = self._initial.bn_stats if self.cfg.restart_from_source else None
        stats = self.recall.observe(early, frames, ctx.params.bn_stats, restart)
        if stats is None:
            return
        ctx.params = ctx.params.replace(bn_stats=stats)
        self.store.update_stats(lambda _current: stats)
        log.info("%s the BatchNorm statistics (%d domains stored)",
                 "restarted" if stats is restart else "recalled", len(self.recall.entries))

    def _shifted_logits(self, features: Features, params: ParamSet) -> torch.Tensor:
        shift = self._shift(params)
        return features.logits if shift is None else self.classifier(features.pre_logits + shift)

    def _shift(self, params: ParamSet) -> torch.Tensor | None:
        if not self.cfg.shift or params.shift_h is None:
            return None
        target = self._source_last[-1] if self.cfg.compat_scalar_shift else self._source_last
        return self.cfg.shift_step * (target - params.shift_h)

    def pre_logits_shift(self) -> torch.Tensor | None:
        """The activation shift predictions add to the pre-logits feature now (``None``: none,
        e.g. while the shift gate keeps the source model), for runtimes that classify with the
        prediction's parameters elsewhere (:meth:`prediction_params`)."""
        return self._shift(self.prediction_params()[0])

    def _loss(self, features: Features) -> torch.Tensor:
        return zoa_loss(features, self.source_mean, self.source_std, self.tap_sizes,
                        self.cfg.lam).total

    def loss_of(self, x: torch.Tensor) -> float:
        """Diagnostic: the objective on ``x`` with the published parameters (one forward)."""
        rec = self._forward(x, self.store.published, self._adapt_norm)
        return float(self._loss(rec.features))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x, observe=False).logits

    def settle(self) -> None:
        self.store.settle()

    def predict_with_record(self, x: torch.Tensor) -> tuple[torch.Tensor, ForwardRecord]:
        """:meth:`predict` plus the record :meth:`adapt` can reuse (same single forward)."""
        rec = self._predict(x, observe=True)
        return rec.logits, rec

    # ---- adaptation -----------------------------------------------------------------------
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``x`` (forward 1), then adapt on it (forward 2): two forwards in total."""
        with self._adapt_lock:
            rec = self._forward(x, self.store.published, self._adapt_norm, early=True,
                                collect_bn=self._collect_bn)
            self._count(frames_predicted=x.shape[0])
            self._step(x, rec, forwards=1, reused=False)
        return rec.logits

    def adapt(self, x: torch.Tensor,
              cached: ForwardRecord | Sequence[ForwardRecord] | None = None) -> StepInfo:
        """One step on already-predicted frames ``x``: 2 forwards, or 1 when ``cached`` (the
        record(s) from :meth:`predict_with_record` for exactly these frames, in order) is still
        valid - same parameter version, adaptation normalisation, same batch size. Invalid
        records are ignored (never an error). The caller guarantees they belong to ``x``.
        None while the shift gate is closed (the input looks like the source)."""
        with self._adapt_lock:
            if self.gate is not None and not self.gate.adapting:
                info = StepInfo(False, "the input looks like the source (shift gate closed)")
                self.last_step = info
                return info
            if self._deep_from is not None:
                self._measure_deep_trust(x)
            rec = self._reusable(cached, x.shape[0])
            if rec is not None:
                return self._step(x, rec, forwards=0, reused=True)
            rec = self._forward(x, self.store.published, self._adapt_norm, early=True,
                                collect_bn=self._collect_bn)
            return self._step(x, rec, forwards=1, reused=False)

    def _reusable(self, cached: ForwardRecord | Sequence[ForwardRecord] | None,
                  batch_size: int) -> ForwardRecord | None:
        if cached is None:
            return None
        records = [cached] if isinstance(cached, ForwardRecord) else list(cached)
        if not records or not all(isinstance(r, ForwardRecord) for r in records):
            return None
        rec = ForwardRecord.cat(records)
        if (rec is None or rec.version != self.store.published.version
                or rec.norm != self._adapt_norm or rec.batch_size != batch_size
                or rec.early is None or (self._collect_bn and rec.bn_stats is None)):
            return None
        return rec

    def _step(self, x: torch.Tensor, rec: ForwardRecord, forwards: int,
              reused: bool) -> StepInfo:
        cfg = self.cfg
        batch = rec.batch_size
        if batch < cfg.min_adapt_batch:
            info = StepInfo(False, f"batch of {batch} < min_adapt_batch {cfg.min_adapt_batch}",
                            forwards=forwards, reused_forward=reused)
            log.debug("adaptation skipped: %s", info.reason)
            self.last_step = info
            return info
        before = self.store.published
        undo = _Undo(self.similarity, list(self._origins), self._domain_changes, self._domain_id,
                     (self.detector.mean, self.detector.var), self._momentum_buffer)
        try:
            return self._update(x, rec, before, undo, forwards, reused)
        except StepAborted:   # at a layer of the probe forward: nothing may stay half done
            self._restore(before, undo)
            raise

    def _update(self, x: torch.Tensor, rec: ForwardRecord, params: ParamSet, undo: _Undo,
                forwards: int, reused: bool) -> StepInfo:
        """The step proper on ``rec`` (the unperturbed forward of ``x``) from ``params``: detection,
        the probe forward, the update, and its publication or roll-back."""
        cfg = self.cfg
        batch = rec.batch_size
        before = params
        changed, divergence, skipped, removed = False, None, False, None
        if cfg.detect and rec.early is not None:
            det = self.detector.observe(rec.early.mean.to(self.device),
                                        rec.early.var.to(self.device), batch)
            changed, divergence, skipped = det.changed, det.divergence, det.skipped
            if changed:
                params, removed = self._save_domain(params)
                log.info("domain change %d detected (divergence %.3f > %.3f); bank holds %d "
                         "entries%s", self._domain_changes, divergence, cfg.domain_t,
                         params.entries, "" if removed is None else f", removed entry {removed}")
            elif skipped:
                log.debug("domain detection skipped: batch of %d < %d", batch,
                          cfg.detect_min_batch)
        loss0 = self._loss(rec.features)
        z = segmented_uniform(self.layout.size, self.generator, self.device)
        z_alpha = segmented_uniform(params.alpha.numel(), self.generator, self.device)
        probe = params.replace(eps=params.eps + cfg.spsa_c * z,
                               alpha=params.alpha + cfg.spsa_c_alpha * z_alpha)
        plus = self._forward(x, probe, self._adapt_norm)
        loss_plus = self._loss(plus.features)
        forwards += 1
        l0, lp = float(loss0), float(loss_plus)
        updates: dict = {}
        finite = math.isfinite(l0) and math.isfinite(lp)
        if finite:
            grad = spsa_gradient(loss0, loss_plus, z, cfg.spsa_c)
            updates["eps"], self._momentum_buffer = sgd_step(
                params.eps, grad, cfg.lr, cfg.weight_decay, cfg.momentum, self._momentum_buffer)
            if params.entries >= 1:
                grad_alpha = spsa_gradient(loss0, loss_plus, z_alpha, cfg.spsa_c_alpha)
                updates["alpha"] = first_adamw_step(params.alpha, grad_alpha, cfg.alpha_lr,
                                                    cfg.alpha_weight_decay)
            if self._collect_bn and rec.bn_stats is not None:
                reset = changed and cfg.stats_reset_on_change
                if reset or not self._fold_frames:
                    rho = 1.0 if reset else cfg.stats_momentum
                    updates["bn_stats"] = fold_batch(params.bn_stats, rec.bn_stats, rho)
            if cfg.shift:
                g_last = rec.features.pre_logits.mean(dim=0)
                h = params.shift_h
                updates["shift_h"] = g_last if h is None else \
                    (1 - cfg.shift_momentum) * h + cfg.shift_momentum * g_last
        new = params.replace(**updates, version=params.version + 1)
        problem = (f"non-finite loss (L0 {l0}, L+ {lp})" if not finite
                   else _non_finite_parameters(new))
        if problem:
            info = self._roll_back(before, undo, problem, l0, lp, forwards, reused)
            self.last_step = info
            return info
        # Predictions in other threads may have folded frames into the statistics meanwhile.
        self.store.publish(new, keep_stats="bn_stats" not in updates)
        self._count(adapt_steps=1, frames_adapted=batch)
        info = StepInfo(True, "", l0, lp, changed, divergence, skipped, removed, forwards,
                        reused)
        self.last_step = info
        return info

    def _roll_back(self, before: ParamSet, undo: _Undo, problem: str, l0: float, lp: float,
                   forwards: int, reused: bool) -> StepInfo:
        """Undo a step that left something non-finite (:meth:`_restore`) and say so."""
        self._restore(before, undo)
        log.warning("ZOA step rolled back: %s", problem)
        return StepInfo(False, f"rolled back: {problem}", l0, lp, forwards=forwards,
                        reused_forward=reused, rolled_back=True)

    def _restore(self, before: ParamSet, undo: _Undo) -> None:
        """The parameters, the bank, the detector and the counters as they were before a step
        (frames folded into the running statistics meanwhile stay), published as a new
        version."""
        self.similarity, self._origins = undo.similarity, undo.origins
        self._domain_changes, self._domain_id = undo.domain_changes, undo.domain_id
        self.detector.mean, self.detector.var = undo.detector
        self._momentum_buffer = undo.momentum
        self.store.publish(before.replace(version=self.store.published.version + 1),
                           keep_stats=True)

    def _save_domain(self, params: ParamSet) -> tuple[ParamSet, int | None]:
        """Bank the current knowledge (outputs unchanged), clear the shift history."""
        params, self.similarity, removed = save_domain(
            params, self.similarity, self.layout, self.cfg.capacity, self.cfg.weight_margin,
            self.cfg.alpha_clip)
        self._origins = origins_after_save(self._origins, removed, self._domain_id)
        self._domain_changes += 1
        self._domain_id += 1
        return params.replace(shift_h=None), removed

    def prime_detector(self, x: torch.Tensor) -> None:
        """Fold a clean batch into the domain detector without adapting (one forward).

        The detector normally starts empty (deployment choice, METHOD.md §9.5b); priming it on clean
        batches reproduces the reference's ResNet path, whose first corrupted batch then
        registers as a change.
        """
        with self._adapt_lock:
            rec = self._forward(x, self.store.published, self._adapt_norm, early=True)
            self.detector.update(rec.early.mean, rec.early.var)

    def mark_domain_change(self) -> int | None:
        """Declare a domain change now (e.g. an operator's "new environment"): bank the current
        knowledge, clear the detector and shift history. Returns the removed entry, if any."""
        with self._adapt_lock:
            params, removed = self._save_domain(self.store.published)
            self.detector.clear()
            self.store.publish(params.replace(version=params.version + 1), keep_stats=True)
            return removed

    def reset(self) -> None:
        self.store.settle()
        with self._adapt_lock:
            version = self.store.published.version + 1
            self.store.publish(self._initial.replace(version=version))
            self.detector.clear()
            if self.recall is not None:
                self.recall.clear()
            if self.gate is not None:
                self.gate.reset()
            self._since_norm, self.source_share, self.deep_trust = 0, 1.0, 0.0
            self._deep_measured, self._since_event = False, 0
            self._seeking, self._early, self._ended = False, None, None
            self.early_recalls = self.undone_recalls = 0
            self._history.clear()
            self._dormant_recall = (None, ())
            self.similarity = torch.zeros(0, 0, device=self.device)
            self._origins = []
            self._momentum_buffer = None
            self._domain_changes = self._domain_id = 0
            self.last_step = None

    # ---- persistence ----------------------------------------------------------------------
    def export_bank(self) -> BankState:
        """A consistent snapshot of the persistent state (for :mod:`zoa_ros.core.bank.file`)."""
        self.store.settle()
        with self._adapt_lock:
            p = self.store.published
            keys, recall = self._dormant_recall if self.recall is None else self.recall.export()
            return BankState(
                layers=self.layout.describe(), eps=p.eps.clone(), alpha=p.alpha.clone(),
                entries=p.bank[1:].clone(), similarity=self.similarity.clone(),
                alpha_scale=p.alpha_scale,
                detector_mean=None if self.detector.mean is None else self.detector.mean.clone(),
                detector_var=None if self.detector.var is None else self.detector.var.clone(),
                shift_h=None if p.shift_h is None else p.shift_h.clone(),
                bn_names=tuple(self.bn_names),
                bn_stats=tuple((m.clone(), v.clone()) for m, v in p.bn_stats),
                domain_changes=self._domain_changes, domain_id=self._domain_id,
                origins=tuple(self._origins) if len(self._origins) == p.entries else (),
                recall_keys=None if keys is None else (keys[0].clone(), keys[1].clone()),
                recall_stats=tuple((m.clone(), v.clone()) for m, v in recall))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.export_bank().tensors()

    def import_bank(self, state: BankState) -> None:
        """Validate ``state`` against this method, then swap it in atomically; on any mismatch
        raise ``ValueError`` and leave the running state untouched."""
        params = self._validated(state)
        recall = self._validated_recall(state)
        self.store.settle()
        with self._adapt_lock:
            if self.recall is None:
                self._dormant_recall = recall
            else:
                self.recall.load(*recall)
            params = params.replace(version=self.store.published.version + 1)
            det_mean, det_var = state.detector_mean, state.detector_var
            self.detector.mean = None if det_mean is None else det_mean.float().to(self.device)
            self.detector.var = None if det_var is None else det_var.float().to(self.device)
            self.similarity = state.similarity.float().to(self.device)
            self._origins = list(state.entry_origins())
            self._momentum_buffer = None
            self._domain_changes, self._domain_id = state.domain_changes, state.domain_id
            self._since_norm = self.cfg.gate_hop   # bn_norm recomputed at the next fold
            self.store.publish(params)

    def _validated_recall(self, state: BankState) -> tuple:
        """The bank's statistics memory on this method's device, or ``ValueError``."""
        if state.recall_keys is None:
            return None, ()
        mean, var = state.recall_keys
        r, c = mean.shape[0] if mean.dim() == 2 else -1, self.extractor.early_channels
        expect = {"recall.key_mean": (mean, (r, c)), "recall.key_var": (var, (r, c))}
        if len(state.recall_stats) != len(self.bn_names):
            raise ValueError(f"bank statistics memory covers {len(state.recall_stats)} "
                             f"BatchNorm layers, this model has {len(self.bn_names)}")
        for i, (m, v) in enumerate(state.recall_stats):
            n = self._initial.bn_stats[i][0].numel()
            expect[f"recall.{i}.mean"], expect[f"recall.{i}.var"] = (m, (r, n)), (v, (r, n))
        _check_tensors(expect, valid=r >= 0)
        dev = self.device
        return ((mean.float().to(dev), var.float().to(dev)),
                tuple((m.float().to(dev), v.float().to(dev)) for m, v in state.recall_stats))

    def _validated(self, state: BankState) -> ParamSet:
        mine = [tuple(x) for x in self.layout.describe()]
        theirs = [tuple(x) for x in state.layers]
        if theirs != mine:
            diff = next((f"{a} vs {b}" for a, b in zip(theirs, mine, strict=False) if a != b),
                        f"{len(theirs)} vs {len(mine)} layers")
            raise ValueError(f"bank adapts other layers than this method ({diff}); "
                             "use the same 'layers' settings or start a new bank")
        if float(state.alpha_scale) != float(self.cfg.alpha_scale):
            raise ValueError(f"bank alpha_scale {state.alpha_scale} != configured "
                             f"{self.cfg.alpha_scale}")
        p, k = self.layout.size, state.entries.shape[0] if state.entries.dim() == 2 else -1
        expect = {"eps": (state.eps, (p,)), "entries": (state.entries, (k, p)),
                  "alpha": (state.alpha, (k + 1,)), "similarity": (state.similarity, (k, k))}
        if state.shift_h is not None:
            expect["shift_h"] = (state.shift_h, (self.tap_sizes[-1],))
        if (state.detector_mean is None) != (state.detector_var is None):
            raise ValueError("bank has only half of the detector state")
        if state.detector_mean is not None:
            c = self.extractor.early_channels
            expect["detector.mean"] = (state.detector_mean, (c,))
            expect["detector.var"] = (state.detector_var, (c,))
        source_bn = not state.bn_names and not state.bn_stats   # e.g. a merged bank
        if not source_bn and (tuple(state.bn_names) != tuple(self.bn_names)
                              or len(state.bn_stats) != len(self.bn_names)):
            raise ValueError("bank BatchNorm layers differ from this model's")
        for i, (m, v) in enumerate(state.bn_stats):
            n = self.store.published.bn_stats[i][0].numel()
            expect[f"bn.{i}.mean"], expect[f"bn.{i}.var"] = (m, (n,)), (v, (n,))
        _check_tensors(expect, valid=k >= 0)
        if k > self.cfg.capacity:
            raise ValueError(f"bank holds {k} entries but capacity is {self.cfg.capacity}; "
                             "raise 'capacity'")
        state.entry_origins()   # ValueError unless one origin per entry (or none)
        dev = self.device
        bank = torch.cat([torch.zeros(1, p, device=dev), state.entries.float().to(dev)])
        return self._initial.replace(
            eps=state.eps.float().to(dev), alpha=state.alpha.float().to(dev), bank=bank,
            shift_h=None if state.shift_h is None else state.shift_h.float().to(dev),
            bn_stats=self._initial.bn_stats if source_bn else
            tuple((m.float().to(dev), v.float().to(dev)) for m, v in state.bn_stats))


def _non_finite_parameters(params: ParamSet) -> str:
    """What in ``params`` is not finite ("" when all of it is)."""
    named = {"eps": params.eps, "alpha": params.alpha, "bank": params.bank,
             "shift_h": params.shift_h}
    for i, (mean, var) in enumerate(params.bn_stats):
        named[f"bn_stats[{i}].mean"], named[f"bn_stats[{i}].var"] = mean, var
    bad = [name for name, t in named.items() if t is not None and not torch.isfinite(t).all()]
    return f"non-finite parameters ({', '.join(bad)})" if bad else ""


def measured_frames(batch: int, samples: int, current: int | None = None) -> torch.Tensor | None:
    """Indices of the frames of a step's batch (oldest first) the source model classifies to
    measure the deep trust: ``samples`` spread evenly over the batch or, when ``current`` says
    how many of the newest frames belong to the current domain, over those alone; ``None``
    while fewer than half of ``samples`` do (the previous domain's frames would decide)."""
    n = batch if current is None else min(batch, current)
    if n < max(1, samples // 2):
        return None
    return torch.linspace(batch - n, batch - 1, min(samples, n)).round().long()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _check_tensors(expect: dict[str, tuple[torch.Tensor, tuple[int, ...]]],
                   valid: bool = True) -> None:
    """``ValueError`` naming the first bank tensor of ``expect`` (name -> (tensor, shape)) with
    another shape or a non-finite value; ``valid`` False (the entry count itself is malformed)
    fails on the first tensor."""
    for key, (tensor, shape) in expect.items():
        if not valid or tuple(tensor.shape) != shape:
            raise ValueError(f"bank tensor {key!r} has shape {tuple(tensor.shape)}, "
                             f"expected {shape}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"bank tensor {key!r} holds non-finite values")
