"""Domain-change detection: the divergence, the update rule, and on a real model."""

from __future__ import annotations

import torch

from zoa_ros.core.adapt.detector import DomainDetector, jeffreys
from zoa_ros.core.adapt.zoa import ZOA


def test_jeffreys_is_zero_for_identical_and_symmetric():
    m, v = torch.randn(8), torch.rand(8) + 0.5
    assert abs(jeffreys(m, v, m, v)) < 1e-6
    m2, v2 = m + 1, v * 2
    assert abs(jeffreys(m, v, m2, v2) - jeffreys(m2, v2, m, v)) < 1e-5
    # one channel: means differ by 1, unit variances -> (1 + 1)/2 - 1/2 twice = 1
    assert abs(jeffreys(torch.zeros(1), torch.ones(1), torch.ones(1), torch.ones(1)) - 1) < 1e-6


def test_detector_update_rule_and_min_batch():
    det = DomainDetector(threshold=0.1, momentum=0.36, min_batch=4)
    assert det.observe(torch.zeros(3), torch.ones(3), 3).skipped and det.mean is None
    first = det.observe(torch.zeros(3), torch.ones(3), 4)
    assert not first.changed and first.divergence is None
    det.observe(torch.full((3,), 0.1), torch.ones(3), 4)
    assert torch.allclose(det.mean, torch.full((3,), 0.036))    # 0.64·0 + 0.36·0.1
    change = det.observe(torch.full((3,), 5.0), torch.ones(3), 4)
    assert change.changed and torch.allclose(det.mean, torch.full((3,), 5.0))  # re-initialised


def test_detector_fires_on_switch_and_stays_quiet_within_domain(zoa_pack, zoa_images):
    for name, size in [("test_vit", None), ("test_resnet", 64)]:
        pack = zoa_pack(name)
        method = ZOA(pack.build_model(), pack, {"detect_min_batch": 16, "min_adapt_batch": 16},
                     torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        changes = []
        for step in range(8):
            x = zoa_images(pack, 16, seed=step, size=size)
            if step >= 4:    # second domain: heavy sensor noise
                x = x + 1.5 * torch.randn(x.shape, generator=gen)
            method.forward_and_adapt(x)
            changes.append(method.last_step.changed)
        assert changes == [False] * 4 + [True] + [False] * 3, (name, changes)
        assert method.domain_changes == 1 and method.domain_id == 1
        assert method.bank_summary()["entries"] == 1


def test_small_batches_skip_detection(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    method = ZOA(pack.build_model(), pack, {"detect_min_batch": 64, "min_adapt_batch": 4},
                 torch.Generator().manual_seed(0))
    method.forward_and_adapt(zoa_images(pack, 8))
    assert method.last_step.adapted and method.last_step.detection_skipped
    assert method.detector.mean is None


def test_primed_detector_registers_the_first_shifted_batch(zoa_pack, zoa_images):
    pack = zoa_pack("test_resnet")
    method = ZOA(pack.build_model(), pack, {"detect_min_batch": 16},
                 torch.Generator().manual_seed(0))
    method.prime_detector(zoa_images(pack, 16, seed=1, size=64))
    assert method.costs.adapt_steps == 0 and method.params.version == 0
    x = zoa_images(pack, 16, seed=2, size=64)
    method.forward_and_adapt(x + 1.5 * torch.randn(x.shape, generator=torch.Generator()))
    assert method.last_step.changed and method.bank_summary()["entries"] == 1
