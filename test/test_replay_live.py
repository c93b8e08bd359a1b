"""``zoa-ros replay --live``: a short bag played into a real ``zoa_node`` process (started by
the tool on its own isolated graph: own ROS_DOMAIN_ID, localhost discovery, ROS_HOME in a temp
folder), its answers scored and compared with the offline engine on the same frames."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from zoa_ros.core.data.bags.stream import BagStream
from zoa_ros.core.engine import Engine, EngineConfig
from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.core.model.preprocess import Preprocessor
from zoa_ros.tools.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")

DOMAIN = 150 + os.getpid() % 80
SCHEDULE = "clean:16,gaussian_noise:12,fog:12"   # 40 frames


def zoa(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def vit(saved_vit_pack: tuple) -> tuple:
    return saved_vit_pack


@pytest.fixture(scope="module")
def bag(photo_dir: Path, vit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 tiny frames (40x32) at 20 Hz; labels are the model's predictions on the clean
    photos, so accuracy is neither 0 nor trivially 100 %."""
    engine = Engine(vit[0], EngineConfig(method="none", top_k=1))
    paths = find_images(photo_dir)
    predicted = [p.class_index for p in engine.predict([read_rgb(p) for p in paths])]
    engine.close()
    folder = tmp_path_factory.mktemp("live_bag")
    labels = folder / "labels.csv"
    labels.write_text("path,class_index\n" + "".join(
        f"{p.relative_to(photo_dir)},{c}\n" for p, c in zip(paths, predicted)))
    out = folder / "bag"
    assert zoa("make-bag", "--data", photo_dir, "--labels", labels, "--out", out,
               "--schedule", SCHEDULE, "--resize", "40x32", "--rate", "20",
               "--severity", "3") == 0
    return out


def offline_predictions(pack, bag: Path) -> list[int]:
    """What the offline replay classifies, frame by frame: the bag's frames cropped to the
    model's input as ``zoa-ros replay`` crops them, through an engine with method none."""
    pre = Preprocessor(pack.data_config)
    stream = BagStream(bag, crop=pre.crop, input_hw=tuple(pre.input_size[1:]))
    engine = Engine(pack, EngineConfig(method="none", top_k=1))
    try:
        return [engine.predict(pre.normalize([frame]))[0].class_index
                for segment in stream for frame in segment.frames]
    finally:
        engine.close()


def live_replay(bag: Path, pack: Path, out: Path, method: str, *extra: object) -> dict:
    assert zoa("replay", bag, "--pack", pack, "--live", "--methods", method, "--rate", "0.5",
               "--batch-size", "8", "--domain-id", DOMAIN, "--settle", "3",
               "--json", out / f"{method}.json", "--report", out / method, *extra) == 0
    return json.loads((out / f"{method}.json").read_text())


def test_live_node_matches_offline_engine(bag, vit, tmp_path, capsys) -> None:
    pack, pack_path = vit
    result = live_replay(bag, pack_path, tmp_path, "none")
    live = result["live"]

    # every published frame was answered or counted dropped, and the drops are listed
    assert live["started_node"] and live["method"] == "none" and live["clock"]
    assert live["frames_published"] == 40
    assert live["frames_answered"] + live["frames_dropped"] == 40
    assert live["frames_answered"] >= 20, live["dropped"]   # half speed: most are answered
    per_frame = live["per_frame"]
    dropped = [i for i, c in enumerate(per_frame["live"]) if c is None]
    assert [d["index"] for d in live["dropped"]] == dropped
    assert live["unmatched_answers"] == 0 and live["node_exit"] == 0
    counters = live["node_counters"]
    if counters is not None:   # from the node's /diagnostics
        assert counters["classified"] == live["frames_answered"]
        assert (live["lost_in_transport"] + counters["dropped"] + counters["malformed"]
                == live["frames_dropped"])

    # for every answered frame the node predicted what the offline replay predicts
    offline = offline_predictions(pack, bag)
    assert len(set(offline)) > 1, "a constant model would make this comparison vacuous"
    for i, predicted in enumerate(per_frame["live"]):
        if predicted is not None:
            assert predicted == offline[i], f"frame {i}"
    assert per_frame["offline"] == offline           # the tool's own offline twin
    check = live["offline"]
    assert check["compared"] == live["frames_answered"] == check["same"]
    assert check["differing"] == [] and check["first_difference"] is None

    # the evaluate/replay result shape, scored over the answered frames
    run = result["methods"]["none"]
    labels = per_frame["label"]
    assert [(d["name"], d["frames"]) for d in run["domains"]] == [
        ("clean", 16), ("gaussian_noise", 12), ("fog", 12)]
    start = 0
    for d in run["domains"]:
        answered = [i for i in range(start, start + d["frames"]) if i not in dropped]
        assert d["answered"] == len(answered) and d["dropped"] == d["frames"] - len(answered)
        hits = [offline[i] == labels[i] for i in answered]
        assert d["acc"] == pytest.approx(100.0 * sum(hits) / len(hits))
        start += d["frames"]
    assert run["domains"][0]["acc"] > run["domains"][1]["acc"]   # labels come from clean
    assert result["labelled"] and result["config"]["tool"] == "replay --live"
    assert live["latency_ms"]["inference"]["count"] == live["frames_answered"]
    report = (tmp_path / "none" / "report.md").read_text()
    assert "## Live replay" in report and "## Top-1 accuracy (%) per domain" in report
    assert (tmp_path / "none" / "accuracy.png").stat().st_size > 0
    assert "offline engine: same prediction on" in capsys.readouterr().out


def test_live_replay_bad_arguments(bag, vit, tmp_path, capsys) -> None:
    _, pack = vit
    common = ["--pack", pack, "--live", "--json", tmp_path / "x.json"]
    assert zoa("replay", bag, *common, "--methods", "none,tent") == 2
    assert "one method" in capsys.readouterr().err
    assert zoa("replay", bag, *common, "--method-config", "lr=1") == 2
    assert "--node-param" in capsys.readouterr().err
    assert zoa("replay", bag, *common, "--rate", "0") == 2
    assert zoa("replay", bag, *common, "--node-running", "--node-param", "top_k=1") == 2
    assert not (tmp_path / "x.json").exists()
