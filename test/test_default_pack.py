"""The default model pack: built once into the cache, reused, rebuilt when its inputs change or
its file breaks, built once by concurrent first starts; the node and the CLI use it with no pack
given; ``zoa-ros calibrate --images`` takes a recording too.

The cache of the test session (``ZOA_ROS_CACHE``, set in conftest.py) holds the real default
pack once built; the tests of the cache's mechanics use a tiny model's recipe in a cache of
their own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from zoa_ros.core.files.cache import cache_root
from zoa_ros.core.files.sample_photos import PHOTOS, load_photo
from zoa_ros.core.model.default_pack import (
    CALIBRATE_HINT,
    MODEL,
    PACK_FILE,
    Recipe,
    ensure_default_pack,
    entry_for,
)
from zoa_ros.core.model.factory import ModelSpec
from zoa_ros.core.model.pack import ModelPack

TINY = Recipe(ModelSpec("test_resnet"), "w8a8", PHOTOS[:3])
CLI = str(Path(sys.executable).with_name("zoa-ros"))


def test_the_cache_root_follows_the_environment(tmp_path: Path) -> None:
    assert cache_root({"ZOA_ROS_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root({}) == Path("~/.ros/zoa_ros").expanduser()


def test_the_entry_is_named_by_everything_that_goes_in(tmp_path: Path) -> None:
    key = entry_for(TINY, tmp_path).key
    assert entry_for(Recipe(ModelSpec("test_resnet"), "w8a8", PHOTOS[:3]), tmp_path).key == key
    for other in (Recipe(ModelSpec("test_resnet"), "w4a4", PHOTOS[:3]),
                  Recipe(ModelSpec("test_resnet"), "w8a8", PHOTOS[:4]),
                  Recipe(ModelSpec("test_resnet", seed=1), "w8a8", PHOTOS[:3]),
                  Recipe(ModelSpec("test_efficientnet"), "w8a8", PHOTOS[:3])):
        assert entry_for(other, tmp_path).key != key
    inputs = TINY.inputs()
    assert set(inputs) >= {"model", "weights_sha256", "quant", "photos", "versions",
                           "code_sha256"}
    assert inputs["versions"]["zoa_ros"] and inputs["photos"]["scikit_image"]
    assert MODEL.weights == "efficientnet-lite0"


def test_built_once_reused_and_rebuilt_when_broken(tmp_path: Path) -> None:
    lines: list[str] = []
    first = ensure_default_pack(recipe=TINY, root=tmp_path, log=lines.append)
    assert first.built and first.build_s > 0 and first.path.name == PACK_FILE
    assert any(line.startswith("built the default model pack in") for line in lines)
    assert any("using the default" in line for line in lines) and CALIBRATE_HINT in lines
    manifest = json.loads(first.entry.path("manifest.json").read_text())
    assert manifest["key"] == first.entry.key and manifest["build_s"] > 0
    fingerprint = ModelPack.load(first.path).fingerprint
    assert manifest["fingerprint"] == fingerprint
    assert first.artifact("model.onnx").parent == first.path.parent   # siblings' place

    lines.clear()
    again = ensure_default_pack(recipe=TINY, root=tmp_path, log=lines.append)
    assert not again.built and again.path == first.path
    assert not any(line.startswith(("building", "built")) for line in lines)

    first.path.write_bytes(first.path.read_bytes()[:-100])   # a damaged file is rebuilt
    lines.clear()
    fixed = ensure_default_pack(recipe=TINY, root=tmp_path, log=lines.append)
    assert fixed.built and any("rebuilding the default model pack" in x for x in lines)
    assert ModelPack.load(fixed.path).fingerprint == fingerprint   # deterministic build
    assert sorted(p.name for p in fixed.entry.folder.iterdir()) == [
        ".lock", "manifest.json", PACK_FILE]


def _build_in_child(root: str, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    result = ensure_default_pack(recipe=TINY, root=Path(root), log=lambda _: None)
    queue.put((result.built, ModelPack.load(result.path).fingerprint))


def test_concurrent_first_starts_build_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_build_in_child, args=(str(tmp_path), queue))
                for _ in range(3)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert sorted(built for built, _ in results) == [False, False, True]
    assert len({fingerprint for _, fingerprint in results}) == 1
    folder = entry_for(TINY, tmp_path).folder
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]


def test_the_cli_uses_the_default_pack_without_pack(tmp_path: Path) -> None:
    image = tmp_path / "chelsea.png"
    from PIL import Image
    Image.fromarray(load_photo("chelsea")).save(image)
    out = subprocess.run([CLI, "classify", "--json", str(image)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "using the default" in out.stderr and "zoa-ros calibrate" in out.stderr
    row = json.loads(out.stdout)
    assert row["top5"][0]["label"].lower().find("cat") >= 0, row   # Chelsea is a tabby cat
    assert (cache_root() / "packs").is_dir()


def test_calibrate_takes_a_recording(photo_dir: Path, tmp_path: Path) -> None:
    """Frames from the bag's camera topic, evenly spaced: the same pack as from those frames
    written as image files."""
    from PIL import Image

    from zoa_ros.core.data.bags.writer import BagWriter
    from zoa_ros.tools.cli import main

    frames = [np.asarray(Image.open(p).convert("RGB").resize((96, 64)))
              for p in sorted(photo_dir.glob("*.png"))]
    bag = tmp_path / "clean_bag"
    with BagWriter(bag, image_topic="/camera/image_raw", label_topic=None) as writer:
        for i, frame in enumerate(frames * 2):   # 16 frames
            writer.write(frame, 1_000_000_000 + i * 50_000_000)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 2, 4, 6, 8, 10, 12, 14):   # 8 of 16, evenly spaced: every other one
        Image.fromarray((frames * 2)[i]).save(folder / f"{i:02d}.png")
    args = ["calibrate", "--model", "test_resnet", "--num-images", "8",
            "--num-stats-images", "8"]
    assert main([*args, "--images", str(bag), "--out", str(tmp_path / "bag.zoapack")]) == 0
    assert main([*args, "--images", str(folder), "--out", str(tmp_path / "dir.zoapack")]) == 0
    from_bag = ModelPack.load(tmp_path / "bag.zoapack")
    from_dir = ModelPack.load(tmp_path / "dir.zoapack")
    assert from_bag.calibration["num_images"] == 8
    assert from_bag.calibration["source"] == {"bag": str(bag), "topic": "/camera/image_raw",
                                              "frames": 16, "malformed": 0}
    assert torch.equal(from_bag.source_mean, from_dir.source_mean)
    assert all(torch.equal(from_bag.quant_state[k], v) for k, v in from_dir.quant_state.items())
    assert main(["calibrate", "--model", "test_resnet", "--images", str(bag),
                 "--image-topic", "/nope", "--out", str(tmp_path / "x.zoapack")]) == 2


# ---- the node ----------------------------------------------------------------------------------
def test_the_node_classifies_with_no_pack_parameters(tmp_path: Path) -> None:
    """The launch line with nothing prepared: the default pack (built on first use into the
    session's cache), a classification of a published frame."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    domain = 150 + os.getpid() % 50
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_HOME": str(tmp_path),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    env.pop("RMW_IMPLEMENTATION", None)
    log = tmp_path / "node.log"
    with open(log, "w") as handle:
        node = subprocess.Popen([sys.executable, "-m", "zoa_ros.ros.node", "--ros-args", "-r",
                                 "image:=/camera/image_raw", "-p", "knowledge.autoload:=false",
                                 "-p", "knowledge.autosave:=false"],
                                stdout=handle, stderr=subprocess.STDOUT, env=env)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    client = rclpy.create_node("default_pack_client", context=context)
    answers: list[dict] = []
    client.create_subscription(String, "/classification_json",
                               lambda m: answers.append(json.loads(m.data)),
                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    try:
        photo = load_photo("chelsea")
        msg = Image(height=photo.shape[0], width=photo.shape[1], encoding="rgb8",
                    step=photo.shape[1] * 3)
        msg.data = photo.tobytes()
        msg.header.frame_id = "default_pack"
        deadline = time.monotonic() + 240
        while not answers:
            assert node.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            if pub.get_subscription_count():
                pub.publish(msg)
            executor.spin_once(timeout_sec=0.25)
        assert answers[0]["frame_id"] == "default_pack"
        assert "cat" in answers[0]["results"][0]["label"].lower(), answers[0]
    finally:
        node.send_signal(2)
        code = node.wait(30)
        executor.shutdown()
        client.destroy_node()
        rclpy.try_shutdown(context=context)
    text = log.read_text()
    assert code == 0, text
    assert "no model pack given: using the default" in text and "zoa-ros calibrate" in text
    assert str(cache_root()) in text
