"""The interface every test-time adaptation method implements, and its cost counters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from zoa_ros.core.model.pack import ModelPack


@dataclass
class Costs:
    """What a method spent so far (counted by the method itself, checked by tests with hooks)."""

    forward_passes: int = 0      # full-model forward passes (a batch counts once)
    backward_passes: int = 0
    adapt_steps: int = 0
    frames_adapted: int = 0
    frames_predicted: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptMethod(ABC):
    """A test-time adaptation method bound to one quantized model.

    * :meth:`predict` classifies frames with the current parameters and changes nothing
      (streaming mode; safe to call from another thread while :meth:`adapt` runs).
    * :meth:`predict_with_record` classifies frames that are also offered for adaptation
      (the engine calls it only while adaptation is on); it may update state that follows the
      stream, e.g. the running BatchNorm statistics of :mod:`.bn_stats`.
    * :meth:`forward_and_adapt` is the paper's batch protocol: the logits for ``x`` are computed
      before the update, then one adaptation step is taken on ``x``.
    * :meth:`adapt` takes one step on buffered frames whose predictions were already returned.

    Randomness only from ``generator``; device from the model; no ``.cuda()`` here.
    """

    name: ClassVar[str]
    # Settings the engine applies (unless the user set them) when frames are classified one at a
    # time: e.g. BatchNorm models cannot use the statistics of a one-frame batch.
    streaming_defaults: ClassVar[dict] = {}
    # Domain changes detected so far and the current domain's index (incremented on each
    # change); methods without a detector keep 0. Subclasses may shadow these with properties.
    domain_changes: int = 0
    domain_id: int = 0
    # Whether predict() classifies single frames meaningfully (streaming mode), and why not.
    supports_streaming: bool = True
    streaming_reason: str | None = None
    # A caveat a report should print next to the method's numbers (None: nothing to say).
    note: str | None = None
    # Bytes of autograd-saved activations of the last back-propagation step (BP methods only).
    graph_bytes: int = 0
    # Whether adapt() may pause mid-forward while predict() runs on another thread (engine's
    # max_pause_s); False where predict() waits for adapt() (e.g. a lock held across both).
    adapt_may_pause: ClassVar[bool] = True

    def __init__(self, model: nn.Module, pack: ModelPack, config: dict,
                 generator: torch.Generator) -> None:
        self.model = model
        self.pack = pack
        self.config = dict(config)
        self.generator = generator
        self.costs = Costs()

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` (B x classes) with the current parameters; no state changes."""

    @abstractmethod
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` from before the update, then one adaptation step on ``x``."""

    def adapt(self, x: torch.Tensor, cached: object | None = None) -> object | None:
        """One adaptation step on frames that were already classified.

        ``cached``: what :meth:`predict_with_record` returned for these frames (one record, or
        a list with one per frame/batch in order); a method may reuse it to skip its own
        unperturbed forward. Methods that cannot reuse it ignore it.
        """
        self.forward_and_adapt(x)
        return None

    def predict_with_record(self, x: torch.Tensor) -> tuple[torch.Tensor, object | None]:
        """:meth:`predict` inside :meth:`observing`, plus an opaque record that :meth:`adapt`
        may reuse (default: none)."""
        with self.observing():
            return self.predict(x), None

    @property
    def follows_frames(self) -> bool:
        """Whether :meth:`predict_with_record` changes what later predictions read (the running
        BatchNorm statistics of the frames rule): a runtime that classifies the frames elsewhere
        replays them through it (default: no)."""
        return False

    @property
    def observes_frame_by_frame(self) -> bool:
        """Whether an observed prediction must hold one frame (a batch would count as one
        observation, e.g. ZOA's shift gate): a replay then goes frame by frame (default: no)."""
        return False

    @property
    def step_wanted(self) -> bool:
        """Whether the method asks for an adaptation step before ``interval_frames`` frames
        are in (ZOA: a new domain's first measurement); the engine runs one when it may
        (default: never)."""
        return False

    def observing(self) -> AbstractContextManager:
        """Context in which predictions may update stream-following state (default: none)."""
        return nullcontext()

    def settle(self) -> None:
        """Finish now what an observed prediction left for later (the next prediction would
        finish it first), so a caller can publish a result before paying for it (default:
        nothing is left)."""
        return None

    @abstractmethod
    def reset(self) -> None:
        """Back to the source model (keeps nothing adapted)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What should persist between missions (e.g. the knowledge bank); empty by default."""
        return {}

    def bank_summary(self) -> dict:
        """``{"entries": int, "bytes": int}`` of persistent knowledge."""
        return {"entries": 0, "bytes": 0}
