"""BN-stat adaptation ("norm"): test-batch statistics, a running estimate for single frames,
nothing learned, and a no-op on LayerNorm models."""

from __future__ import annotations

import torch

from zoa_ros.core.adapt import registry
from zoa_ros.core.adapt.none import NoAdapt
from zoa_ros.core.model.norm_mode import batch_statistics


def _norm(pack, seed: int = 0, **config):
    return registry.create("norm", pack.build_model(), pack, config,
                           torch.Generator().manual_seed(seed))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_batch_statistics_without_touching_the_model(zoa_pack, shifted_batches, stem_counter):
    pack = zoa_pack("test_resnet")
    method = _norm(pack)
    assert not method.supports_streaming and "running" in method.streaming_reason
    before = _state(method.model)
    hooks = stem_counter(method.model)
    x, y = shifted_batches(pack, 2, size=64)
    reference = pack.build_model()
    with torch.no_grad(), batch_statistics(reference):
        expected = reference(x)
    assert torch.equal(method.forward_and_adapt(x), expected)
    assert torch.equal(method.predict(x), expected)          # batch mode: same statistics
    method.adapt(y)                                            # stateless: nothing to do
    assert hooks.take() == 2 and method.costs.forward_passes == 2
    assert method.costs.adapt_steps == 0
    after = _state(method.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)   # params and BN buffers


def test_running_estimate_moves_to_the_test_domain_and_resets(zoa_pack, shifted_batches,
                                                               stem_counter):
    pack = zoa_pack("test_resnet")
    method = _norm(pack, bn_stats="running", stats_momentum=0.5)
    assert method.supports_streaming and method.streaming_reason is None
    hooks = stem_counter(method.model)
    x, held_out = shifted_batches(pack, 2, size=64, noise=1.0)
    fresh = _norm(pack, bn_stats="running", stats_momentum=0.5)
    frame = held_out[:1]
    source_logits = fresh.predict(frame)
    # the held-out batch's own statistics, measured through the batch-statistics path
    probe = _norm(pack, bn_stats="running", stats_momentum=1.0)
    probe.adapt(held_out)
    target = probe.stats.estimate

    def distance(m) -> float:
        return sum(float((a[0] - b[0]).pow(2).sum() + (a[1] - b[1]).pow(2).sum())
                   for a, b in zip(m.stats.estimate, target, strict=True))

    d0 = distance(method)
    method.adapt(x)
    assert hooks.take() == 1 and method.costs.adapt_steps == 1
    assert distance(method) < d0
    assert not torch.equal(method.predict(frame), source_logits)   # single frame, new stats
    method.reset()
    assert torch.equal(method.predict(frame), source_logits)


def test_layernorm_model_behaves_as_none(zoa_pack, zoa_images, stem_counter):
    pack = zoa_pack("test_vit")
    method = _norm(pack)
    assert method.note and "none" in method.note and method.supports_streaming
    assert method.bank_summary()["note"] == method.note
    reference = NoAdapt(pack.build_model(), pack, {}, torch.Generator())
    x = zoa_images(pack, 8)
    hooks = stem_counter(method.model)
    assert torch.equal(method.forward_and_adapt(x), reference.predict(x))
    method.adapt(x)
    assert hooks.take() == 1
