"""The ``zoa-ros`` console script, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoa_ros.tools.cli import COMMANDS

CLI = [str(Path(sys.executable).with_name("zoa-ros"))]


def zoa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS), ["bench", "model"],
                                     ["bench", "node"]])
def test_help(command: list[str]) -> None:
    result = zoa(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: zoa-ros" in result.stdout


def test_calibrate_info_classify(photo_dir: Path, tmp_path: Path) -> None:
    pack = tmp_path / "tiny.zoapack"
    made = zoa("calibrate", "--model", "test_efficientnet", "--quant", "w6a6",
               "--images", str(photo_dir), "--num-images", "8", "--out", str(pack))
    assert made.returncode == 0, made.stderr
    info = json.loads(zoa("info", str(pack)).stdout)
    assert info["model"]["name"] == "test_efficientnet"
    assert info["quant"]["name"] == "w6a6" and info["calibration"]["num_images"] == 8
    images = sorted(photo_dir.glob("*.png"))[:3]
    out = zoa("classify", "--pack", str(pack), "--json", *map(str, images))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    for row in rows:
        assert len(row["top5"]) == 5 and row["ms"] > 0
        scores = [t["score"] for t in row["top5"]]
        assert scores == sorted(scores, reverse=True)
        assert set(row["top5"][0]) == {"class_index", "label", "score"}


def test_bad_inputs_give_clear_errors(photo_dir: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zoapack"
    bogus.write_bytes(b"not a pack at all")
    result = zoa("info", str(bogus))
    assert result.returncode == 2 and "not a readable pack" in result.stderr
    assert "Traceback" not in result.stderr
    result = zoa("calibrate", "--model", "test_resnet", "--images", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x.zoapack"))
    assert result.returncode == 2 and "no such image folder" in result.stderr


def test_classify_skips_bombs_and_extreme_shapes(make_pack, photo_dir: Path, tmp_path: Path,
                                                 capsys) -> None:
    """A 66-byte PNG whose header claims 100000 x 100000 pixels, one just over --max-pixels,
    one 2000 x 10: each reported as skipped with the reason, before any decoding; the good
    photo is classified."""
    from PIL import Image

    from zoa_ros.ros.hostile_messages import png_header_bomb
    from zoa_ros.tools.cli import main

    _, pack = make_pack("test_resnet", "w8a8")
    (tmp_path / "bomb.png").write_bytes(png_header_bomb(100000, 100000))
    (tmp_path / "big.png").write_bytes(png_header_bomb(5000, 5000))
    Image.new("RGB", (2000, 10)).save(tmp_path / "wide.png")
    good = sorted(photo_dir.glob("*.png"))[0]
    code = main(["classify", "--pack", str(pack), "--json", "--max-pixels", "20000000",
                 str(tmp_path / "bomb.png"), str(tmp_path / "big.png"),
                 str(tmp_path / "wide.png"), str(good)])
    assert code == 0
    rows = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "decompression bomb" in rows["bomb.png"]["error"]
    assert "refused before decoding" in rows["bomb.png"]["error"]
    assert "5000x5000 = 25000000 pixels exceeds max_pixels 20000000" in rows["big.png"]["error"]
    assert "aspect ratio of 2000x10 beyond 64:1" in rows["wide.png"]["error"]
    assert len(rows[good.name]["top5"]) == 5
