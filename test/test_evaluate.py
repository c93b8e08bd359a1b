"""``zoa-ros evaluate``: frame streams, the continual benchmark end to end, its report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import stand_in_factory, without_timing
from PIL import Image

from zoa_ros.core import engine as engine_module
from zoa_ros.core.data.corruptions import corrupt, derive_seed
from zoa_ros.core.data.stream import CorruptionStream, subset
from zoa_ros.core.data.stream_order import order
from zoa_ros.core.eval.evaluation import evaluate
from zoa_ros.core.files.sample_photos import load_photo
from zoa_ros.core.model.labels import wnid_to_index
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.tools import cli
from zoa_ros.tools import evaluate as evaluate_tool
from zoa_ros.tools.report import position_accuracy

# photo -> an ImageNet class it shows
CLASSES = {"chelsea": "n02123045", "coffee": "n03063599", "rocket": "n04266014",
           "motorcycle": "n03785016"}


@pytest.fixture(scope="module")
def wnid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real photos in ImageNet wnid folders (each photo and four crops of it)."""
    root = tmp_path_factory.mktemp("wnids")
    for name, wnid in CLASSES.items():
        image = load_photo(name)
        h, w = image.shape[:2]
        (root / wnid).mkdir()
        Image.fromarray(image).save(root / wnid / f"{name}.png")
        for k, (top, left) in enumerate([(0, 0), (h // 3, w // 3), (0, w // 3), (h // 3, 0)]):
            crop = image[top:top + 2 * h // 3, left:left + 2 * w // 3]
            Image.fromarray(crop).save(root / wnid / f"{name}_{k}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def vit(make_pack) -> tuple:
    return make_pack("test_vit")


@pytest.fixture
def methods(monkeypatch: pytest.MonkeyPatch) -> str:
    """The registry's ``none,zoa`` when they exist, otherwise the test stand-ins."""
    try:
        from zoa_ros.core.adapt import registry
        if {"none", "zoa"} <= set(registry.available()):
            return "none,zoa"
    except ImportError:
        pass
    monkeypatch.setattr(engine_module, "create_method", stand_in_factory)
    return "none,shift"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate_tool.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_end_to_end_is_deterministic_and_reports(wnid_dir, vit, methods, tmp_path,
                                                   capsys) -> None:
    _, pack_path = vit
    results = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        args = parse("--pack", str(pack_path), "--data", str(wnid_dir),
                     "--corruptions", "gaussian_noise,jpeg_compression", "--rounds", "2",
                     "--batch-size", "16", "--methods", methods, "--seed", "7",
                     "--json", str(out), "--report", str(tmp_path / f"report{i}"))
        assert evaluate_tool.run(args) == 0
        results.append(json.loads(out.read_text()))
    first = results[0]
    names = methods.split(",")
    assert list(first["methods"]) == names
    for name in names:
        r = first["methods"][name]
        assert [(d["name"], d["round"], d["frames"]) for d in r["domains"]] == [
            ("gaussian_noise", 1, 20), ("jpeg_compression", 1, 20),
            ("gaussian_noise", 2, 20), ("jpeg_compression", 2, 20)]
        assert all(0.0 <= d["acc"] <= 100.0 for d in r["domains"])
        assert r["mean_acc"] == pytest.approx(np.mean([d["acc"] for d in r["domains"]]))
        assert [x["round"] for x in r["rounds"]] == [1, 2]
        assert set(r["costs"]) >= {"forward_per_frame", "backward_per_frame", "ms_per_frame",
                                   "peak_mb"}
        assert r["costs"]["ms_per_frame"] > 0 and r["costs"]["peak_mb"] > 0
        assert set(r["bank"]) == {"entries", "bytes"} and isinstance(r["domain_changes"], int)
        assert r["curve"]["frames"] == [16, 20, 36, 40, 56, 60, 76, 80]
    none = first["methods"]["none"]["costs"]
    assert none["forward_per_frame"] == pytest.approx(1.0) and none["adapt_steps"] == 0
    adapting = first["methods"][names[1]]["costs"]
    assert adapting["adapt_steps"] == 4  # the 4-frame tails are below min_frames
    assert adapting["forward_per_frame"] == pytest.approx((4 * 16 * 2 + 4 * 4) / 80)
    config = first["config"]
    assert config["seed"] == 7 and config["pack_info"]["fingerprint"]
    assert {"torch", "timm", "zoa_ros"} <= set(config["versions"])
    assert without_timing(results[0]) == without_timing(results[1])
    log = capsys.readouterr().err             # no tty: one line per segment instead of a bar
    lines = [x for x in log.splitlines() if "frames):" in x]
    assert len(lines) == 2 * 4 and "round 2 jpeg_compression (20 frames): none " in lines[3]
    assert f"{names[1]} {first['methods'][names[1]]['domains'][3]['acc']:.1f}" in lines[3]
    report = (tmp_path / "report0" / "report.md").read_text()
    assert "| 2 | jpeg_compression | 20 |" in report and names[1] in report
    assert (tmp_path / "report0" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # accuracy by position in the domain: 20-frame domains are a 16-frame and a 4-frame chunk
    for name in names:
        r = first["methods"][name]
        for rnd in r["rounds"]:
            head, second, rest = position_accuracy(r)[rnd["round"]]
            assert rest is None
            assert (16 * head + 4 * second) / 20 == pytest.approx(rnd["mean_acc"])
    assert "## Accuracy (%) by position in the domain" in report
    # the report renders again from the saved JSON, identically
    assert cli.main(["report", str(tmp_path / "run0.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == report
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert cli.main(["report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2


def test_streaming_mode_and_limit(wnid_dir, vit, methods, tmp_path) -> None:
    _, pack_path = vit
    out = tmp_path / "stream.json"
    # the step mechanics: no shift gate deciding whether a step runs (34 frames are too few
    # for its 32-frame window anyway)
    args = parse("--pack", str(pack_path), "--data", str(wnid_dir), "--corruptions",
                 "clean,contrast", "--mode", "streaming", "--batch-size", "16", "--limit", "17",
                 "--methods", methods, "--json", str(out), "--method-config",
                 f"{methods.split(',')[1]}.no_harm=false")
    assert evaluate_tool.run(args) == 0
    result = json.loads(out.read_text())
    for r in result["methods"].values():
        assert [d["frames"] for d in r["domains"]] == [17, 17]
    none = result["methods"]["none"]
    assert none["costs"]["forward_per_frame"] == pytest.approx(1.0)
    assert none["engine"]["frames_observed"] == 34 and none["engine"]["adapt_steps"] == 2
    adapting = result["methods"][methods.split(",")[1]]["costs"]
    assert adapting["adapt_steps"] == 2  # every 16 frames
    # inference once per frame, plus at most 2 forwards of 16 per step
    assert 1.0 < adapting["forward_per_frame"] <= (34 + 2 * 2 * 16) / 34


def test_imagenet_c_layout(tmp_path, vit, methods) -> None:
    _, pack_path = vit
    pre = Preprocessor(vit[0].data_config)
    for corruption in ("fog", "pixelate"):
        for name, wnid in CLASSES.items():
            folder = tmp_path / "inc" / corruption / "3" / wnid
            folder.mkdir(parents=True)
            crop = corrupt(pre.crop(load_photo(name)), corruption, 3, seed=1)
            Image.fromarray(crop).save(folder / f"{name}.png")
    big = load_photo("astronaut")  # not at input size: center-cropped on load
    Image.fromarray(big).save(tmp_path / "inc" / "fog" / "3" / "n03063599" / "big.png")
    out = tmp_path / "inc.json"
    args = parse("--pack", str(pack_path), "--data", str(tmp_path / "inc"), "--layout",
                 "imagenet-c", "--corruptions", "fog,pixelate", "--severity", "3",
                 "--batch-size", "4", "--methods", methods, "--json", str(out))
    assert evaluate_tool.run(args) == 0
    domains = json.loads(out.read_text())["methods"]["none"]["domains"]
    assert [(d["name"], d["frames"]) for d in domains] == [("fog", 5), ("pixelate", 4)]


def test_corruption_stream_is_seeded_and_worker_independent() -> None:
    crops = [np.asarray(Image.fromarray(load_photo(n)).resize((64, 64))) for n in CLASSES]
    ids = [3, 5, 8, 13]
    labels = [wnid_to_index(w) for w in CLASSES.values()]
    make = lambda workers: list(CorruptionStream(  # noqa: E731
        crops, labels, ids, ["shot_noise", "clean"], severity=2, rounds=2, seed=4,
        workers=workers))
    local, pooled = make(0), make(2)
    assert [(s.name, s.round, len(s)) for s in local] == [
        ("shot_noise", 1, 4), ("clean", 1, 4), ("shot_noise", 2, 4), ("clean", 2, 4)]
    for a, b in zip(local, pooled):
        assert a.labels == b.labels and all(np.array_equal(x, y)
                                            for x, y in zip(a.frames, b.frames))
    first = local[0]
    seq = order(4, 4, "shot_noise", 1)
    assert first.labels == [labels[j] for j in seq]
    expected = corrupt(crops[seq[0]], "shot_noise", 2, derive_seed(4, "shot_noise", ids[seq[0]]))
    assert np.array_equal(first.frames[0], expected)
    # the same corrupted images every round, in another order
    assert sorted(x.tobytes() for x in local[0].frames) == \
        sorted(x.tobytes() for x in local[2].frames)
    assert local[0].labels != local[2].labels
    # --same-order: round 2 replays round 1 frame for frame
    same = list(CorruptionStream(crops, labels, ids, ["shot_noise", "clean"], severity=2,
                                 rounds=2, seed=4, same_order=True))
    assert same[0].labels == same[2].labels == first.labels
    assert all(np.array_equal(x, y) for x, y in zip(same[0].frames, same[2].frames))
    assert subset(10, 4, 0) == subset(10, 4, 0) and len(subset(10, 4, 0)) == 4
    assert subset(10, None, 0) == list(range(10))


def test_library_evaluate_with_a_custom_stream(vit) -> None:
    pack, _ = vit
    pre = Preprocessor(pack.data_config)
    crops = [pre.crop(load_photo(n)) for n in CLASSES]
    labels = [wnid_to_index(w) for w in CLASSES.values()]
    stream = CorruptionStream(crops * 4, labels * 4, range(16), ["brightness"], seed=1)
    seen = []
    result = evaluate(pack, stream, ["none", "shift"], mode="batch", batch_size=16,
                      progress=False, method_factory=stand_in_factory,
                      on_segment=lambda seg, accs: seen.append((seg.name, sorted(accs))))
    assert seen == [("brightness", ["none", "shift"])]
    shift = result["methods"]["shift"]
    assert shift["costs"]["adapt_steps"] == 1 and shift["costs"]["forward_per_frame"] == 2.0
    assert result["stream"] == [{"name": "brightness", "round": 1, "frames": 16}]
    with pytest.raises(ValueError, match="distinct"):
        evaluate(pack, stream, ["none", "none"], method_factory=stand_in_factory)


def test_arguments_and_errors(wnid_dir, vit, tmp_path) -> None:
    assert evaluate_tool.parse_method_config(["lr=1e-4", "zoa.spsa_c=0.02", "tag=abc"],
                                             ["none", "zoa"]) == {
        "none": {"lr": 1e-4, "tag": "abc"},
        "zoa": {"lr": 1e-4, "spsa_c": 0.02, "tag": "abc"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        evaluate_tool.parse_method_config(["lr"], ["zoa"])
    with pytest.raises(SystemExit):
        parse("--pack", "p", "--data", "d", "--json", "o", "--corruptions", "rain")
    args = parse("--pack", "p", "--data", "d", "--json", "o")
    assert args.corruptions[0] == "gaussian_noise" and len(args.corruptions) == 15
    assert (args.severity, args.rounds, args.batch_size, args.mode, args.methods, args.seed) == \
        (5, 1, 64, "batch", ["none", "zoa"], 0)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,class_index\n" + "".join(
        f"{p.relative_to(wnid_dir)},5000\n" for p in sorted(wnid_dir.rglob("*.png"))))
    bad = parse("--pack", str(vit[1]), "--data", str(wnid_dir), "--labels", str(csv),
                "--corruptions", "clean", "--methods", "none", "--json", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="outside the model's 1000 classes"):
        evaluate_tool.run(bad)


def test_bank_files_save_load_and_refuse(wnid_dir, vit, tmp_path, capsys) -> None:
    """--save-bank writes the engine's bank; --load-bank starts the next run from it; a bank of
    another pack is refused (exit status 2) before the stream starts."""
    from zoa_ros.core.bank import file as bank_file
    from zoa_ros.core.engine import Engine, EngineConfig
    from zoa_ros.tools import cli

    _, pack_path = vit
    bank = tmp_path / "mission.zoabank"
    common = ("--pack", str(pack_path), "--data", str(wnid_dir), "--batch-size", "16",
              "--methods", "none,zoa", "--method-config", "zoa.detect_min_batch=16",
              "zoa.domain_t=0.0")
    out = tmp_path / "save.json"
    assert cli.main(["evaluate", *common, "--corruptions", "gaussian_noise,contrast",
                     "--save-bank", str(bank), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    zoa = saved["methods"]["zoa"]
    state, meta = bank_file.read(bank)
    entries = zoa["bank"]["entries"]
    assert entries >= 1 and state.entries.shape[0] == meta["entries"] == entries
    weights = torch.softmax(state.alpha_scale * state.alpha.double(), dim=0)
    assert weights.tolist() == pytest.approx(zoa["domains"][-1]["bank_weights"], abs=1e-9)
    assert "bank_weights" not in saved["methods"]["none"]["domains"][-1]
    assert saved["config"]["save_bank"] == str(bank)
    assert saved["config"]["bank_files"] == {"load": None, "saved": {"zoa": str(bank)}}
    assert meta["provenance"] == {"writer": "zoa-ros evaluate"}

    runs = {}
    for name, extra in (("fresh", ()), ("loaded", ("--load-bank", str(bank)))):
        path = tmp_path / f"{name}.json"
        assert cli.main(["evaluate", *common, "--corruptions", "contrast", "--limit", "16",
                         *extra, "--json", str(path)]) == 0
        runs[name] = json.loads(path.read_text())
    loaded = runs["loaded"]
    assert loaded["config"]["load_bank"] == str(bank)
    record = loaded["config"]["bank_files"]["load"]
    assert record["methods"] == ["zoa"] and record["entries"] == entries
    assert record["content_sha256"] == meta["content_sha256"]
    assert loaded["methods"]["zoa"]["bank"]["entries"] >= entries
    assert runs["fresh"]["methods"]["zoa"]["bank"]["entries"] < entries
    # the saved bank is not neutral: the first batch is classified differently
    assert loaded["methods"]["zoa"]["curve"]["entropy"][0] != \
        pytest.approx(runs["fresh"]["methods"]["zoa"]["curve"]["entropy"][0], abs=1e-6)
    assert loaded["methods"]["none"]["domains"] == runs["fresh"]["methods"]["none"]["domains"]

    # the same model calibrated again (another pack, the same adapted layers)
    other_pack = dataclasses.replace(vit[0], calibration={**vit[0].calibration, "run": 2})
    assert other_pack.fingerprint != vit[0].fingerprint
    foreign = tmp_path / "foreign.zoabank"
    engine = Engine(other_pack, EngineConfig(method="zoa"))
    engine.save_bank(foreign)
    engine.close()
    capsys.readouterr()
    refused = tmp_path / "refused.json"
    assert cli.main(["evaluate", *common, "--corruptions", "contrast", "--limit", "16",
                     "--load-bank", str(foreign), "--json", str(refused)]) == 2
    assert "belongs to model pack" in capsys.readouterr().err and not refused.exists()
    # nothing to save: refused before the stream
    assert cli.main(["evaluate", "--pack", str(pack_path), "--data", str(wnid_dir),
                     "--methods", "none", "--corruptions", "contrast", "--limit", "4",
                     "--save-bank", str(tmp_path / "x.zoabank"), "--json", str(refused)]) == 2
    assert "no method of this run has a knowledge bank" in capsys.readouterr().err


def test_bank_save_paths_and_replay_arguments() -> None:
    from zoa_ros.core.eval.evaluation import bank_save_paths
    from zoa_ros.tools import cli

    assert bank_save_paths("f/run.zoabank", ["zoa"]) == {"zoa": "f/run.zoabank"}
    assert bank_save_paths("f/run.zoabank", ["zoa", "zoa2"]) == {
        "zoa": "f/run.zoa.zoabank", "zoa2": "f/run.zoa2.zoabank"}
    assert bank_save_paths("f/run.zoabank", ["zoa", "zoa2"], "zoa2") == {"zoa2": "f/run.zoabank"}
    with pytest.raises(ValueError, match="no method"):
        bank_save_paths("f/run.zoabank", [])
    with pytest.raises(ValueError, match="not a method of this run with a knowledge bank"):
        bank_save_paths("f/run.zoabank", ["zoa"], "none")
    args = cli.build_parser().parse_args(["replay", "bag", "--pack", "p", "--json", "o",
                                          "--load-bank", "a", "--save-bank", "b",
                                          "--save-bank-method", "zoa"])
    assert (args.load_bank, args.save_bank, args.save_bank_method) == ("a", "b", "zoa")
    args.live = True
    with pytest.raises(ValueError, match="do not apply with --live"):
        args.run(args)


def test_report_says_what_a_method_cannot_do(wnid_dir, vit, tmp_path) -> None:
    """The report names caveats: ``norm`` on a LayerNorm model is ``none``; TENT through fake
    quantization is a straight-through variant whose autograd graph is measured."""
    _, pack_path = vit
    out = tmp_path / "notes.json"
    args = parse("--pack", str(pack_path), "--data", str(wnid_dir), "--corruptions", "fog",
                 "--batch-size", "16", "--limit", "16", "--methods", "none,norm,tent",
                 "--json", str(out), "--report", str(tmp_path / "report"))
    assert evaluate_tool.run(args) == 0
    runs = json.loads(out.read_text())["methods"]
    assert runs["none"]["note"] is None and runs["none"]["costs"]["graph_mb"] == 0
    assert "LayerNorm" in runs["norm"]["note"]
    assert "straight-through" in runs["tent"]["note"] and runs["tent"]["costs"]["graph_mb"] > 0
    assert all(r["streaming"]["supported"] for r in runs.values())
    report = (tmp_path / "report" / "report.md").read_text()
    notes = report.split("## Method notes", 1)[1]
    assert "**norm**: LayerNorm" in notes and "**tent**" in notes and "**none**" not in notes
    assert "autograd graph of one adaptation step" in notes
