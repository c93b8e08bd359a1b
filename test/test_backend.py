"""The int8 backend: export of a pack to ONNX QDQ, ONNX Runtime's integer kernels, fidelity
with the torch simulation, the session swap, refusals (another pack's export, what the export
cannot fold, a runtime that does not fuse the graph) and the engine on top of it.

Real parts: timm models (the real EfficientNet-Lite0 weights from their pip package for the
fidelity check, a random-init MobileNetV2 for the rest), the bundled photos, ONNX Runtime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from zoa_ros.core.backend.base import BackendError
from zoa_ros.core.backend.export import (
    META_PACK,
    ExportError,
    ExportMismatch,
    Int8Export,
    export_pack,
)
from zoa_ros.core.backend.ort import OrtBackend
from zoa_ros.core.backend.reference import prediction_norms
from zoa_ros.core.engine import Engine, EngineConfig
from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.core.model.calibration import build_pack
from zoa_ros.core.model.factory import ModelSpec
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.core.quant import QuantConfig
from zoa_ros.tools.cli import main

TINY = "mobilenetv2_035"   # ReLU6, BatchNorm, residual adds: what the export folds


@pytest.fixture(scope="module")
def tiny(make_pack):
    return make_pack(TINY, "w8a8")


@pytest.fixture(scope="module")
def tiny_export(tiny):
    return export_pack(tiny[0])


@pytest.fixture(scope="module")
def photos(photo_dir: Path, tiny) -> torch.Tensor:
    return Preprocessor(tiny[0].data_config)([read_rgb(p) for p in find_images(photo_dir)])


def test_export_is_a_qdq_graph_with_the_packs_scales(tiny, tiny_export):
    pack = tiny[0]
    model = tiny_export.model
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_PACK] == pack.fingerprint
    bns = [n for n, m in pack.build_model().named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sorted(f.bn for f in tiny_export.folds) == sorted(bns)   # every BatchNorm folded
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Mark" not in ops
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # Every activation quantizer of the pack is in the graph with its scale, number for number.
    for key, value in pack.quant_state.items():
        if key.endswith("input_quant.scale"):
            names = [n for n in inits if n.startswith(f"{key}_")]
            assert names and all(inits[n] == value.numpy() for n in names), key
    # Weights are int8 on the pack's grid: int8 x the pack's scale (times the fold) = the
    # simulation's fake-quantized weight.
    sim = pack.build_model()
    layer = sim.get_submodule(tiny_export.folds[3].conv)
    q = inits[f"{tiny_export.folds[3].conv}.weight_q"].astype(np.float64)
    shape = (-1,) + (1,) * (q.ndim - 1)
    w = q * layer.weight_scale.double().numpy().reshape(shape)
    assert np.allclose(w, layer.weight.detach().double().numpy(), atol=1e-7)


def test_onnxruntime_runs_it_on_integer_kernels_and_matches_the_simulation(tiny, tiny_export,
                                                                         photos):
    sim = tiny[0].build_model()
    backend = OrtBackend(tiny_export, sim)
    assert backend.ops.get("QLinearConv", 0) >= 40 and backend.ops.get("Conv", 0) == 1
    with torch.no_grad():
        expected = sim(photos)
    got = backend.predict(photos)
    # Random weights give near-uniform logits; compare values, not arg-maxes.
    assert torch.corrcoef(torch.stack([expected.flatten(), got.flatten()]))[0, 1] > 0.99


def test_real_lite0_w8a8_agrees_with_the_simulation_on_the_photos(photo_dir):
    spec = ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0")
    pack = build_pack(spec, QuantConfig.parse("w8a8"), find_images(photo_dir), num_images=8,
                      num_stats_images=8, progress=False)
    photos = Preprocessor(pack.data_config)([read_rgb(p) for p in find_images(photo_dir)])
    sim = pack.build_model()
    backend = OrtBackend(export_pack(pack), sim)
    with torch.no_grad():
        expected = sim(photos).argmax(1)
    got = backend.predict(photos).argmax(1)
    assert int((expected == got).sum()) >= len(photos) - 1   # 24 photos: at most one differs


def test_narrow_grids_run_on_the_8_bit_kernels_with_integer_clips(make_pack, photos):
    pack, _ = make_pack(TINY, "w4a4")
    export = export_pack(pack)
    clips = [n for n in export.model.graph.node if n.op_type == "Clip"]
    assert clips   # 4-bit grids clamp on the quantized uint8 tensor
    sim = pack.build_model()
    backend = OrtBackend(export, sim)
    assert backend.ops.get("QLinearConv", 0) >= 40
    with torch.no_grad():
        expected = sim(photos)
    assert torch.corrcoef(torch.stack([expected.flatten(),
                                       backend.predict(photos).flatten()]))[0, 1] > 0.98


def _perturbed_norms(model: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    norms = {}
    for name, norm in prediction_norms(model).items():
        c = norm.mean.numel()
        std = norm.var.sqrt()   # a shift of the statistics, as a new domain brings
        norms[name] = type(norm)(norm.mean + 0.1 * std * torch.randn(c, generator=g),
                                 norm.var * (1 + 0.2 * torch.rand(c, generator=g)),
                                 norm.weight * (1 + 0.05 * torch.randn(c, generator=g)),
                                 norm.bias + 0.05 * norm.bias.abs() * torch.randn(c, generator=g),
                                 norm.eps)
    return norms


def test_apply_equals_exporting_the_adapted_model(tiny, tiny_export, photos):
    """Folding new statistics and affines into scales and biases gives the int8 model of a
    pack whose BatchNorms had those values: the weights never need re-quantizing."""
    pack = tiny[0]
    backend = OrtBackend(tiny_export, pack.build_model())
    adapted = pack.build_model()
    norms = _perturbed_norms(adapted, 0)
    for name, module in adapted.named_modules():
        if name in norms:
            n = norms[name]
            module.running_mean.copy_(n.mean)
            module.running_var.copy_(n.var)
            module.weight.data.copy_(n.weight)
            module.bias.data.copy_(n.bias)
    backend.apply(norms)
    again = OrtBackend(export_pack(pack, adapted), pack.build_model())
    assert torch.equal(backend.predict(photos), again.predict(photos))
    with torch.no_grad():   # and it follows the simulation of the adapted model
        expected = adapted(photos)
    assert torch.corrcoef(torch.stack([expected.flatten(),
                                       backend.predict(photos).flatten()]))[0, 1] > 0.99


def test_no_frame_is_classified_with_half_applied_parameters(tiny, tiny_export, photos):
    pack = tiny[0]
    model = pack.build_model()
    backend = OrtBackend(tiny_export, model)
    x = photos[:2]
    a_norms, b_norms = prediction_norms(model), _perturbed_norms(model, 1)
    b_shift = torch.linspace(-0.5, 0.5, model.num_features)
    backend.apply(a_norms)
    a = backend.predict(x)
    backend.apply(b_norms, b_shift)
    b = backend.predict(x)
    # A half-applied set (B's normalizations with A's shift) is told apart from both.
    backend.apply(b_norms)
    half = backend.predict(x)
    assert not torch.equal(half, a) and not torch.equal(half, b)
    backend.apply(a_norms)

    stop, seen, bad = threading.Event(), [], []

    def classify() -> None:
        while not stop.is_set():
            out = backend.predict(x)
            seen.append(out)
            if not (torch.equal(out, a) or torch.equal(out, b)):
                bad.append(out)

    worker = threading.Thread(target=classify)
    worker.start()
    try:
        for i in range(12):
            backend.apply(*((b_norms, b_shift) if i % 2 == 0 else (a_norms, None)))
    finally:
        stop.set()
        worker.join()
    assert seen and not bad
    assert backend.version >= 12


def test_an_export_of_another_pack_is_refused_with_the_reason(tiny, tiny_export, make_pack,
                                                             tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    other, _ = make_pack(TINY, "w4a4")
    loaded = Int8Export.load(str(path))
    loaded.check_pack(tiny[0])   # its own pack: fine
    with pytest.raises(ExportMismatch, match="made from pack"):
        loaded.check_pack(other)
    with pytest.raises(ExportMismatch, match="made from pack"):
        Engine(other, backend="onnxruntime", int8_model=str(path), warmup=False)
    engine = Engine(other, backend="auto", int8_model=str(path), warmup=False)
    assert engine.backend is None and "made from pack" in engine.backend_warning
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportMismatch, match="not a readable ONNX"):
        Int8Export.load(str(tmp_path / "junk.onnx"))


def test_what_the_export_cannot_fold_is_refused_naming_the_layer(make_pack):
    pack, _ = make_pack("test_efficientnet", "w8a8")   # SiLU activations
    with pytest.raises(ExportError, match="'bn1' is followed by SiLU"):
        export_pack(pack)
    with pytest.raises(ExportError, match="SiLU"):
        Engine(pack, backend="onnxruntime", warmup=False)
    engine = Engine(pack, backend="auto", warmup=False)
    assert engine.backend_name == "torch" and "SiLU" in engine.backend_warning
    assert engine.stats().backend == "torch"


def test_a_runtime_that_does_not_fuse_the_graph_is_refused(tiny, tiny_export):
    model = tiny[0].build_model()
    # ONNX Runtime without its graph optimizations has no QDQ fusion: float kernels only.
    with pytest.raises(BackendError, match="did not fuse the int8 export"):
        OrtBackend(tiny_export, model, optimize=False)
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        OrtBackend(tiny_export, model, provider="TensorrtExecutionProvider")


def test_batch_mode_and_unsupported_methods_stay_on_torch(tiny):
    pack = tiny[0]
    with pytest.raises(BackendError, match="batch mode"):
        Engine(pack, backend="onnxruntime", mode="batch", warmup=False)
    engine = Engine(pack, EngineConfig(method="t3a", backend="auto"), warmup=False)
    assert engine.backend is None and "t3a" in engine.backend_warning


def test_adaptation_keeps_working_on_the_integer_model(tiny, tiny_export, photos, tmp_path):
    """Streaming ZOA on the int8 runtime: each step's normalizations and activation shift
    reach the integer model, which then predicts what the torch reference predicts. (The
    always-adapting rule: the shift gate would keep the source model on these clean photos.)"""
    pack = tiny[0]
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    engine = Engine(pack, EngineConfig(method="zoa", backend="onnxruntime",
                                       int8_model=str(path), batch_size=8, min_frames=8,
                                       method_config={"min_adapt_batch": 8,
                                                      "detect_min_batch": 8,
                                                      "no_harm": False}))
    assert engine.backend_name == "onnxruntime"
    before = engine.backend.predict(photos)
    for i in range(16):
        engine.predict(photos[i:i + 1], observe=True)
        engine.maybe_adapt()
    stats = engine.stats()
    assert stats.adapt_steps == 2 and stats.backend_updates >= 3 and stats.backend == "onnxruntime"
    assert engine.method.params.shift_h is not None   # the step moved the reference
    after = engine.backend.predict(photos)
    assert not torch.equal(before, after)
    with torch.no_grad():
        reference = engine.method.predict(photos)
    assert torch.corrcoef(torch.stack([reference.flatten(), after.flatten()]))[0, 1] > 0.99
    engine.reset()   # back to the source on both
    assert torch.equal(engine.backend.predict(photos), before)


@pytest.mark.parametrize("no_harm", [True, False])
def test_the_int8_model_follows_the_shift_gate(tiny, tiny_export, photos, tmp_path, no_harm):
    """No-harm ZOA (the streaming default): while the shift gate is closed the integer model
    gets the source model's normalizations, whatever the running estimate holds; without the
    gate it gets the estimate."""
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    engine = Engine(tiny[0], EngineConfig(method="zoa", backend="onnxruntime",
                                          int8_model=str(path),
                                          method_config={"no_harm": no_harm}), warmup=False)
    method = engine.method
    if no_harm:
        assert method.gate is not None and not method.gate.adapting
    source = engine.backend.predict(photos)
    # a running estimate far from the source (frames folded while a gate was open)
    method.store.update_stats(lambda stats: tuple((m + 0.5, v * 2) for m, v in stats))
    engine._sync_backend()   # what every step and statistics replay ends with
    assert torch.equal(engine.backend.predict(photos), source) == no_harm


def test_a_replay_shows_the_shift_gate_every_frame(tiny, tiny_export, photos, tmp_path):
    """Frames the int8 runtime classified reach ZOA's shift gate one by one when replayed, as
    the torch reference's own predictions do: the gate tests the same windows."""
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    frames = photos.repeat(6, 1, 1, 1)[:40]
    gates = []
    for backend in ("torch", "onnxruntime"):
        engine = Engine(tiny[0], EngineConfig(method="zoa", backend=backend, int8_model=str(path),
                                              stats_every=40, buffer_size=64), warmup=False)
        for frame in frames:
            engine.predict(frame[None], observe=True)
        engine.maybe_adapt()   # the int8 engine replays its 40 frames here
        gates.append(engine.method.gate.summary()["tests"])
    assert gates[0] == gates[1] == (40 - 32) // 4 + 1


def test_auto_keeps_a_gated_method_on_the_torch_reference(tiny, tiny_export, tmp_path):
    """``auto``: streaming ZOA with its shift gate (the default) classifies on torch, where the
    gate sees each frame as it is classified; without the gate, and when asked, on int8."""
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    gated = Engine(tiny[0], EngineConfig(method="zoa", backend="auto", int8_model=str(path)),
                   warmup=False)
    assert gated.backend_name == "torch" and gated.backend_warning is None
    for config in ({"method_config": {"no_harm": False}, "backend": "auto"},
                   {"backend": "onnxruntime"}):
        engine = Engine(tiny[0], EngineConfig(method="zoa", int8_model=str(path), **config),
                        warmup=False)
        assert engine.backend_name == "onnxruntime"


def test_export_and_classify_commands(tiny, photo_dir, tmp_path, capsys):
    _, pack_path = tiny
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--pack", str(pack_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BatchNorms folded" in printed and "QLinearConv" in printed
    image = sorted(photo_dir.iterdir())[0]
    assert main(["classify", "--pack", str(pack_path), "--backend", "onnxruntime",
                 "--int8-model", str(out), "--json", str(image)]) == 0
    assert '"top5"' in capsys.readouterr().out


def test_replayed_statistics_are_the_frames_rule_a_few_frames_later(tiny, photos):
    """Statistics folded by replaying the observed frames (what the int8 runtime needs) give
    the frames rule's estimate exactly when replayed after every frame; in groups they take
    the frames in later, with one replay per group."""
    pack = tiny[0]
    config = EngineConfig(method="norm", batch_size=8, min_frames=8, warmup=False)
    every_frame = Engine(pack, config)
    replayed = Engine(pack, config, stats_every=1)
    grouped = Engine(pack, config, stats_every=4)
    for i in range(12):
        for engine in (every_frame, replayed, grouped):
            engine.predict(photos[i:i + 1], observe=True)
            engine.maybe_adapt()
    a, b = every_frame.method.stats.estimate, replayed.method.stats.estimate
    assert all(torch.equal(m1, m2) and torch.equal(v1, v2) for (m1, v1), (m2, v2) in zip(a, b))
    stats = grouped.stats()
    assert stats.stats_frames_replayed == 12 and stats.stats_frames_dropped == 0
    source = Engine(pack, config).method.stats.estimate
    g, f, s0 = (e[5][0] for e in (grouped.method.stats.estimate, a, source))
    assert (g - f).abs().sum() < (s0 - f).abs().sum()   # it followed the frames


def test_auto_without_onnxruntime_classifies_with_torch_and_says_why(tiny, tiny_export,
                                                                    tmp_path, monkeypatch):
    import zoa_ros.core.backend.ort as ort_module

    def missing():
        raise BackendError("backend 'onnxruntime' needs the onnxruntime package")

    monkeypatch.setattr(ort_module, "import_onnxruntime", missing)
    path = tmp_path / "tiny.onnx"
    tiny_export.save(str(path))
    engine = Engine(tiny[0], backend="auto", int8_model=str(path), warmup=False)
    assert engine.backend is None and "needs the onnxruntime package" in engine.backend_warning
    with pytest.raises(BackendError, match="onnxruntime package"):
        Engine(tiny[0], backend="onnxruntime", int8_model=str(path), warmup=False)
