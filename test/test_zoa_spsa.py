"""SPSA estimator and ZOA's closed-form optimizers."""

from __future__ import annotations

import torch

from zoa_ros.core.adapt.spsa import (
    first_adamw_step,
    segmented_uniform,
    sgd_step,
    spsa_estimate,
    spsa_gradient,
)


def test_segmented_uniform_support_and_determinism():
    z = segmented_uniform(20000, torch.Generator().manual_seed(1))
    assert ((z.abs() >= 0.5) & (z.abs() < 1.0)).all()
    assert abs(float((z > 0).float().mean()) - 0.5) < 0.02
    assert torch.equal(z, segmented_uniform(20000, torch.Generator().manual_seed(1)))


def test_spsa_division_form_reuses_loss0():
    z = torch.tensor([0.5, -1.0])
    assert torch.allclose(spsa_gradient(1.0, 1.2, z, 0.1), torch.tensor([4.0, -2.0]))


def test_spsa_estimate_points_along_true_gradient_on_quadratic():
    gen = torch.Generator().manual_seed(0)
    n = 50
    a = torch.randn(n, n, generator=gen)
    hessian = a @ a.T / n + torch.eye(n)
    b = torch.randn(n, generator=gen)

    def f(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * theta @ hessian @ theta + b @ theta

    theta = torch.randn(n, generator=gen)
    true = hessian @ theta + b
    loss0 = f(theta)
    estimates = torch.stack([spsa_estimate(f, theta, 1e-3, gen, loss0) for _ in range(400)])
    cosines = torch.nn.functional.cosine_similarity(estimates, true[None], dim=1)
    assert cosines.mean() > 0.05                       # each draw is positively aligned
    mean = estimates.mean(dim=0)                       # and the average converges to it
    assert torch.nn.functional.cosine_similarity(mean, true, dim=0) > 0.5
    # descent: plain SGD on the estimates lowers the objective
    t = theta.clone()
    for _ in range(300):
        t, _ = sgd_step(t, spsa_estimate(f, t, 1e-3, gen), lr=2e-3, weight_decay=0.0)
    assert f(t) < loss0


def test_sgd_step_matches_torch_sgd():
    theta, grad = torch.randn(7), torch.randn(7)
    p = torch.nn.Parameter(theta.clone())
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.4)
    buffer = None
    ours = theta
    for _ in range(3):
        p.grad = grad.clone()
        opt.step()
        ours, buffer = sgd_step(ours, grad, 0.1, 0.4, 0.9, buffer)
    assert torch.allclose(ours, p.detach(), atol=1e-6)


def test_first_adamw_step_matches_fresh_adamw():
    alpha, grad = torch.randn(5), torch.randn(5) * 10
    p = torch.nn.Parameter(alpha.clone())
    torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)
    opt = torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)
    p.grad = grad.clone()
    opt.step()
    assert torch.allclose(first_adamw_step(alpha, grad, 0.01, 0.1), p.detach(), atol=1e-6)
