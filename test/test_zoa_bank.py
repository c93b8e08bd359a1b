"""Knowledge bank: saving a domain and removing entries leave every output unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from zoa_ros.core.adapt.bank import delta_scale, pick_removal, similarity_matrix
from zoa_ros.core.adapt.zoa import ZOA

CASES = [("test_vit", None, {}), ("test_resnet", 64, {"bn_stats": "batch"})]


def _set_random_eps(method: ZOA, gen: torch.Generator, scale: float) -> None:
    p = method.params
    eps = scale * torch.randn(p.eps.shape, generator=gen)
    method.store.publish(p.replace(eps=eps, version=p.version + 1))


@pytest.mark.parametrize(("name", "size", "config"), CASES)
def test_append_and_removal_leave_outputs_unchanged(zoa_pack, zoa_images, name, size, config):
    pack = zoa_pack(name)
    method = ZOA(pack.build_model(), pack, {**config, "capacity": 3, "alpha_init": "normal"},
                 torch.Generator().manual_seed(0))
    x = zoa_images(pack, 8, size=size)
    gen = torch.Generator().manual_seed(3)
    removed = []
    for i in range(6):
        _set_random_eps(method, gen, scale=0.05 * (i + 1))
        before_params = method.params
        before = method.predict(x)
        removed.append(method.mark_domain_change())
        after_params = method.params
        assert torch.allclose(method.predict(x), before, atol=1e-5)
        assert torch.allclose(after_params.effective, before_params.effective, atol=1e-5)
        # the residual delta is rescaled to the weight margin (s > 1 here)
        assert math.isclose(delta_scale(after_params, method.layout), 0.01, rel_tol=1e-3)
        k = after_params.entries
        assert k == min(i + 1, 3) and after_params.alpha.numel() == k + 1
        # the maintained similarity matrix is correctly indexed after removals
        full = similarity_matrix(method.layout, after_params.bank[1:])
        assert torch.allclose(method.similarity, full, atol=1e-6)
    assert removed[:3] == [None] * 3 and all(r is not None for r in removed[3:])
    assert method.domain_changes == 6


def test_zero_delta_entry_takes_max_logit(zoa_pack):
    pack = zoa_pack("test_vit")
    method = ZOA(pack.build_model(), pack, {"alpha_init": 0.3}, torch.Generator())
    method.mark_domain_change()
    p = method.params
    assert torch.allclose(p.alpha, torch.tensor([0.3, 0.3]))
    assert torch.count_nonzero(p.bank) == 0 and torch.count_nonzero(p.eps) == 0


def test_pick_removal():
    sim = torch.zeros(4, 4)
    sim[0, 1], sim[1, 3], sim[2, 3] = 0.2, 0.9, 0.5
    assert pick_removal(sim) == 1               # older entry of the most similar pair
    neg = torch.full((3, 3), -0.5).triu(1)
    assert pick_removal(neg) == 0               # no positive pair: oldest entry
    assert pick_removal(torch.zeros(1, 1)) == 0
