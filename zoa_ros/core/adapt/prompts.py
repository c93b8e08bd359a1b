"""Input prompts for FOA: prompt tokens for timm ViTs, a residual input convolution for CNNs.

Both take the prompt as an argument per forward pass (thread-local for the ViT hook), so the
model's parameters never change and several threads can run different prompts at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class PromptTokens:
    """Inserts ``n`` prompt tokens (n x D) right after the prefix (CLS) tokens of a timm
    ``VisionTransformer``: a forward hook on ``pos_drop``, the last op of ``_pos_embed``, so the
    prompts come after the positional embedding (they get none) and before ``norm_pre`` and the
    blocks. Only inside :meth:`using`; other forward passes are untouched."""

    def __init__(self, model: nn.Module) -> None:
        if not (hasattr(model, "pos_drop") and hasattr(model, "blocks")
                and hasattr(model, "cls_token")):
            raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer: "
                             "prompt tokens need its pos_drop/_pos_embed path")
        pool = getattr(model, "global_pool", "token")
        if pool != "token":
            raise ValueError(f"prompt tokens need CLS-token pooling, not global_pool={pool!r} "
                             "(the prompts would enter the pooled feature)")
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.embed_dim = int(model.embed_dim)
        patch = model.patch_embed.patch_size
        self.patch_area = int(patch[0] * patch[1]) if isinstance(patch, (tuple, list)) \
            else int(patch) ** 2
        self._local = threading.local()
        self._handle = model.pos_drop.register_forward_hook(self._insert)

    def _insert(self, _module: nn.Module, _inputs: object,
                out: torch.Tensor) -> torch.Tensor | None:
        prompts = getattr(self._local, "prompts", None)
        if prompts is None:
            return None
        p = prompts.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :self.prefix], p, out[:, self.prefix:]], dim=1)

    @contextmanager
    def using(self, prompts: torch.Tensor) -> Iterator[None]:
        """Forward passes of this thread inside the block carry ``prompts`` (n x D)."""
        previous = getattr(self._local, "prompts", None)
        self._local.prompts = prompts
        try:
            yield
        finally:
            self._local.prompts = previous

    def init(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """VPT's initial prompts: uniform on ±sqrt(6 / (3·patch_area + D))."""
        bound = math.sqrt(6.0 / float(3 * self.patch_area + self.embed_dim))
        u = torch.rand(n, self.embed_dim, generator=generator, device=generator.device)
        return ((2 * u - 1) * bound).to(device)

    def close(self) -> None:
        self._handle.remove()


class InputConvPrompt:
    """FOA's CNN prompt: ``x' = x + conv(x)``, a 3->3 ``k x k`` convolution, stride 1, same
    padding, no bias (441 parameters for k = 7)."""

    def __init__(self, channels: int = 3, kernel: int = 7) -> None:
        self.shape = (channels, channels, kernel, kernel)
        self.padding = kernel // 2

    def init(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Kaiming-normal (fan-out, ReLU gain) weights."""
        w = torch.empty(self.shape, device=generator.device)
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=generator)
        return w.to(device)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x + F.conv2d(x, weight.to(x.dtype), padding=self.padding)
