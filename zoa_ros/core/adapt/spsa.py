"""One-sided SPSA with segmented-uniform perturbations, and ZOA's two closed-form optimizers.

Estimate (METHOD.md §3, division form, reusing the unperturbed loss ``L0``)::

    z_i ~ ±U[0.5, 1)          ĝ_i = (L(θ + c·z) − L0) / (c·z_i)

Optimizers: SGD on ε, ``ε ← ε − η(ĝ + wd·ε)`` (optional classic momentum); and for the mixing
logits the reference's AdamW whose state is wiped after every step, i.e. always a
bias-corrected *first* Adam step, which in closed form is
``α ← α(1 − η_α·wd_α) − η_α·ĝ/(|ĝ| + 1e-8)`` (METHOD.md §9.7).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def segmented_uniform(n: int, generator: torch.Generator,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` draws with magnitude ``U[0.5, 1)`` and a random sign: support [−1,−0.5]∪[0.5,1)."""
    magnitude = 0.5 + 0.5 * torch.rand(n, generator=generator, device=generator.device)
    sign = torch.randint(0, 2, (n,), generator=generator, device=generator.device) * 2 - 1
    out = magnitude * sign
    return out if device is None else out.to(device)


def spsa_gradient(loss0: torch.Tensor | float, loss_plus: torch.Tensor | float,
                  z: torch.Tensor, c: float) -> torch.Tensor:
    """Division-form one-sided estimate ``(L+ − L0) / (c·z)``."""
    return (loss_plus - loss0) / (c * z)


def spsa_estimate(fn: Callable[[torch.Tensor], torch.Tensor | float], theta: torch.Tensor,
                  c: float, generator: torch.Generator,
                  loss0: torch.Tensor | float | None = None) -> torch.Tensor:
    """Gradient estimate of ``fn`` at ``theta`` from one perturbed evaluation (plus ``fn(theta)``
    unless ``loss0`` is given)."""
    if loss0 is None:
        loss0 = fn(theta)
    z = segmented_uniform(theta.numel(), generator, theta.device).view_as(theta)
    return spsa_gradient(loss0, fn(theta + c * z), z, c)


def sgd_step(theta: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float,
             momentum: float = 0.0, buffer: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``torch.optim.SGD`` semantics (dampening 0, no Nesterov); returns (θ, momentum buffer)."""
    d = grad + weight_decay * theta if weight_decay else grad
    if momentum:
        buffer = d.clone() if buffer is None else momentum * buffer + d
        d = buffer
    return theta - lr * d, buffer


def first_adamw_step(alpha: torch.Tensor, grad: torch.Tensor, lr: float,
                     weight_decay: float, eps: float = 1e-8) -> torch.Tensor:
    """One AdamW step from fresh state (what the reference does every batch)."""
    return alpha * (1.0 - lr * weight_decay) - lr * grad / (grad.abs() + eps)
