"""Adaptation steps that go wrong leave nothing behind: a non-finite loss or non-finite new
parameters roll the step back (counted, with the reason), an abandoned step (a stopping node) is
undone, and a bank with a non-finite value is neither saved nor loaded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.bank import file as bank_file
from zoa_ros.core.controls import tune
from zoa_ros.core.engine import Engine, EngineConfig
from zoa_ros.core.runtime.prediction_first import PredictionFirst, StepAborted


def _engine(pack) -> Engine:
    """Streaming ZOA that steps on every 16 frames (the always-adapting rule: these tests are
    about what a step does with bad numbers, not about when the shift gate lets it run)."""
    return Engine(pack, EngineConfig(method="zoa", mode="streaming", batch_size=16,
                                     min_frames=16, interval_frames=16,
                                     method_config={"detect_min_batch": 16,
                                                    "min_adapt_batch": 16,
                                                    "no_harm": False}))


def _state(method: ZOA) -> dict:
    p = method.params
    return {"eps": p.eps.clone(), "alpha": p.alpha.clone(), "bank": p.bank.clone(),
            "entries": p.entries, "domain_changes": method.domain_changes,
            "similarity": method.similarity.clone(), "detector": method.detector.mean}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
               for k in a)


@pytest.mark.parametrize("model", ["test_vit", "test_resnet"])
def test_a_step_with_a_non_finite_loss_is_rolled_back(zoa_pack, zoa_images, model) -> None:
    pack = zoa_pack(model)
    engine = _engine(pack)
    x = zoa_images(pack, 16, size=64 if model == "test_resnet" else None)
    engine.predict(x, observe=True)
    assert engine.maybe_adapt(force=True) is not None        # one good step
    before = _state(engine.method)
    probe = x[:2]
    reference = engine.predict(probe)
    engine.observe(torch.full_like(x, float("nan")))           # a batch that poisons the loss
    report = engine.maybe_adapt(force=True)
    assert report.rolled_back and "non-finite loss" in report.info.reason
    stats = engine.stats()
    assert stats.adapt_rolled_back == 1 and stats.adapt_steps == 1
    assert stats.last_rollback.startswith("rolled back: non-finite loss")
    assert _same(_state(engine.method), before)
    after = engine.predict(probe)
    assert [p.top for p in after] == [p.top for p in reference]
    engine.predict(x, observe=True)                            # and it adapts on
    assert not engine.maybe_adapt(force=True).rolled_back
    assert engine.stats().adapt_steps == 2


def test_a_step_whose_new_parameters_are_not_finite_is_rolled_back(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    engine = _engine(pack)
    x = zoa_images(pack, 16)
    before = _state(engine.method)
    tune(engine, {}, {"lr": float("inf")})
    engine.predict(x, observe=True)
    report = engine.maybe_adapt(force=True)
    assert report.rolled_back and "non-finite parameters (eps" in report.info.reason
    assert _same(_state(engine.method), before)
    assert engine.stats().adapt_rolled_back == 1 and engine.stats().adapt_steps == 0


def test_an_abandoned_step_is_undone_even_after_a_domain_change(zoa_pack, zoa_images):
    """Aborted in its probe forward, after it had banked a detected domain: all undone."""
    pack = zoa_pack("test_vit")
    method = ZOA(pack.build_model(), pack, {"detect_min_batch": 16, "domain_t": 1e-9},
                 torch.Generator().manual_seed(0))
    clean = zoa_images(pack, 16, seed=1)
    method.prime_detector(clean)
    shifted = clean + 0.8 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    _, record = method.predict_with_record(shifted)
    before = _state(method)
    first = PredictionFirst(0.0, abortable=True)
    first.abort()
    with first.adapting(), pytest.raises(StepAborted):
        method.adapt(shifted, cached=record)
    assert _same(_state(method), before) and method.params.entries == 0
    first.abort(False)
    with first.adapting():
        info = method.adapt(shifted, cached=record)
    assert info.adapted and info.changed and method.params.entries == 1


def test_the_engine_counts_an_abandoned_step(zoa_pack, zoa_images) -> None:
    pack = zoa_pack("test_vit")
    engine = _engine(pack)
    engine.predict(zoa_images(pack, 16), observe=True)
    engine.abort_adaptation()
    assert engine.maybe_adapt(force=True) is None
    assert engine.stats().adapt_steps == 0
    engine.abort_adaptation(False)
    engine.predict(zoa_images(pack, 16, seed=2), observe=True)
    assert engine.maybe_adapt(force=True) is not None


def test_non_finite_banks_are_never_saved_nor_loaded(zoa_pack, zoa_images, tmp_path) -> None:
    from conftest import rewritten_bank

    pack = zoa_pack("test_vit")
    engine = _engine(pack)
    engine.predict(zoa_images(pack, 16), observe=True)
    engine.maybe_adapt(force=True)
    good = tmp_path / "good.zoabank"
    engine.save_bank(good)
    state, _ = bank_file.read(good)
    poisoned = dataclasses.replace(state, eps=state.eps.clone().fill_(float("nan")))
    with pytest.raises(bank_file.BankError, match=r"\['eps'\] hold non-finite values"):
        bank_file.encode(poisoned, pack.fingerprint)
    # a file with NaN entries and a valid content hash (what another writer could produce)
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save
    data = good.read_bytes()
    tensors = st_load(data)
    tensors["eps"] = torch.full_like(tensors["eps"], float("inf"))
    size = int.from_bytes(data[:8], "little")
    import json
    meta_text = json.loads(data[8:8 + size])["__metadata__"]["zoa_bank"]
    bad = tmp_path / "bad.zoabank"
    bad.write_bytes(rewritten_bank(st_save(tensors, metadata={"zoa_bank": meta_text})))
    with pytest.raises(bank_file.BankError, match="non-finite values"):
        bank_file.read(bad)
    with pytest.raises(bank_file.BankError, match="non-finite values"):
        engine.load_bank(bad)
