"""ZOA end to end on tiny quantized models: costs, caching, shift, determinism, learning."""

from __future__ import annotations

import pytest
import torch

from zoa_ros.core.adapt import registry
from zoa_ros.core.adapt.none import NoAdapt
from zoa_ros.core.adapt.presets import PresetError, load_preset
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.quant.model import first_conv_name

CASES = [("test_vit", None), ("test_resnet", 64)]


def _zoa(pack, seed: int = 0, **config) -> ZOA:
    config = {"detect_min_batch": 16, **config}
    return ZOA(pack.build_model(), pack, config, torch.Generator().manual_seed(seed))


class _Counter:
    """Counts full forward passes with hooks on the stem and on the last feature tap."""

    def __init__(self, method: ZOA) -> None:
        model = method.model
        self.calls = {"stem": 0, "tap": 0}
        stem = model.get_submodule(first_conv_name(model))
        tap = model.get_submodule(method.extractor.names[-1])
        stem.register_forward_hook(lambda *_: self._hit("stem"))
        tap.register_forward_hook(lambda *_: self._hit("tap"))

    def _hit(self, key: str) -> None:
        self.calls[key] += 1

    def take(self) -> int:
        stem, tap = self.calls["stem"], self.calls["tap"]
        assert stem == tap
        self.calls = {"stem": 0, "tap": 0}
        return stem


@pytest.mark.parametrize(("name", "size"), CASES)
def test_forward_pass_counts(zoa_pack, zoa_images, name, size):
    pack = zoa_pack(name)
    method = _zoa(pack)
    hooks = _Counter(method)
    x = zoa_images(pack, 16, size=size)
    method.predict(x)
    assert hooks.take() == 1 and method.costs.forward_passes == 1
    for _ in range(2):
        method.forward_and_adapt(x)
        assert hooks.take() == 2
    assert method.costs.forward_passes == 5 and method.costs.adapt_steps == 2
    method.adapt(x)
    assert hooks.take() == 2
    # a fresh record of the whole batch: the unperturbed forward is reused
    _, record = method.predict_with_record(x)
    hooks.take()
    info = method.adapt(x, cached=record)
    assert hooks.take() == 1 and info.reused_forward and info.forwards == 1
    # the parameters changed since: the stale record is ignored
    info = method.adapt(x, cached=record)
    assert hooks.take() == 2 and not info.reused_forward
    assert method.costs.forward_passes == 1 + 4 + 2 + 1 + 1 + 2
    assert method.costs.frames_adapted == 5 * 16 and method.costs.frames_predicted == 4 * 16


def test_per_frame_records_are_reused_for_layernorm_models(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    x = zoa_images(pack, 16)
    cached, fresh = _zoa(pack, seed=4), _zoa(pack, seed=4)
    hooks = _Counter(cached)
    records = [cached.predict_with_record(x[i:i + 1])[1] for i in range(16)]
    hooks.take()
    info = cached.adapt(x, cached=records)
    assert info.reused_forward and hooks.take() == 1
    fresh.adapt(x)
    assert abs(info.loss - fresh.last_step.loss) < 1e-4
    assert torch.allclose(cached.params.eps, fresh.params.eps, atol=1e-5)


def test_per_frame_records_are_not_reused_for_batch_statistics(zoa_pack, zoa_images):
    pack = zoa_pack("test_resnet")
    method = _zoa(pack)
    x = zoa_images(pack, 16, size=64)
    records = [method.predict_with_record(x[i:i + 2])[1] for i in range(0, 16, 2)]
    assert not method.adapt(x, cached=records).reused_forward


def test_small_batch_predicts_without_adapting(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    method = _zoa(pack)
    hooks = _Counter(method)
    method.forward_and_adapt(zoa_images(pack, 4))
    assert hooks.take() == 1 and not method.last_step.adapted
    assert method.params.version == 0


def test_activation_shift(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    x = zoa_images(pack, 16)
    for compat in (False, True):
        method = _zoa(pack, compat_scalar_shift=compat)
        method.forward_and_adapt(x)
        h = method.params.shift_h
        rec = method._forward(x, method.params, "layer")
        target = method._source_last[-1] if compat else method._source_last
        expect = method.classifier(rec.features.pre_logits + (target - h))
        assert torch.allclose(method.predict(x), expect, atol=1e-6)
        assert not torch.allclose(rec.features.logits, expect)
        method.forward_and_adapt(x)
        g_last = rec.features.pre_logits.mean(dim=0)
        assert torch.allclose(method.params.shift_h, 0.9 * h + 0.1 * g_last, atol=1e-5)


def test_domain_change_reinitialises_shift_history(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    method = _zoa(pack)
    x = zoa_images(pack, 16)
    method.forward_and_adapt(x)
    method.forward_and_adapt(x)
    noisy = x + 2.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    before = method.params
    rec = method._forward(noisy, before, "layer")
    method.forward_and_adapt(noisy)
    assert method.last_step.changed
    assert torch.allclose(method.params.shift_h, rec.features.pre_logits.mean(dim=0), atol=1e-5)


def test_running_bn_statistics_follow_the_stream(zoa_pack, zoa_images):
    pack = zoa_pack("test_resnet")
    method = _zoa(pack, bn_stats="running", stats_momentum=0.25, detect=False)
    source = method.params.bn_stats
    x = zoa_images(pack, 16, size=64)
    rec = method._forward(x, method.params, "batch", collect_bn=True)
    method.forward_and_adapt(x)
    for i, (m, v) in enumerate(method.params.bn_stats):
        assert torch.allclose(m, 0.75 * source[i][0] + 0.25 * rec.bn_stats[i][0], atol=1e-5)
        assert torch.allclose(v, 0.75 * source[i][1] + 0.25 * rec.bn_stats[i][1], atol=1e-5)
    single = method.predict(x[:1])     # a single frame works with running statistics
    assert single.shape == (1, len(pack.labels)) and torch.isfinite(single).all()


def test_reset_returns_to_source(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    method = _zoa(pack, lr=1e-2)
    x = zoa_images(pack, 16)
    source = method.predict(x)
    for _ in range(3):
        method.forward_and_adapt(x)
    method.mark_domain_change()
    assert not torch.allclose(method.predict(x), source)
    method.reset()
    assert torch.equal(method.predict(x), source)
    assert method.domain_changes == 0 and method.bank_summary()["entries"] == 0


@pytest.mark.parametrize(("name", "size"), CASES)
def test_same_seed_gives_identical_logits(zoa_pack, zoa_images, name, size):
    pack = zoa_pack(name)
    gen = torch.Generator().manual_seed(9)
    stream = [zoa_images(pack, 16, seed=s, size=size) for s in range(3)]
    stream += [b + 1.5 * torch.randn(b.shape, generator=gen) for b in stream]
    runs = []
    for _ in range(2):
        method = _zoa(pack, seed=7, alpha_init="normal", lr=1e-2)
        runs.append([method.forward_and_adapt(b) for b in stream])
        assert method.domain_changes == 1
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    other = _zoa(pack, seed=8, alpha_init="normal", lr=1e-2)
    assert not torch.equal([other.forward_and_adapt(b) for b in stream][-1], runs[0][-1])


def test_zoa_lowers_its_loss_on_a_shifted_stream(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    gen = torch.Generator().manual_seed(5)
    batches = [b + 0.5 * torch.randn(b.shape, generator=gen)
               for b in (zoa_images(pack, 16, seed=s) for s in range(4))]
    method = _zoa(pack, lr=1e-3, detect=False)
    before = sum(method.loss_of(b) for b in batches) / len(batches)
    for i in range(32):
        method.forward_and_adapt(batches[i % len(batches)])
    after = sum(method.loss_of(b) for b in batches) / len(batches)
    assert after < before - 0.01, (before, after)


def test_registry_presets_and_none(zoa_pack, zoa_images):
    assert {"none", "zoa"} <= set(registry.available())
    pack = zoa_pack("test_resnet")
    x = zoa_images(pack, 4, size=64)
    model = pack.build_model()
    ref = model(x)
    none = registry.create("none", model, pack, {}, torch.Generator())
    assert isinstance(none, NoAdapt) and torch.equal(none.predict(x), ref)
    assert none.forward_and_adapt(x) is not None and none.adapt(x) is None
    assert none.domain_changes == 0 and none.domain_id == 0 and none.costs.forward_passes == 2
    zoa = registry.create("zoa", pack.build_model(), pack, {"lr": 0.5}, torch.Generator())
    assert isinstance(zoa, ZOA) and zoa.cfg.lam == 1.0 and zoa.cfg.lr == 0.5
    assert zoa.cfg.domain_t == 0.2 and zoa.cfg.spsa_c == 0.01
    with pytest.raises(ValueError, match="unknown adaptation method"):
        registry.create("nope", model, pack, {}, torch.Generator())
    with pytest.raises(ValueError, match="unknown ZOA settings"):
        registry.create("zoa", pack.build_model(), pack, {"lr_typo": 1}, torch.Generator())

    class Custom(NoAdapt):
        name = "custom_test"

    registry.register(Custom)
    assert isinstance(registry.create("custom_test", model, pack, {}, torch.Generator()), Custom)

    vit8, vit6 = load_preset("layernorm", "w8a8"), load_preset("layernorm", "W6A6")
    assert (vit8["lr"], vit6["lr"], vit8["lambda"], vit8["spsa_c"], vit8["domain_t"]) == \
        (5e-4, 2e-4, 30.0, 0.02, 0.1)
    bn8 = load_preset("batchnorm", "w8a8")
    assert (bn8["lr"], bn8["lambda"], bn8["spsa_c"], bn8["spsa_c_alpha"]) == (1e-4, 1.0, 0.01, 0.05)
    with pytest.raises(PresetError, match="quantization"):
        load_preset("layernorm", "w2a2")
