"""FOA: forward-only adaptation of input prompts by CMA-ES, with activation shifting (METHOD.md §7).

What is optimised (the model's parameters never change):

* **ViT** - ``num_prompts`` (3) prompt tokens inserted right after the CLS token, after the
  positional embedding (see :class:`~.prompts.PromptTokens`); 3 x 768 = 2,304 dims for ViT-B.
  Initial prompts: VPT's uniform init; CMA-ES mean 0.
* **CNN** - a residual 7x7 convolution 3->3 on the input, ``x' = x + conv(x)`` (441 dims),
  Kaiming-normal (fan-out) init; CMA-ES starts from those weights. This project's stem has no
  input fake-quantizer (weight-only), so the convolution sees the normalised image.
  BatchNorm normalises with the batch's statistics (``bn_stats`` for :meth:`FOA.predict`).

Per adapted batch (``popsize + 1`` forward passes, one per candidate): ``popsize`` candidates from
``es.ask()`` plus the previous batch's best prompt; fitness (lower is better), from *unshifted*
outputs and the pack's source statistics over all feature taps:

* ViT: ``Σ_b H(softmax(logits_b)) + λ·(B/64)·Σ_dims[(σ_T − σ_S)² + (μ_T − μ_S)²]`` (FOA's code);
* CNN: ZOA-ResNet's form (METHOD.md §2.2) - ``mean_b H + λ·mean_s[MSE(σ) + MSE(μ)]``;

λ = ``fitness_lambda`` (0.4). All ``popsize + 1`` (solution, fitness) pairs go to ``es.tell``; the
lowest-fitness candidate becomes the new best prompt and its logits, activation-shifted with the
history *before* this batch (``head(f + γ·(μ_S,last − h))``, none while ``h`` is unset), are the
batch's prediction. ``h`` takes the mean over all candidates of their last-feature batch means:
``h ← m`` first, then ``h ← 0.9·h + 0.1·m``.

CMA-ES is pycma's ``CMAEvolutionStrategy`` (σ0 = 1; popsize ``⌊4 + 3 ln dim⌋`` for ViT = 27 at
ViT-B, the reference's fixed 27 for CNNs; ``popsize`` overrides). Randomness: an integer seed is
drawn once from the method's ``torch.Generator`` and seeds a private numpy ``Generator`` passed as
pycma's ``randn`` option (pycma's ``seed`` option would reseed numpy's *global* RNG, which any
other code in the process may draw from between batches); so runs are deterministic per seed.
Protocol: continual (no reset between domains), unlike FOA's episodic per-corruption resets.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import cma
import numpy as np
import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.adapt.bn_stats import (
    SOURCE,
    STREAMING_REASON,
    STREAMING_STATS,
    BatchNormStats,
    StatsConfig,
    check_mode,
)
from zoa_ros.core.adapt.common import CostCounter, config_from_dict, entropy_per_sample
from zoa_ros.core.adapt.loss import source_statistics, zoa_loss
from zoa_ros.core.adapt.params import BATCH, RUNNING
from zoa_ros.core.adapt.prompts import InputConvPrompt, PromptTokens
from zoa_ros.core.adapt.taps import ThreadSafeExtractor
from zoa_ros.core.model.factory import model_family
from zoa_ros.core.model.features import Features
from zoa_ros.core.model.pack import ModelPack

log = logging.getLogger(__name__)

CNN_POPSIZE = 27        # the reference's --popsize default, used for the CNN variant


@dataclass(frozen=True)
class FOAConfig(StatsConfig):
    num_prompts: int = 3            # ViT prompt tokens
    kernel: int = 7                 # CNN prompt convolution size
    popsize: int | None = None      # None: ⌊4 + 3 ln dim⌋ (ViT), 27 (CNN)
    sigma0: float = 1.0
    fitness_lambda: float = 0.4
    fitness_batch_ref: int = 64     # the B/64 of FOA's ViT fitness
    shift: bool = True
    shift_momentum: float = 0.1
    shift_step: float = 1.0
    compat_scalar_shift: bool = False   # reference's CNN quirk: shift by the last source scalar
    min_adapt_batch: int = 16       # smaller batches are predicted, not adapted on

    def validate(self) -> None:
        if check_mode(self.bn_stats) == SOURCE:
            raise ValueError("foa: bn_stats must be 'batch' or 'running'")
        if self.num_prompts < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("foa: num_prompts must be >= 1 and kernel odd")
        if self.popsize is not None and self.popsize < 2:
            raise ValueError("foa: popsize must be >= 2")
        if self.sigma0 <= 0 or self.min_adapt_batch < 2:
            raise ValueError("foa: sigma0 must be > 0 and min_adapt_batch >= 2 (unbiased std)")


@dataclass(frozen=True, eq=False)
class FOAState:
    """What predictions read, published by one reference swap: the best prompt (flat, float32
    on the model's device, plus its float64 copy for CMA-ES) and the shift history ``h``."""

    best: torch.Tensor
    best_np: np.ndarray
    shift_h: torch.Tensor | None = None
    version: int = 0


@dataclass(frozen=True)
class FOAStep:
    """What one step did (``FOA.last_step``)."""

    fitness: list[float]            # per candidate, the previous best last
    best_index: int
    best_fitness: float
    forwards: int


def default_popsize(dim: int) -> int:
    return math.floor(4 + 3 * math.log(dim))


class FOA(AdaptMethod):
    """FOA with CMA-ES over input prompts; see the module docstring."""

    name: ClassVar[str] = "foa"
    streaming_defaults: ClassVar[dict] = STREAMING_STATS

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        super().__init__(model, pack, config, generator)
        self.cfg = cfg = config_from_dict(FOAConfig, config, self.name)
        model.eval()
        self.device = next(model.parameters()).device
        self.family = model_family(model)
        self.stats = BatchNormStats.from_config(model, cfg)
        self.extractor = ThreadSafeExtractor(model)
        self.classifier = model.get_classifier()
        if self.family == "layernorm":
            self.tokens: PromptTokens | None = PromptTokens(model)
            self.conv: InputConvPrompt | None = None
            self.prompt_shape: tuple[int, ...] = (cfg.num_prompts, self.tokens.embed_dim)
            initial = self.tokens.init(cfg.num_prompts, generator, self.device)
            mean0 = np.zeros(initial.numel())
            popsize = cfg.popsize or default_popsize(initial.numel())
        else:
            self.tokens, self.conv = None, InputConvPrompt(3, cfg.kernel)
            self.prompt_shape = self.conv.shape
            initial = self.conv.init(generator, self.device)
            mean0 = initial.detach().double().cpu().reshape(-1).numpy()
            popsize = cfg.popsize or CNN_POPSIZE
        self.dim = initial.numel()
        self.popsize = int(popsize)
        self._mean0 = mean0
        self._seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                       device=generator.device))
        flat = initial.reshape(-1).float()
        self._initial = FOAState(flat, flat.detach().double().cpu().numpy())
        self.state = self._initial
        self.es = self._new_es()
        self._predict_norm = cfg.bn_stats if self.stats.active else SOURCE
        self._adapt_norm = BATCH if self.stats.active else SOURCE
        if self._predict_norm == BATCH:
            self.supports_streaming = False
            self.streaming_reason = STREAMING_REASON
        self.source_mean, self.source_std, self.tap_sizes = source_statistics(pack, self.device)
        last = self.source_mean[-self.tap_sizes[-1]:]
        self._shift_target = last[-1] if cfg.compat_scalar_shift else last
        self.last_step: FOAStep | None = None
        self._count = CostCounter(self.costs)
        self._adapt_lock = threading.Lock()

    def _new_es(self) -> cma.CMAEvolutionStrategy:
        rng = np.random.default_rng(self._seed)
        options = {"popsize": self.popsize, "seed": np.nan,
                   "randn": lambda *shape: rng.standard_normal(shape),
                   "verbose": -9, "verb_disp": 0, "verb_log": 0}
        return cma.CMAEvolutionStrategy(self._mean0.copy(), self.cfg.sigma0, options)

    # ---- forward passes --------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, prompt: torch.Tensor, norm: str,
                 collect: bool = False) -> tuple[Features, dict | None]:
        """One full forward of ``x`` carrying the flat ``prompt``."""
        x = x.to(self.device)
        prompt = prompt.reshape(self.prompt_shape)
        with torch.no_grad(), self.stats.using(norm, collect) as ctx:
            if self.tokens is not None:
                with self.tokens.using(prompt):
                    features, _ = self.extractor.run(x, early=False)
            else:
                features, _ = self.extractor.run(self.conv(x, prompt), early=False)
        self._count(forward_passes=1)
        return features, ctx.bn_sink

    def fitness(self, features: Features) -> float:
        """FOA's fitness of one candidate's forward (lower is better; unshifted outputs)."""
        cfg = self.cfg
        if self.family == "batchnorm":
            return float(zoa_loss(features, self.source_mean, self.source_std, self.tap_sizes,
                                  cfg.fitness_lambda).total)
        f = torch.cat(features.all(), dim=1)
        batch = f.shape[0]
        disc = ((f.std(dim=0, unbiased=True) - self.source_std) ** 2
                + (f.mean(dim=0) - self.source_mean) ** 2).sum()
        ent = entropy_per_sample(features.logits).sum()
        return float(ent + cfg.fitness_lambda * (batch / cfg.fitness_batch_ref) * disc)

    def _shifted(self, pre_logits: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if not self.cfg.shift or h is None:
            return self.classifier(pre_logits)
        return self.classifier(pre_logits + self.cfg.shift_step * (self._shift_target - h))

    def loss_of(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> float:
        """Diagnostic: the fitness on ``x`` of ``prompt`` (default: the current best)."""
        prompt = self.state.best if prompt is None else prompt
        return self.fitness(self._forward(x, prompt, self._adapt_norm)[0])

    def observing(self) -> AbstractContextManager:
        return self.stats.observing()

    def settle(self) -> None:
        self.stats.settle()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        features, _ = self._forward(x, state.best, self._predict_norm)
        self._count(frames_predicted=x.shape[0])
        with torch.no_grad():
            return self._shifted(features.pre_logits, state.shift_h)

    # ---- adaptation ------------------------------------------------------------------------
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The best candidate's shifted logits; ``popsize + 1`` forwards."""
        if x.shape[0] < self.cfg.min_adapt_batch:
            return self.predict(x)
        with self._adapt_lock:
            logits = self._step(x)
        self._count(frames_predicted=x.shape[0])
        return logits

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> FOAStep | None:
        """One step on already-predicted frames (``popsize + 1`` forwards; records unused)."""
        if x.shape[0] < self.cfg.min_adapt_batch:
            return None
        with self._adapt_lock:
            self._step(x)
            return self.last_step

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        cfg, state = self.cfg, self.state
        solutions = [*self.es.ask(), state.best_np]
        collect = self._predict_norm == RUNNING
        fits, means = [], []
        best_i, best_pre, best_sink = -1, None, None
        for i, solution in enumerate(solutions):
            prompt = state.best if i == len(solutions) - 1 else \
                torch.as_tensor(solution, dtype=torch.float32, device=self.device)
            features, sink = self._forward(x, prompt, self._adapt_norm, collect)
            fit = self.fitness(features)
            if not math.isfinite(fit):
                log.warning("foa: non-finite fitness for candidate %d; ranked last", i)
                fit = math.inf
            fits.append(fit)
            means.append(features.pre_logits.mean(dim=0))
            if best_i < 0 or fit < fits[best_i]:
                best_i, best_pre, best_sink = i, features.pre_logits, sink
        finite = [f for f in fits if math.isfinite(f)]
        worst = max(finite) + 1.0 if finite else 1.0
        self.es.tell(solutions, [f if math.isfinite(f) else worst for f in fits])
        with torch.no_grad():
            logits = self._shifted(best_pre, state.shift_h)
        shift_h = state.shift_h
        if cfg.shift:
            m = torch.stack(means).mean(dim=0)
            shift_h = m if shift_h is None else \
                (1 - cfg.shift_momentum) * shift_h + cfg.shift_momentum * m
        best_np = np.array(solutions[best_i], dtype=np.float64, copy=True)
        best = state.best if best_i == len(solutions) - 1 else \
            torch.as_tensor(best_np, dtype=torch.float32, device=self.device)
        self.stats.update(best_sink)
        self.state = FOAState(best, best_np, shift_h, state.version + 1)
        self.last_step = FOAStep(fits, best_i, fits[best_i], len(solutions))
        self._count(adapt_steps=1, frames_adapted=x.shape[0])
        return logits

    def reset(self) -> None:
        """Initial prompt, a fresh CMA-ES with the same seed, no shift history."""
        with self._adapt_lock:
            self.state = dataclasses.replace(self._initial, version=self.state.version + 1)
            self.es = self._new_es()
            self.stats.reset()
            self.last_step = None

    def bank_summary(self) -> dict:
        return {"entries": 0, "bytes": 4 * self.dim, "prompt_dims": self.dim,
                "popsize": self.popsize, "forwards_per_step": self.popsize + 1,
                "cma_bytes": 8 * self.dim * (self.dim + 4)}
