"""rosbag2 recordings: ``zoa-ros make-bag``, the bag frame stream, ``zoa-ros replay``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import without_timing

from zoa_ros.core.data.bags.files import INT32, STRING, raw_messages, typestore
from zoa_ros.core.data.bags.stream import BagStream
from zoa_ros.core.data.bags.writer import encode_compressed
from zoa_ros.core.data.corruptions import corrupt, derive_seed
from zoa_ros.core.data.domain_schedule import Visit, parse_schedule, scheduled_frames
from zoa_ros.core.data.stream_order import order
from zoa_ros.core.eval.evaluation import recovery_frames
from zoa_ros.core.files.images import find_images, read_rgb
from zoa_ros.tools.cli import main
from zoa_ros.tools.make_bag import DEFAULT_START_S, cover_crop

START_NS = round(DEFAULT_START_S * 1e9)


@pytest.fixture(scope="module")
def labels_csv(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labels.csv for the 24 photos: arbitrary but fixed class indices."""
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    rows = [f"{p.relative_to(photo_dir)},{(37 * i) % 1000}"
            for i, p in enumerate(find_images(photo_dir))]
    path.write_text("path,class_index\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def vit(saved_vit_pack: tuple) -> tuple:
    return saved_vit_pack


@pytest.fixture
def methods() -> str:
    return "none,zoa"


def zoa(*argv: str) -> int:
    return main([str(a) for a in argv])


def make_bag(photo_dir: Path, labels_csv: Path, out: Path, *extra: str) -> None:
    assert zoa("make-bag", "--data", photo_dir, "--labels", labels_csv, "--out", out,
               *extra) == 0


# ---- schedules --------------------------------------------------------------------------------

def test_schedule_parsing_and_cycling() -> None:
    assert parse_schedule("clean:3, fog:2") == [Visit("clean", 3), Visit("fog", 2)]
    for bad, reason in [("clean", r"DOMAIN\[@SEVERITY\]:FRAMES"), ("rain:3", "unknown domain"),
                        ("fog:0", "positive"), ("fog:x", "positive"), (",", "empty")]:
        with pytest.raises(ValueError, match=reason):
            parse_schedule(bad)
    frames = list(scheduled_frames(parse_schedule("fog:4,clean:2,fog:6"), 4, seed=5))
    fog = [f.image for f in frames if f.domain == "fog"]
    # one domain's frames run through its seeded permutations, across visits
    assert fog == order(4, 5, "fog", 1) + order(4, 5, "fog", 2) + order(4, 5, "fog", 3)[:2]
    assert [f.round for f in frames] == [1] * 6 + [2] * 6
    assert all(f.seed == derive_seed(5, f.domain, f.image) for f in frames)


def test_recovery_frames_definition() -> None:
    # segment accuracy 75 %: windows of 8 from frame 0, 1, 2 score 50, 62.5, 75 %; the
    # first at >= 70 % starts at frame 2
    hits = [False] * 4 + [True] * 12
    assert recovery_frames(hits, window=8, margin=5.0) == 2
    assert recovery_frames(hits, window=8, margin=0.0) == 2
    assert recovery_frames([False] * 8 + [True] * 8, window=4, margin=5.0) == 6
    assert recovery_frames([True] * 10, window=8) == 0       # no dip
    assert recovery_frames([True, False] * 3, window=32) == 0  # shorter than a window
    assert recovery_frames([]) is None


# ---- make-bag -> read back -------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [None, "png", "jpeg"])
def test_make_bag_round_trip(photo_dir, labels_csv, tmp_path, storage, compressed) -> None:
    out = tmp_path / "bag"
    extra = ["--compressed", compressed] if compressed else []
    make_bag(photo_dir, labels_csv, out, "--schedule", "clean:5,gaussian_noise:4,clean:3",
             "--resize", "48x40", "--rate", "10", "--seed", "2", "--severity", "3",
             "--storage", storage, *extra)
    # what the frames must be
    paths = find_images(photo_dir)
    classes = {line.split(",")[0]: int(line.split(",")[1])
               for line in labels_csv.read_text().splitlines()[1:]}
    plan = list(scheduled_frames(parse_schedule("clean:5,gaussian_noise:4,clean:3"),
                                 len(paths), seed=2))
    expected = [corrupt(cover_crop(read_rgb(paths[f.image]), 48, 40), f.domain, 3, f.seed)
                for f in plan]
    labels = [classes[str(paths[f.image].relative_to(photo_dir))] for f in plan]

    stream = BagStream(out)
    segments = list(stream)
    layout = [("clean", 1, 5), ("gaussian_noise", 1, 4), ("clean", 2, 3)]
    assert [(s.name, s.round, len(s)) for s in segments] == layout
    assert [(s.name, s.round, s.frames) for s in stream.plan()] == layout
    assert [y for s in segments for y in s.labels] == labels
    assert stream.stamps == [START_NS + i * 100_000_000 for i in range(12)]
    frames = [f for s in segments for f in s.frames]
    assert all(f.shape == (40, 48, 3) and f.dtype == np.uint8 for f in frames)
    if compressed == "jpeg":  # lossy: what the decoder makes of the encoded expected frames
        expected = [cv2.imdecode(np.frombuffer(encode_compressed(e, "jpeg"), np.uint8),
                                 cv2.IMREAD_COLOR)[:, :, ::-1] for e in expected]
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected))
    info = stream.describe()
    assert (info["messages"], info["malformed"], info["unlabelled_skipped"]) == (12, 0, 0)

    # the label documents: exactly the documented fields, the image's stamp
    store = typestore()
    texts = [store.deserialize_cdr(m.rawdata, m.msgtype).data
             for m in raw_messages(out, {"/camera/labels"})]
    docs = [json.loads(t) for t in texts]
    assert docs[6] == {"stamp": {"sec": int(DEFAULT_START_S), "nanosec": 600_000_000},
                       "class_index": labels[6], "domain": "gaussian_noise"}
    images = [store.deserialize_cdr(m.rawdata, m.msgtype)
              for m in raw_messages(out, {"/camera/image_raw"})]
    assert all(m.header.frame_id == "camera" for m in images)
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == \
        stream.stamps

    # metadata.yaml: rosbag2 version 9, readable by rosbags, the wheels' type hashes
    from rosbags.rosbag2 import Reader
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == storage
    assert json.loads(meta["custom_data"]["zoa_ros.make_bag"])["seed"] == 2
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with Reader(out) as reader:
        assert reader.message_count == 24
        assert {t: i.msgtype for t, i in reader.topics.items()} == {
            "/camera/image_raw": msgtype, "/camera/labels": STRING}
        digests = {c.msgtype: c.digest for c in reader.connections}
    for name, digest in digests.items():
        package, _, typ = name.split("/")
        described = Path(sys.prefix) / "share" / package / "msg" / f"{typ}.json"
        hashes = json.loads(described.read_text())["type_hashes"]
        assert hashes[0]["hash_string"] == digest


def test_make_bag_is_atomic_and_refuses_to_overwrite(photo_dir, labels_csv, tmp_path,
                                                     monkeypatch, capsys) -> None:
    out = tmp_path / "bag"
    args = ["--schedule", "clean:3", "--resize", "32x32"]
    make_bag(photo_dir, labels_csv, out, *args)
    before = sorted(p.name for p in out.iterdir())
    assert zoa("make-bag", "--data", photo_dir, "--labels", labels_csv, "--out", out,
               *args) == 2
    assert "exists; pass --force" in capsys.readouterr().err

    import zoa_ros.tools.make_bag as tool
    calls = []

    def failing(image, name, severity, seed):
        calls.append(name)
        if len(calls) == 2:
            raise ValueError("corruption failed")
        return image.copy()

    monkeypatch.setattr(tool, "corrupt", failing)
    assert zoa("make-bag", "--data", photo_dir, "--labels", labels_csv, "--out", out,
               "--force", *args, "--storage", "sqlite3") == 2
    assert "corruption failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before       # the old bag is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no temporary left
    monkeypatch.undo()
    make_bag(photo_dir, labels_csv, out, "--force", *args, "--storage", "sqlite3")
    assert (out / "bag.db3").is_file() and not (out / "bag.mcap").exists()


# ---- the stream: encodings, label sources, malformed messages ---------------------------------

RGB = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3) * 3


def _write_bag(path: Path, messages: list[tuple[str, str, int, object]]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    store = typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic, msgtype, stamp, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(connections[topic], stamp, store.serialize_cdr(msg, msgtype))


def _image(encoding: str, pixels: np.ndarray, stamp: int, data: np.ndarray | None = None):
    store = typestore()
    t = store.types
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    header = t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
        frame_id="cam")
    flat = np.ascontiguousarray(pixels).reshape(-1) if data is None else data
    return t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=w * channels, data=flat)


def test_stream_decodes_encodings_and_skips_malformed(tmp_path) -> None:
    store = typestore()
    rgba = np.concatenate([RGB, np.full((6, 5, 1), 255, np.uint8)], axis=2)
    frames = [("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]), ("rgba8", rgba),
              ("bgra8", rgba[:, :, [2, 1, 0, 3]]), ("mono8", RGB[:, :, 0]),
              ("yuv422", RGB), ("rgb8", RGB)]
    msgs = []
    for i, (encoding, pixels) in enumerate(frames):
        data = np.zeros(7, np.uint8) if i == 6 else None  # wrong data size
        msgs.append(("/cam/image", "sensor_msgs/msg/Image", 1000 + i,
                     _image(encoding, pixels, 1000 + i, data)))
        msgs.append(("/cam/class", INT32, 1000 + i, store.types[INT32](data=10 + i)))
    msgs.append(("/other/image", "sensor_msgs/msg/Image", 2000, _image("rgb8", RGB, 2000)))
    bag = tmp_path / "enc"
    _write_bag(bag, msgs)

    with pytest.raises(ValueError, match="several image topics"):
        BagStream(bag)
    stream = BagStream(bag, image_topic="/cam/image", label_topic="/cam/class")
    (segment,) = list(stream)
    assert (segment.name, segment.round, segment.labels) == ("bag", 1, [10, 11, 12, 13, 14])
    for frame in segment.frames[:4]:
        np.testing.assert_array_equal(frame, RGB)
    np.testing.assert_array_equal(segment.frames[4], np.repeat(RGB[:, :, :1], 3, axis=2))
    info = stream.describe()
    assert info["malformed"] == 2 and info["messages"] == 7
    assert any("unsupported encoding 'yuv422'" in r for r in info["malformed_reasons"])
    assert any("data has 7 bytes" in r for r in info["malformed_reasons"])

    # unlabelled: one segment without labels; a sidecar CSV with domains: one per domain
    unlabelled = BagStream(bag, image_topic="/cam/image", label_topic=None)
    assert [s.labels for s in unlabelled] == [None] and not unlabelled.labelled
    csv = tmp_path / "labels.csv"
    csv.write_text("stamp_ns,class_index,domain\n1000,1,day\n1001,2,day\n1003,3,night\n"
                   "1004,4,day\n")
    by_csv = BagStream(bag, image_topic="/cam/image", labels_csv=csv, limit=3)
    assert [(s.name, s.round, s.labels) for s in by_csv] == [
        ("day", 1, [1, 2]), ("night", 1, [3])]
    assert by_csv.describe()["unlabelled_skipped"] == 1  # 1002 has no label
    crop = BagStream(bag, image_topic="/cam/image", label_topic=None, limit=2,
                     crop=lambda image: image[:4, :4], input_hw=(6, 5))
    assert all(f.shape == (6, 5, 3) for f in next(iter(crop)).frames)  # at size: as is


def test_undecodable_compressed_frames_are_counted(tmp_path) -> None:
    store = typestore()
    t = store.types
    msgs = []
    for i, data in enumerate([encode_compressed(np.repeat(RGB, 8, axis=0), "png"),
                              b"not an image"]):
        header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
            sec=1, nanosec=i), frame_id="cam")
        msgs.append(("/cam/compressed", "sensor_msgs/msg/CompressedImage", i, t[
            "sensor_msgs/msg/CompressedImage"](header=header, format="png",
                                               data=np.frombuffer(data, np.uint8))))
    _write_bag(tmp_path / "c", msgs)
    stream = BagStream(tmp_path / "c")
    (segment,) = list(stream)
    assert len(segment) == 1 and segment.frames[0].shape == (48, 5, 3)
    assert stream.describe()["malformed"] == 1
    # nothing decodes: an error that says why, at indexing (raw) or at decoding (compressed)
    _write_bag(tmp_path / "yuv", [("/cam", "sensor_msgs/msg/Image", 1, _image("yuv422", RGB, 1))])
    with pytest.raises(ValueError, match=r"none of its 1 messages.*unsupported encoding"):
        BagStream(tmp_path / "yuv")
    _write_bag(tmp_path / "bad", msgs[1:])
    with pytest.raises(ValueError,
                       match=r"no frame on '/cam/compressed' decodes.*neither JPEG nor PNG"):
        list(BagStream(tmp_path / "bad"))


# ---- replay -----------------------------------------------------------------------------------

CAMERA = ["--order", "class-sorted", "--dwell", "3"]
CAMERA_SCHEDULE = "clean:20,gaussian_noise@2:16,clean:12"


@pytest.mark.parametrize("mode,camera", [("batch", False), ("streaming", False),
                                         ("streaming", True)])
def test_replay_matches_evaluate_on_the_same_frames(photo_dir, predicted_csv, vit, methods,
                                                    tmp_path, mode, camera) -> None:
    _, pack = vit
    labels_csv = predicted_csv
    # adaptation acts on every step (no shift gate: 48 frames are too few for it to settle)
    common = ["--pack", pack, "--methods", methods, "--mode", mode, "--batch-size", "16",
              "--seed", "3", "--method-config", f"{methods.split(',')[1]}.no_harm=false"]
    if camera:   # a camera-like stream: class-sorted, held frames, a severity per visit
        stream, schedule = ["--schedule", CAMERA_SCHEDULE, *CAMERA], CAMERA_SCHEDULE
        layout = [{"name": "clean", "round": 1, "frames": 20},
                  {"name": "gaussian_noise@2", "round": 1, "frames": 16},
                  {"name": "clean", "round": 2, "frames": 12}]
    else:
        stream, schedule = ["--corruptions", "clean,gaussian_noise"], \
            "clean:24,gaussian_noise:24"
        layout = [{"name": "clean", "round": 1, "frames": 24},
                  {"name": "gaussian_noise", "round": 1, "frames": 24}]
    assert zoa("evaluate", "--data", photo_dir, "--labels", labels_csv, *stream,
               "--workers", "0", *common, "--json", tmp_path / "evaluate.json") == 0
    bag = tmp_path / "bag"
    make_bag(photo_dir, labels_csv, bag, "--schedule", schedule, "--seed", "3",
             "--crop-for", pack, *(CAMERA if camera else []))
    assert zoa("replay", bag, *common, "--json", tmp_path / "replay.json",
               "--report", tmp_path / "report") == 0
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    replayed = json.loads((tmp_path / "replay.json").read_text())
    assert evaluated["stream"] == replayed["stream"] == layout
    assert evaluated["harm"] == replayed["harm"] is not None
    for name in methods.split(","):
        a, b = evaluated["methods"][name], replayed["methods"][name]
        assert without_timing(a) == without_timing(b)
        assert a["domains"][0]["recovery_frames"] is None
        assert isinstance(a["domains"][1]["recovery_frames"], int)
    none, adapting = (evaluated["methods"][m] for m in methods.split(","))
    assert none["domains"][0]["acc"] == 100.0 and none["domains"][1]["acc"] < 100.0
    assert {d["agreement"] for d in none["domains"]} == {100.0}
    assert adapting["costs"]["adapt_steps"] > 0
    assert {d["acc"] for d in adapting["domains"]} != {100.0}
    assert replayed["labelled"] and replayed["config"]["tool"] == "replay"
    assert replayed["config"]["stream"]["image_topic"] == "/camera/image_raw"
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.startswith("# zoa-ros replay")
    assert "## Recovery after each domain change (frames)" in report
    assert f"| 1 | {layout[1]['name']} | {layout[1]['frames']} |" in report
    assert "recovery_frames" in report and "## Harm: accuracy minus `none`'s" in report
    assert (tmp_path / "report" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_replay_unlabelled_bag(photo_dir, vit, methods, tmp_path, capsys) -> None:
    _, pack = vit
    bag = tmp_path / "bag"
    assert zoa("make-bag", "--data", photo_dir, "--no-labels", "--schedule",
               "clean:8,gaussian_noise:8", "--resize", "64x48", "--out", bag) == 0
    adapting = methods.split(",")[1]
    assert zoa("replay", bag, "--pack", pack, "--methods", adapting, "--batch-size", "8",
               "--json", tmp_path / "r.json", "--report", tmp_path / "report") == 0
    assert "adding method 'none'" in capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text())
    assert not result["labelled"] and list(result["methods"]) == ["none", adapting]
    assert result["stream"] == [{"name": "bag", "round": 1, "frames": 16}]
    none = result["methods"]["none"]
    assert none["mean_acc"] is None and none["domains"][0]["acc"] is None
    assert none["mean_agreement"] == pytest.approx(100.0) and none["mean_entropy"] > 0
    other = result["methods"][adapting]
    assert 0.0 <= other["mean_agreement"] <= 100.0
    assert isinstance(other["domain_changes"], int)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Agreement with `none` (%) per domain" in report and "Top-1" not in report
    assert (tmp_path / "report" / "agreement.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_give_clear_errors(photo_dir, labels_csv, vit, tmp_path, capsys) -> None:
    _, pack = vit

    def error(*argv) -> str:
        assert zoa(*argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    replay = ["--pack", pack, "--methods", "none", "--json", tmp_path / "o.json"]
    assert "no such bag" in error("replay", tmp_path / "missing", *replay)
    bags = {}
    for storage in ("mcap", "sqlite3"):
        bags[storage] = tmp_path / storage
        make_bag(photo_dir, labels_csv, bags[storage], "--schedule", "clean:4",
                 "--resize", "32x32", "--storage", storage)
        truncated = tmp_path / f"{storage}_truncated"
        truncated.mkdir()
        (truncated / "metadata.yaml").write_bytes((bags[storage] / "metadata.yaml").read_bytes())
        suffix = ".mcap" if storage == "mcap" else ".db3"
        data = (bags[storage] / f"{storage}{suffix}").read_bytes()
        (truncated / f"{storage}{suffix}").write_bytes(data[:len(data) // 2])
        assert "truncated or corrupt" in error("replay", truncated, *replay)
    bag = bags["mcap"]
    err = error("replay", bag, "--image-topic", "/nope", *replay)
    assert "no topic '/nope'" in err and "/camera/image_raw (sensor_msgs/msg/Image)" in err
    assert "not an image" in error("replay", bag, "--image-topic", "/camera/labels", *replay)
    csv = tmp_path / "stamps.csv"
    csv.write_text("stamp_ns,class_index\n5,1\n6,2\n")
    assert "labels match no frame" in error("replay", bag, "--labels", csv, *replay)
    assert "stamp_ns" in error("replay", bag, "--labels", labels_csv, *replay)
    assert "unknown domain 'rain'" in error("make-bag", "--data", photo_dir, "--labels",
                                            labels_csv, "--schedule", "rain:3",
                                            "--out", tmp_path / "x")
    assert not (tmp_path / "o.json").exists()
