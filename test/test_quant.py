"""The fake quantizer: grids, calibration, what it touches and what it leaves alone."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch import nn

from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.core.model.factory import ModelSpec, build_model
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.quant import QuantConfig, calibrate, quant_state, quantize_model
from zoa_ros.core.quant.attention import QuantAttention
from zoa_ros.core.quant.fake_quant import fake_quant, fake_quant_inference, qrange, search_scale
from zoa_ros.core.quant.model import first_conv_name
from zoa_ros.core.quant.quantizers import ActQuantizer, QuantLayer


@pytest.fixture(scope="module")
def photos(photo_dir) -> list:
    return [read_rgb(p) for p in find_images(photo_dir)]


def quantized(name: str, quant: str, photos: list, weights: str = "random") -> nn.Module:
    model = build_model(ModelSpec(name, weights))
    quantize_model(model, QuantConfig.parse(quant))
    calibrate(model, Preprocessor.for_model(model)(photos[:8]))
    return model


def test_grid_has_at_most_2_pow_bits_levels() -> None:
    x = torch.randn(10_000)
    for bits in (4, 6, 8):
        qmin, qmax = qrange(bits, signed=True)
        scale = search_scale(x, bits, signed=True)
        levels = torch.unique(torch.round(fake_quant(x, scale, qmin, qmax) / scale))
        assert len(levels) <= 2**bits
        assert levels.min() >= qmin and levels.max() <= qmax


@pytest.mark.parametrize("signed", [True, False])
def test_inference_path_equals_torch_fake_quantize(signed: bool) -> None:
    """The no-gradient path gives torch's fused kernel's numbers exactly, ties and clipping
    included; with a gradient the quantizer still passes it straight through."""
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor(0.0371)
    qmin, qmax = qrange(8, signed)
    ties = (torch.arange(-300, 300) + 0.5) * scale          # exactly between two grid points
    x = torch.cat([torch.randn(10_000, generator=g) * 3, ties, torch.tensor([0.0, 1e6, -1e6])])
    zero = torch.zeros((), dtype=torch.int32)
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
    assert torch.equal(fake_quant_inference(x, scale, qmin, qmax), expected)

    quant = ActQuantizer(8, signed=signed)
    quant.scale.fill_(float(scale))
    with torch.no_grad():
        assert torch.equal(quant(x), expected)
    leaf = x.clone().requires_grad_(True)
    quant(leaf).sum().backward()
    grid = torch.round(x * torch.reciprocal(scale))
    inside = (grid >= qmin) & (grid <= qmax)
    assert torch.equal(leaf.grad, inside.float())


def test_search_beats_min_max() -> None:
    x = torch.randn(50_000)
    x[0] = 40.0  # one outlier: min-max wastes the grid on it
    qmin, qmax = qrange(4, signed=True)
    searched = search_scale(x, 4, signed=True)
    minmax = x.abs().max() / qmax
    err = lambda s: (fake_quant(x, s, qmin, qmax) - x).pow(2).mean()  # noqa: E731
    assert err(searched) < 0.5 * err(minmax)


def test_error_shrinks_as_bits_grow(photos: list) -> None:
    reference = build_model(ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0"))
    x = Preprocessor.for_model(reference)(photos[8:16])
    with torch.no_grad():
        fp = reference(x)
        errors = {q: (quantized("tf_efficientnet_lite0", q, photos, "efficientnet-lite0")(x) - fp)
                  .pow(2).mean().item() for q in ("w4a4", "w6a6", "w8a8")}
    assert errors["w8a8"] < errors["w6a6"] < errors["w4a4"]
    assert errors["w8a8"] > 0  # quantized outputs differ from fp32


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_norm_layers_untouched_and_still_adaptable(name: str, photos: list) -> None:
    fp = build_model(ModelSpec(name))
    model = quantized(name, "w8a8", photos)
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    fp_norms = {n: m for n, m in fp.named_modules() if isinstance(m, norm_types)}
    q_norms = {n: m for n, m in model.named_modules() if isinstance(m, norm_types)}
    assert fp_norms.keys() == q_norms.keys() and fp_norms
    for key, norm in q_norms.items():
        assert type(norm) is type(fp_norms[key])
        for a, b in zip(norm.state_dict().values(), fp_norms[key].state_dict().values()):
            assert torch.equal(a, b)
    # Affine parameters are plain tensors: changing one changes the output, no recalibration.
    x = Preprocessor.for_model(model)(photos[:2])
    with torch.no_grad():
        before = model(x)
        next(iter(q_norms.values())).weight.mul_(1.5)
        assert not torch.allclose(before, model(x))


def test_every_conv_and_linear_is_quantized_stem_weight_only(photos: list) -> None:
    model = quantized("test_resnet", "w6a6", photos)
    plain = [n for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and not n.endswith(".layer")]
    assert plain == []
    stem = model.get_submodule(first_conv_name(model))
    assert isinstance(stem, QuantLayer) and stem.input_quant is None  # stem: weights only
    assert model.fc.input_quant is not None and model.fc.w_bits == 8  # classifier: 8-bit edge
    inner = [m for m in model.modules() if isinstance(m, QuantLayer)][1:-1]
    assert all(m.w_bits == 6 for m in inner)


def test_vit_attention_matmuls_are_quantized(photos: list) -> None:
    model = quantized("test_vit", "w8a8", photos)
    wrappers = [m for m in model.modules() if isinstance(m, QuantAttention)]
    assert wrappers and len(wrappers) == sum(isinstance(m, Attention) for m in model.modules())
    for w in wrappers:
        assert not bool(w.map_quant.signed)  # post-softmax map on an unsigned grid
        assert all(float(q.scale) != 1.0 for q in (w.q_quant, w.k_quant, w.v_quant, w.map_quant))


def test_calibration_is_deterministic(photos: list) -> None:
    a = quant_state(quantized("test_efficientnet", "w4a4", photos))
    b = quant_state(quantized("test_efficientnet", "w4a4", photos))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_none_leaves_the_model_alone() -> None:
    model = build_model(ModelSpec("test_resnet"))
    quantize_model(model, QuantConfig.parse("none"))
    assert not any(isinstance(m, QuantLayer) for m in model.modules())
    with pytest.raises(ValueError, match="unknown quantization"):
        QuantConfig.parse("w3a3")
