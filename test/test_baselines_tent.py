"""TENT: only norm affines change, 1 forward + 1 backward per batch, graph memory measured,
entropy goes down, reset is exact, runs are deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from zoa_ros.core.adapt import registry

CASES = [("test_vit", None, nn.LayerNorm), ("test_resnet", 64, _BatchNorm)]


def _tent(pack, seed: int = 0, **config):
    return registry.create("tent", pack.build_model(), pack, config,
                           torch.Generator().manual_seed(seed))


def _affine_names(model, kind) -> set[str]:
    return {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, kind)
            for k in ("weight", "bias")}


@pytest.mark.parametrize(("name", "size", "kind"), CASES)
def test_only_norm_affines_change_and_costs(zoa_pack, shifted_batches, stem_counter,
                                            name, size, kind):
    pack = zoa_pack(name)
    method = _tent(pack)
    assert method.note and "straight-through" in method.note
    assert set(method.param_names) == _affine_names(method.model, kind)
    before = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    hooks = stem_counter(method.model)
    backwards = []
    method.params[0].register_hook(lambda g: backwards.append(1))
    for x in shifted_batches(pack, 2, size=size):
        method.forward_and_adapt(x)
    assert hooks.take() == 2 and len(backwards) == 2
    assert method.costs.forward_passes == 2 and method.costs.backward_passes == 2
    assert method.costs.adapt_steps == 2
    assert method.graph_bytes > 0 and method.peak_graph_bytes >= method.graph_bytes
    assert method.bank_summary()["graph_bytes"] == method.graph_bytes
    method.predict(x[:2])
    assert hooks.take() == 1 and len(backwards) == 2 and method.costs.backward_passes == 2
    after = method.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(method.param_names)


@pytest.mark.parametrize(("name", "size", "quant"), [
    ("test_resnet", 64, "none"), ("test_resnet", 64, "w8a8"), ("test_vit", None, "w8a8")])
def test_one_step_lowers_entropy_on_average(zoa_pack, shifted_batches, name, size, quant):
    """The toy models predict almost uniformly (entropy ≈ ln 1000, gradients near float32
    resolution), so the head is sharpened ×10 - test-only, to make one step measurable. FP32:
    the exact gradient; W8A8: the straight-through estimate, which only tends to descend."""
    pack = zoa_pack(name, quant)
    model = pack.build_model()
    with torch.no_grad():
        model.get_classifier().weight.mul_(10.0)
    method = registry.create("tent", model, pack, {}, torch.Generator().manual_seed(0))
    assert (method.note is None) == (quant == "none")
    deltas = []
    for x in shifted_batches(pack, 4, size=size, seed=2):
        method.reset()
        before = method.loss_of(x)
        method.forward_and_adapt(x)
        assert abs(before - method.last_loss) < 1e-4     # the step's loss is the pre-update one
        deltas.append(method.loss_of(x) - before)
    assert sum(deltas) / len(deltas) < 0, deltas
    if quant == "none":
        assert max(deltas) < 0, deltas


def test_reset_is_exact_and_runs_are_deterministic(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    stream = shifted_batches(pack, 3, size=64, seed=3)
    a, b = _tent(pack, seed=1), _tent(pack, seed=1)
    first = [a.forward_and_adapt(x) for x in stream]
    assert all(torch.equal(la, b.forward_and_adapt(x)) for la, x in zip(first, stream))
    a.reset()
    fresh = _tent(pack, seed=1).model.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in a.model.state_dict().items())
    assert not a.optimizer.state                                  # momentum buffers gone
    assert all(torch.equal(la, a.forward_and_adapt(x)) for la, x in zip(first, stream))
