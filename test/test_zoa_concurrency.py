"""Predictions from another thread never see perturbed or half-updated parameters."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from zoa_ros.core.adapt.zoa import ZOA


@pytest.mark.parametrize(("name", "size", "config"), [
    ("test_vit", None, {}),
    ("test_resnet", 64, {"bn_stats": "running", "lr": 1.0}),
])
def test_predictions_match_a_published_parameter_set(zoa_pack, zoa_images, name, size, config):
    pack = zoa_pack(name)
    method = ZOA(pack.build_model(), pack,
                 {"lr": 2e-2, "detect_min_batch": 16, "alpha_init": "normal", **config},
                 torch.Generator().manual_seed(0))
    published = [method.params]
    publish = method.store.publish

    def recording_publish(params, **kwargs):
        publish(params, **kwargs)
        published.append(method.store.published)

    method.store.publish = recording_publish
    probe = zoa_images(pack, 3, seed=99, size=size)
    gen = torch.Generator().manual_seed(1)
    stream = [zoa_images(pack, 16, seed=s, size=size) for s in range(4)]
    stream += [b + 1.5 * torch.randn(b.shape, generator=gen) for b in stream]

    done = threading.Event()
    predictions: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def predictor() -> None:
        try:
            while not done.is_set() or len(predictions) < 5:
                predictions.append(method.predict(probe))
        except BaseException as e:   # surfaced below
            errors.append(e)

    thread = threading.Thread(target=predictor)
    thread.start()
    try:
        for batch in stream:
            method.forward_and_adapt(batch)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    assert method.domain_changes >= 1                  # the bank was touched concurrently too

    references = [method._forward(probe, p, method._predict_norm).logits for p in published]
    gaps = [float((a - b).abs().max()) for a, b in itertools.pairwise(references)]
    assert min(gaps) > 1e-4                            # consecutive sets are distinguishable
    matched = set()
    for logits in predictions:
        assert torch.isfinite(logits).all()
        hits = [i for i, ref in enumerate(references) if torch.equal(logits, ref)]
        assert hits, "a prediction matches no published parameter set"
        matched.add(hits[0])
    assert len(matched) >= 2                           # predictions really ran during adaptation
