"""Fused norm layers: exact equality with the originals, parameter sets, the layer rule."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from zoa_ros.core.adapt.fused_norm import FusedBatchNorm, FusedLayerNorm, fuse_norms
from zoa_ros.core.adapt.layer_select import residual_blocks, select_layers
from zoa_ros.core.adapt.params import BATCH, LAYER, RUNNING, ParamSet, ParamStore
from zoa_ros.core.adapt.zoa import ZOA
from zoa_ros.core.model.factory import model_family
from zoa_ros.core.model.norm_mode import batch_statistics


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


def _fused(model: nn.Module, names: list[str], norm: str) -> tuple[ParamStore, ParamSet]:
    store = ParamStore(norm)
    fusion = fuse_norms(model, names, store)
    size = fusion.layout.size
    params = ParamSet(fusion.origin, torch.zeros(size), torch.randn(1), torch.zeros(1, size),
                      10.0, fusion.bn_stats)
    store.publish(params)
    return store, params


def test_fused_layernorm_is_exact():
    ln = nn.LayerNorm(64, eps=1e-6)
    _randomise_norms(ln)
    model = nn.Sequential(copy.deepcopy(ln))
    _fused(model, ["0"], LAYER)
    assert isinstance(model[0], FusedLayerNorm)
    x = torch.randn(4, 10, 64)
    assert torch.equal(model(x), ln(x))


@pytest.mark.parametrize("act", [True, False])
def test_fused_batchnorm_act_is_exact_and_keeps_activation(act):
    bn = BatchNormAct2d(16, act_layer=nn.SiLU, apply_act=act)
    _randomise_norms(bn)
    bn.eval()
    model = nn.Sequential(copy.deepcopy(bn))
    store, params = _fused(model, ["0"], RUNNING)
    fused = model[0]
    assert isinstance(fused, FusedBatchNorm) and isinstance(fused.act, type(bn.act))
    x = torch.randn(4, 16, 8, 8) * 2 + 1
    assert torch.equal(model(x), bn(x))                          # running = source stats
    if act:
        assert (model(x) < 0).any() and (model(x) > -0.3).all()  # SiLU applied
    with store.using(params, BATCH):
        out = model(x)
    with batch_statistics(bn):
        assert torch.equal(out, bn(x))                           # batch = train-mode BN
    assert torch.equal(bn.running_mean, fused.running_mean)      # buffers never updated


def test_batch_statistics_collected_in_the_normalising_pass():
    """With a statistics sink the batch-statistics forward is unchanged and records each
    BatchNorm's per-channel batch mean and unbiased variance (one pass, no ``var_mean``)."""
    bn = nn.BatchNorm2d(16, eps=1e-3)
    _randomise_norms(bn)
    model = nn.Sequential(copy.deepcopy(bn))
    store, params = _fused(model, ["0"], RUNNING)
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    x[:, 0] = 0.25                                      # a constant channel: variance 0
    with store.using(params, BATCH):
        plain = model(x)
    with store.using(params, BATCH, collect_bn=True) as ctx:
        out = model(x)
    assert torch.equal(out, plain)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=True)
    got_mean, got_var = ctx.bn_sink[0]
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, var, rtol=1e-5, atol=1e-6)
    assert float(got_var[0]) >= 0.0


def test_fused_affine_follows_bank_and_eps():
    ln = nn.LayerNorm(8)
    model = nn.Sequential(copy.deepcopy(ln))
    store, params = _fused(model, ["0"], LAYER)
    eps = torch.randn(16)
    bank = torch.cat([torch.zeros(1, 16), torch.randn(2, 16)])
    alpha = torch.tensor([0.1, -0.2, 0.3])
    new = params.replace(eps=eps, alpha=alpha, bank=bank)
    w = torch.softmax(10.0 * alpha, 0)
    expect = params.origin + w @ bank + eps
    # float32 sums of O(1) terms in another order: near-zero entries differ by ~1e-7
    assert torch.allclose(new.effective, expect, atol=1e-6)
    store.publish(new)
    x = torch.randn(3, 8)
    ref = nn.functional.layer_norm(x, (8,), expect[:8], expect[8:], ln.eps)
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_thread_local_override_does_not_leak():
    model = nn.Sequential(nn.LayerNorm(8))
    store, params = _fused(model, ["0"], LAYER)
    x = torch.randn(2, 8)
    base = model(x)
    with store.using(params.replace(eps=torch.ones(16)), LAYER):
        assert not torch.allclose(model(x), base)
    assert torch.equal(model(x), base)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_whole_cnn_fused_with_empty_bank_is_exact(name):
    model = timm.create_model(name, pretrained=False).eval()
    _randomise_norms(model)
    original = copy.deepcopy(model)
    names = select_layers(model, "batchnorm")
    store, params = _fused(model, names, RUNNING)
    assert not any(type(m) is nn.BatchNorm2d or type(m) is BatchNormAct2d
                   for m in model.modules())
    assert model_family(model) == "batchnorm"
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
        with store.using(params, BATCH), batch_statistics(original):
            assert torch.equal(model(x), original(x))


def test_zoa_with_empty_bank_equals_quantized_model(zoa_pack, zoa_images):
    for name, config, size in [("test_vit", {}, None),
                               ("test_resnet", {"bn_stats": "running"}, 64),
                               ("test_resnet", {"bn_stats": "batch"}, 64)]:
        pack = zoa_pack(name)
        original = pack.build_model()
        method = ZOA(pack.build_model(), pack, config, torch.Generator().manual_seed(0))
        x = zoa_images(pack, 6, size=size)
        with torch.no_grad():
            if config.get("bn_stats") == "batch":
                with batch_statistics(original):
                    ref = original(x)
            else:
                ref = original(x)
        assert torch.equal(method.predict(x), ref), (name, config)


def test_layer_rule_reproduces_reference_choice():
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224")
        resnet = timm.create_model("resnet50")
    assert select_layers(vit, "layernorm") == [
        f"blocks.{i}.norm{j}" for i in range(1, 9) for j in (1, 2)]
    expect = [f"layer1.{b}.bn{j}" for b in (1, 2) for j in (1, 2)] + \
        [f"layer2.{b}.bn{j}" for b in range(4) for j in (1, 2)] + \
        [f"layer3.{b}.bn{j}" for b in range(6) for j in (1, 2)]
    assert select_layers(resnet, "batchnorm") == expect
    assert len(residual_blocks(resnet)) == 16
    assert select_layers(resnet, "batchnorm", ["layer4.*.bn3"]) == \
        [f"layer4.{b}.bn3" for b in range(3)]
    assert len(select_layers(vit, "layernorm", "all")) == 25
    assert select_layers(vit, "layernorm", block_start=0, end_fraction=1.0)[0] == \
        "blocks.0.norm1"
    with pytest.raises(ValueError, match="matches no"):
        select_layers(vit, "layernorm", ["nope.*"])


def test_fusing_twice_is_refused():
    model = nn.Sequential(nn.LayerNorm(8))
    _fused(model, ["0"], LAYER)
    with pytest.raises(ValueError, match="already"):
        fuse_norms(model, ["0"], ParamStore(LAYER))
