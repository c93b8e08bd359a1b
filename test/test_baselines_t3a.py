"""T3A: support sets, prototype logits, filtering, costs, reset and determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoa_ros.core.adapt import registry
from zoa_ros.core.adapt.t3a import filter_supports


def _t3a(pack, seed: int = 0, **config):
    return registry.create("t3a", pack.build_model(), pack, config,
                           torch.Generator().manual_seed(seed))


def _reference_filter(labels: torch.Tensor, entropy: torch.Tensor, k: int) -> set[int]:
    """T3A's per-class loop."""
    keep: set[int] = set()
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        order = sorted(idx.tolist(), key=lambda i: (float(entropy[i]), i))
        keep.update(order[:k])
    return keep


def test_filter_keeps_the_k_lowest_entropy_supports_per_class():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (300,), generator=gen)
    entropy = torch.rand(300, generator=gen).round(decimals=1)      # many ties
    for k in (1, 3, 20):
        kept = filter_supports(labels, entropy, k)
        assert set(kept.tolist()) == _reference_filter(labels, entropy, k)
        assert torch.equal(kept, kept.sort().values)
    assert torch.equal(filter_supports(labels, entropy, -1), torch.arange(300))


@pytest.mark.parametrize(("name", "size"), [("test_vit", None), ("test_resnet", 64)])
def test_supports_logits_costs_and_model_untouched(zoa_pack, shifted_batches, stem_counter,
                                                   name, size):
    pack = zoa_pack(name)
    method = _t3a(pack, filter_k=3)
    params = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    hooks = stem_counter(method.model)
    x, y = shifted_batches(pack, 2, size=size)
    old = method.supports
    logits = method.forward_and_adapt(x)
    assert hooks.take() == 1 and method.costs.forward_passes == 1
    new = method.supports
    # the batch's logits: its features against the prototypes *including* the batch
    reference = pack.build_model()
    with torch.no_grad():
        if name == "test_resnet":
            reference.train()                           # batch statistics, as the method
        z = reference.forward_head(reference.forward_features(x), pre_logits=True)
        protos = F.normalize(F.normalize(new.features, dim=1).T
                             @ F.one_hot(new.labels, 1000).float(), dim=0)
    assert torch.allclose(logits, z @ protos, atol=1e-5)
    counts = torch.bincount(new.labels, minlength=1000)
    assert int(counts.max()) <= 3
    # objective of the filter: per class, the j-th lowest kept entropy never increases
    for c in new.labels.unique().tolist():
        before = old.entropy[old.labels == c].sort().values
        after = new.entropy[new.labels == c].sort().values
        assert len(after) >= min(len(before), 3)
        assert bool((after[:len(before)] <= before[:len(after)] + 1e-7).all())
    # a streaming record of exactly these frames is reused (no forward)
    if name == "test_vit":
        _, record = method.predict_with_record(y)
        hooks.take()
        assert method.adapt(y, cached=record)["reused_forward"] and hooks.take() == 0
    else:
        assert not method.supports_streaming                 # batch statistics (reference)
        method.adapt(y)
        assert hooks.take() == 1
    after = method.model.state_dict()
    assert all(torch.equal(params[k], after[k]) for k in params)


def test_reset_and_determinism(zoa_pack, shifted_batches):
    pack = zoa_pack("test_resnet")
    stream = shifted_batches(pack, 3, size=64, seed=1)
    a, b = _t3a(pack, seed=5), _t3a(pack, seed=5)
    first = [a.forward_and_adapt(x) for x in stream]
    assert all(torch.equal(la, b.forward_and_adapt(x)) for la, x in zip(first, stream))
    a.reset()
    assert a.supports is a._initial
    assert all(torch.equal(la, a.forward_and_adapt(x)) for la, x in zip(first, stream))
