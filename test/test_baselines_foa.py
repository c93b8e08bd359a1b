"""FOA: CMA-ES over input prompts. Model parameters never change; popsize + 1 forwards per batch;
the fitness goes down; reset and seeds are exact.

Test-only overrides keep this fast: ``popsize: 6`` (instead of ⌊4 + 3 ln dim⌋ / 27) and, for
the ViT, one prompt token (64 dims on the toy model) instead of 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoa_ros.core.adapt import registry
from zoa_ros.core.adapt.foa import default_popsize

FAST = {"popsize": 6}
CASES = [("test_vit", None, {**FAST, "num_prompts": 1}), ("test_resnet", 64, FAST)]


def _foa(pack, seed: int = 0, **config):
    return registry.create("foa", pack.build_model(), pack, config,
                           torch.Generator().manual_seed(seed))


def test_default_population_and_prompt_sizes(zoa_pack):
    assert default_popsize(2304) == 27                        # ViT-B: 3 x 768 prompt dims
    vit = _foa(zoa_pack("test_vit"))
    assert vit.dim == 3 * 64 and vit.popsize == default_popsize(192) == 19
    cnn = _foa(zoa_pack("test_resnet"))
    assert cnn.dim == 3 * 3 * 7 * 7 and cnn.popsize == 27
    # Kaiming-normal fan-out init (std sqrt(2 / 147)); CMA-ES starts there
    assert abs(float(cnn.state.best.std()) - (2 / 147) ** 0.5) < 0.03
    assert np.array_equal(cnn.es.mean, cnn.state.best_np)
    assert not np.any(vit.es.mean)                           # ViT: CMA-ES mean 0


def test_prompt_tokens_follow_the_cls_token(zoa_pack, zoa_images):
    pack = zoa_pack("test_vit")
    method = _foa(pack, num_prompts=2)
    seen = []
    method.model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = zoa_images(pack, 2)
    method.predict(x)
    with torch.no_grad():
        method.model(x)                                      # outside FOA: no prompts
    with_prompts, plain = seen
    assert with_prompts.shape[1] == plain.shape[1] + 2
    assert torch.equal(with_prompts[:, 0], plain[:, 0])
    assert torch.equal(with_prompts[:, 1:3], method.state.best.view(2, 64).expand(2, -1, -1))
    assert torch.equal(with_prompts[:, 3:], plain[:, 1:])


@pytest.mark.parametrize(("name", "size", "config"), CASES)
def test_costs_shift_and_model_untouched(zoa_pack, shifted_batches, stem_counter, name, size,
                                         config):
    pack = zoa_pack(name)
    method = _foa(pack, **config)
    before = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    hooks = stem_counter(method.model)
    x, y = shifted_batches(pack, 2, size=size)
    first = method.forward_and_adapt(x)
    assert hooks.take() == 7 and method.last_step.forwards == 7
    # first batch: no shift yet, the prediction is the best candidate's plain output
    best = method.state.best
    features, _ = method._forward(x, best, method._adapt_norm)
    hooks.take()
    assert torch.allclose(first, features.logits, atol=1e-5)
    assert method.state.shift_h is not None
    method.adapt(y)
    assert hooks.take() == 7
    assert method.costs.forward_passes == 7 + 1 + 7 and method.costs.adapt_steps == 2
    # predict: the current best prompt, shifted by μ_S,last − h
    frames = x[:4] if name == "test_vit" else x
    features, _ = method._forward(frames, method.state.best, method._predict_norm)
    target = method.source_mean[-method.tap_sizes[-1]:]
    expected = method.classifier(features.pre_logits + target - method.state.shift_h)
    hooks.take()
    assert torch.allclose(method.predict(frames), expected, atol=1e-5) and hooks.take() == 1
    after = method.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("name", "size", "config"), CASES)
def test_one_step_lowers_the_fitness_on_average(zoa_pack, shifted_batches, name, size, config):
    pack = zoa_pack(name)
    deltas = []
    for seed, x in enumerate(shifted_batches(pack, 3, size=size, seed=4)):
        method = _foa(pack, seed=seed, **config)
        before = method.loss_of(x)
        method.forward_and_adapt(x)
        after = method.loss_of(x)
        assert after <= before + 1e-4                         # the previous best is a candidate
        assert abs(after - method.last_step.best_fitness) < 1e-3
        deltas.append(after - before)
    assert sum(deltas) / len(deltas) < 0, deltas


def test_reset_and_determinism(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    stream = shifted_batches(pack, 2, size=64, seed=5)
    a, b = _foa(pack, seed=3, **FAST), _foa(pack, seed=3, **FAST)
    np.random.seed(0)                                        # global numpy RNG is not used
    first = [a.forward_and_adapt(x) for x in stream]
    np.random.rand(5)
    assert all(torch.equal(la, b.forward_and_adapt(x)) for la, x in zip(first, stream))
    assert not np.array_equal(a.es.mean, a._mean0)                # CMA-ES moved
    a.reset()
    assert torch.equal(a.state.best, a._initial.best) and a.state.shift_h is None
    assert np.array_equal(a.es.mean, a._mean0)
    assert all(torch.equal(la, a.forward_and_adapt(x)) for la, x in zip(first, stream))
