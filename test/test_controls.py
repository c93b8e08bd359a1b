"""Run-time controls of a running engine: retuning and reset that keeps the knowledge bank."""

from __future__ import annotations

import pytest
import torch

from zoa_ros.core.controls import reset_to_source, tune
from zoa_ros.core.engine import Engine, EngineConfig


def _engine(pack, **method_config) -> Engine:
    # no_harm off: predictions use the adapted state without a shift gate deciding when
    return Engine(pack, EngineConfig(method="zoa", method_config={"alpha_init": "normal",
                                                                  "no_harm": False,
                                                                  **method_config},
                                     batch_size=8, min_frames=8, warmup=False))


def _learn_two_domains(engine: Engine) -> None:
    method, gen = engine.method, torch.Generator().manual_seed(3)
    for scale in (0.05, 0.1):
        p = method.params
        eps = scale * torch.randn(p.eps.shape, generator=gen)
        method.store.publish(p.replace(eps=eps, version=p.version + 1))
        method.mark_domain_change()
    p = method.params   # and some adaptation on top of the bank
    method.store.publish(p.replace(eps=p.eps + 0.03, version=p.version + 1))


def test_tune_swaps_settings_and_rejects_bad_values_atomically(zoa_pack) -> None:
    engine = _engine(zoa_pack("test_vit"))
    tune(engine, {"interval_frames": 4, "top_k": 2}, {"lr": 1e-3, "domain_t": 0.5})
    assert engine.config.interval == 4 and engine.config.top_k == 2
    assert engine.method.cfg.lr == 1e-3 and engine.method.detector.threshold == 0.5
    before = (engine.config, engine.method.cfg)
    for bad in ({"interval_frames": 0}, {"batch_size": 4}):
        with pytest.raises(ValueError):
            tune(engine, bad, {"lr": 5.0})
    with pytest.raises(ValueError, match="spsa_c"):
        tune(engine, {"interval_frames": 3}, {"spsa_c": 0.0})
    with pytest.raises(ValueError, match="no settings"):
        tune(engine, {}, {"no_such": 1})
    assert (engine.config, engine.method.cfg) == before
    assert len(engine.predict(_frame(engine))[0].top) == 2


def _frame(engine: Engine) -> torch.Tensor:
    return torch.randn(1, *engine.preprocessor.input_size, generator=torch.Generator()
                       .manual_seed(0))


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_reset_keeping_the_bank_restores_source_outputs(zoa_pack, zoa_images, name) -> None:
    pack = zoa_pack(name)
    config = {"bn_stats": "batch"} if name == "test_resnet" else {}
    engine = _engine(pack, **config)
    x = zoa_images(pack, 8, size=64 if name == "test_resnet" else None)
    source = engine.method.predict(x)
    _learn_two_domains(engine)
    adapted = engine.method.predict(x)
    assert not torch.allclose(adapted, source, atol=1e-4)
    alpha = engine.method.params.alpha.clone()
    assert reset_to_source(engine, keep_bank=True) == 2
    p = engine.method.params
    assert p.entries == 2 and torch.equal(p.alpha, alpha)
    assert torch.allclose(p.delta(), torch.zeros_like(p.delta()), atol=1e-6)
    assert torch.allclose(engine.method.predict(x), source, atol=1e-4)
    assert engine.stats().resets == 1 and engine.stats().bank_entries == 2
    assert reset_to_source(engine, keep_bank=False) == 0
    assert engine.stats().bank_entries == 0
    assert torch.allclose(engine.method.predict(x), source, atol=1e-4)
