"""Running BatchNorm test statistics for single frames: the per-frame fold, that only frames
offered for adaptation move it, and that an adaptation step never overwrites it with a stale
snapshot."""

from __future__ import annotations

import pytest
import torch

from zoa_ros.core.adapt import registry
from zoa_ros.core.adapt.bn_stats import fold_batch, fold_frames, fold_frames_later, frame_moments
from zoa_ros.core.adapt.fused_norm import FusedBatchNorm
from zoa_ros.core.adapt.params import ParamSet, ParamStore
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.engine import Engine


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), (x * x).mean(dim=(2, 3))


def _distance(a, b) -> float:
    return sum(float((p[0] - q[0]).pow(2).sum() + (p[1] - q[1]).pow(2).sum())
               for p, q in zip(a, b, strict=True))


def test_fold_of_a_batch_equals_one_frame_at_a_time() -> None:
    gen = torch.Generator().manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(5, 4, 6, 6, generator=gen)
    start = ((torch.zeros(4), torch.ones(4)),)
    together = fold_frames(start, {0: _moments(x)}, 0.3)
    one_by_one = start
    for frame in x:
        one_by_one = fold_frames(one_by_one, {0: _moments(frame[None])}, 0.3)
    torch.testing.assert_close(together[0][0], one_by_one[0][0])
    torch.testing.assert_close(together[0][1], one_by_one[0][1])
    # ρ = 1 on one frame: exactly that frame's per-channel mean and (population) variance
    only = fold_frames(start, {0: _moments(x[:1])}, 1.0)
    var, mean = torch.var_mean(x[:1], dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(only[0][0], mean)
    torch.testing.assert_close(only[0][1], var, rtol=1e-4, atol=1e-4)
    # layers missing from the sink are kept as they were
    assert fold_frames(start, {}, 0.3)[0][0] is start[0][0]
    assert fold_batch(start, {}, 0.3)[0][1] is start[0][1]


def test_fold_of_many_layers_equals_each_layer_on_its_own() -> None:
    """All layers are folded in one pass over their channels laid end to end: bit for bit what
    folding each layer by itself gives; a layer missing from the sink is kept as it was."""
    gen = torch.Generator().manual_seed(2)
    stats = tuple((torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5)
                  for c in (3, 16, 1, 40))
    sink = {i: _moments(torch.randn(2, c, 5, 5, generator=gen))
            for i, c in enumerate((3, 16, 1, 40)) if i != 2}
    together = fold_frames(stats, sink, 0.05)
    for i, pair in enumerate(stats):
        alone = fold_frames((pair,), {0: sink[i]} if i in sink else {}, 0.05)[0]
        assert torch.equal(together[i][0], alone[0]) and torch.equal(together[i][1], alone[1])
    assert together[2] is stats[2]


@pytest.mark.parametrize("method_name", ["zoa", "norm"])
def test_deferred_fold_is_the_fold_of_the_frames_own_moments(method_name, zoa_pack,
                                                             shifted_batches) -> None:
    """An observed prediction leaves its fold for later: its own logits never depend on it, and
    the next prediction (or ``settle``) folds exactly that frame's BatchNorm input moments."""
    pack = zoa_pack("test_resnet")
    method = registry.create(method_name, pack.build_model(), pack,
                             {"bn_stats": "running", "frame_momentum": 0.2, "detect": False}
                             if method_name == "zoa" else
                             {"bn_stats": "running", "frame_momentum": 0.2},
                             torch.Generator().manual_seed(0))
    inputs: dict[int, torch.Tensor] = {}
    for m in method.model.modules():
        if isinstance(m, FusedBatchNorm):
            m.register_forward_pre_hook(
                lambda mod, args: inputs.__setitem__(mod.index, args[0].detach().clone()))
    store = method.store if method_name == "zoa" else method.stats.store
    (x,) = shifted_batches(pack, 1, size=64, noise=1.0)
    for i in range(3):
        before = store.published.bn_stats
        plain = method.predict(x[i:i + 1])
        observed, _ = method.predict_with_record(x[i:i + 1])
        assert torch.equal(observed, plain)            # its own fold is not in its prediction
        assert store.published.bn_stats is before      # left for later ...
        expected = fold_frames(before, frame_moments(inputs), 0.2)
        if i == 2:
            method.settle()                            # ... or done now, on request
            done = store.published.bn_stats
        else:
            method.predict(x[:1])                      # ... and the next prediction does it first
            done = store.published.bn_stats
        for (m, v), (em, ev) in zip(done, expected, strict=True):
            assert torch.equal(m, em) and torch.equal(v, ev)
    method.settle()
    assert store.published.bn_stats is done            # nothing left: settle is a no-op


def test_deferred_fold_refuses_inputs_changed_in_place() -> None:
    store = ParamStore("running")
    store.publish(ParamSet(origin=torch.zeros(0), eps=torch.zeros(0), alpha=torch.zeros(1),
                           bank=torch.zeros(1, 0), alpha_scale=1.0,
                           bn_stats=((torch.zeros(2), torch.ones(2)),)))
    x = torch.ones(1, 2, 3, 3)
    fold_frames_later(store, {0: x}, 0.5)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place"):
        store.settle()
    store.settle()                                     # the failed fold is dropped, not retried
    assert torch.equal(store.published.bn_stats[0][1], torch.ones(2))


def test_fold_converges_to_the_stream_statistics() -> None:
    """Many frames of one domain: the estimate approaches the variance over all their pixels
    (within-frame spread plus the spread of the frame means), not the mean per-frame one."""
    gen = torch.Generator().manual_seed(1)
    offsets = 4.0 * torch.randn(400, 3, 1, 1, generator=gen)
    x = offsets + torch.randn(400, 3, 8, 8, generator=gen)
    stats = ((torch.zeros(3), torch.ones(3)),)
    for chunk in x.split(10):
        stats = fold_frames(stats, {0: _moments(chunk)}, 0.02)
    var, mean = torch.var_mean(x[-100:], dim=(0, 2, 3))
    assert float((stats[0][0] - mean).abs().max()) < 1.0
    assert float((stats[0][1] / var - 1).abs().max()) < 0.35
    assert float(stats[0][1].min()) > 8.0   # ≈ 16 + 1, far above the 1.0 within a frame


def test_frames_rule_moves_only_with_observed_frames(zoa_pack, shifted_batches, stem_counter):
    pack = zoa_pack("test_resnet")
    method = registry.create("norm", pack.build_model(), pack,
                             {"bn_stats": "running", "frame_momentum": 0.1},
                             torch.Generator().manual_seed(0))
    hooks = stem_counter(method.model)
    (x,) = shifted_batches(pack, 1, size=64, noise=1.0)
    probe = registry.create("norm", pack.build_model(), pack,
                            {"bn_stats": "running", "stats_momentum": 1.0},
                            torch.Generator().manual_seed(0))
    probe.adapt(x)                                     # x's own batch statistics
    target = probe.stats.estimate
    source = method.stats.estimate
    first = method.predict(x[:1])
    assert method.stats.estimate is source             # predict() changes nothing
    assert torch.equal(method.predict(x[:1]), first)
    hooks.take()
    d0 = _distance(source, target)
    for i in range(len(x)):                            # one frame at a time, as a camera
        method.predict_with_record(x[i:i + 1])
    assert hooks.take() == len(x)                      # no forward beyond the predictions
    assert _distance(method.stats.estimate, target) < 0.5 * d0
    estimate = method.stats.estimate
    method.adapt(x)                                    # frames rule: nothing left to do
    assert hooks.take() == 0 and method.stats.estimate is estimate
    assert not torch.equal(method.predict(x[:1]), first)
    method.reset()
    assert torch.equal(method.predict(x[:1]), first)


def test_engine_with_adaptation_off_leaves_the_statistics(zoa_pack, zoa_images):
    pack = zoa_pack("test_resnet")
    engine = Engine(pack, method="norm", mode="streaming", batch_size=16)
    assert engine.method.cfg.frame_momentum > 0        # the streaming default
    frames = zoa_images(pack, 4, seed=3)
    before = engine.method.stats.estimate
    engine.set_adaptation(False)
    for frame in frames:
        engine.predict(frame[None], observe=True)
    assert engine.method.stats.estimate is before
    engine.set_adaptation(True)
    engine.predict(frames[:1], observe=True)
    assert engine.method.stats.estimate is not before


def test_zoa_step_keeps_statistics_folded_meanwhile(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    method = ZOA(pack.build_model(), pack,
                 {"bn_stats": "running", "frame_momentum": 0.2, "detect": False, "lr": 1.0,
                  "min_adapt_batch": 8}, torch.Generator().manual_seed(0))
    x, y = shifted_batches(pack, 2, size=64, noise=1.0)
    snapshot = method.params
    method.predict_with_record(y[:4])                  # frames folded after the snapshot
    folded = method.params.bn_stats
    assert folded is not snapshot.bn_stats
    method.store.publish(snapshot.replace(version=snapshot.version + 1), keep_stats=True)
    assert method.params.bn_stats is folded
    version = method.params.version
    info = method.adapt(x)                             # a step under the frames rule
    assert info.adapted and method.params.version == version + 1
    assert method.params.bn_stats is folded            # the step did not touch them
    assert not torch.equal(method.params.eps, snapshot.eps)


def test_source_prior_blends_the_statistics(zoa_pack, shifted_batches):
    """``stats_prior`` w: single frames are normalised with the mixture of the source (weight w)
    and the running test distribution; w = 1 is the source model whatever was folded."""
    pack = zoa_pack("test_resnet")
    (x,) = shifted_batches(pack, 1, size=64, noise=1.0)

    def observed(prior: float):
        method = registry.create("norm", pack.build_model(), pack,
                                 {"bn_stats": "running", "frame_momentum": 0.2,
                                  "stats_prior": prior}, torch.Generator().manual_seed(0))
        for i in range(len(x)):
            method.predict_with_record(x[i:i + 1])
        return method

    source = registry.create("none", pack.build_model(), pack, {},
                             torch.Generator().manual_seed(0))
    frame = x[:1]
    torch.testing.assert_close(observed(1.0).predict(frame), source.predict(frame))
    test_only, half = observed(0.0), observed(0.5)
    torch.testing.assert_close(half.stats.estimate[0][0], test_only.stats.estimate[0][0])
    outputs = [m.predict(frame) for m in (test_only, half)]
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[1], source.predict(frame))
    # the blend the first BatchNorm uses: mixture mean and variance
    bn = next(m for m in half.model.modules() if hasattr(m, "store"))
    mean, var = half.stats.estimate[0]
    mixed_mean = 0.5 * mean + 0.5 * bn.running_mean
    mixed_var = 0.5 * var + 0.5 * bn.running_var + 0.25 * (mean - bn.running_mean) ** 2
    probe = torch.randn(2, mean.numel(), 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), half.stats.using("running"):
        got = bn(probe)
    expected = bn.act(bn.drop(torch.nn.functional.batch_norm(
        probe, mixed_mean, mixed_var, bn.weight, bn.bias, False, 0.0, bn.eps)))
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="stats_prior"):
        registry.create("norm", pack.build_model(), pack, {"stats_prior": 1.5},
                        torch.Generator().manual_seed(0))


@pytest.mark.parametrize("reset", [False, True])
def test_reset_on_change_replaces_the_estimate_only_when_asked(zoa_pack, shifted_batches,
                                                               reset):
    """A detected change replaces the running estimate by the adaptation batch's statistics
    with ``stats_reset_on_change``, and leaves it to the frames rule without."""
    pack = zoa_pack("test_resnet")
    method = registry.create("zoa", pack.build_model(), pack,
                             {"bn_stats": "running", "frame_momentum": 0.1, "lr": 0.0,
                              "detect_min_batch": 8, "min_adapt_batch": 8, "domain_t": 1e-9,
                              "stats_reset_on_change": reset},
                             torch.Generator().manual_seed(0))
    a, b = shifted_batches(pack, 2, size=16, noise=1.0)
    assert not method.adapt(a).changed                 # the detector's first batch
    before = method.params.bn_stats
    assert method.adapt(b).changed
    after = method.params.bn_stats
    probe = registry.create("norm", pack.build_model(), pack,
                            {"bn_stats": "running", "stats_momentum": 1.0},
                            torch.Generator().manual_seed(0))
    probe.adapt(b)                                     # b's own batch statistics
    if reset:
        for (m, v), (pm, pv) in zip(after, probe.stats.estimate, strict=True):
            torch.testing.assert_close(m, pm, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v, pv, rtol=1e-4, atol=1e-4)
    else:
        assert all(torch.equal(m, m0) and torch.equal(v, v0)
                   for (m, v), (m0, v0) in zip(after, before, strict=True))
        assert _distance(after, probe.stats.estimate) > 1e-3


def test_streaming_zoa_leaves_the_estimate_to_the_frames(zoa_pack):
    """Streaming mode's default: no reset at a change (docs/lab/streaming-statistics.md §2.4f);
    batch mode and
    explicit settings keep it."""
    pack = zoa_pack("test_resnet")
    assert not Engine(pack, method="zoa", mode="streaming").method.cfg.stats_reset_on_change
    assert Engine(pack, method="zoa", mode="batch").method.cfg.stats_reset_on_change
    assert Engine(pack, method="zoa", mode="streaming",
                  method_config={"stats_reset_on_change": True}
                  ).method.cfg.stats_reset_on_change
