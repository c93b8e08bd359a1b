"""Hostile camera messages: a seeded generator of ``sensor_msgs/Image`` and ``CompressedImage``
messages built to hurt a subscriber (``zoa-ros bench fuzz`` sends them to a live ``zoa_node``).

Each :class:`Hostile` names its case and what a correct node does with it: ``classified``,
``malformed`` (refused and counted) or ``either`` (e.g. a truncated JPEG, which a decoder may
still turn into an image). Raw cases: every supported encoding with and without row padding,
sizes from 1x1 up, unsupported and misspelt encodings, ``step`` / ``height`` / ``width`` that
disagree with the data (short, long, zero, 2^32-1), header bombs (a header claiming 100000 x
100000 pixels over a few bytes), frames just over ``max_pixels`` with all their bytes, extreme
aspect ratios. Compressed cases: JPEG and PNG (colour, grey, 16-bit, palette, alpha) under
every spelling of the format field, unsupported formats, data of another format, truncated and
byte-mutated JPEG/PNG, PNG and JPEG headers claiming 100000 x 100000 / 65500 x 65500 pixels, a
real PNG just over ``max_pixels``, empty and random data. Every case also gets odd frame ids
(empty, 4 KiB long, quotes, control characters, non-ASCII) and stamps (zero, negative, int32
limits, nanoseconds past one second) now and then.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

CLASSIFIED, MALFORMED, EITHER = "classified", "malformed", "either"
UINT32_MAX = 2**32 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
ODD_FRAME_IDS = ("", "x" * 4096, 'quote" and \\backslash', "tab\tnew\nline", "カメラ/前",
                 "/../../etc/passwd", "\x7f\x01\x02")
ODD_STAMPS = ((0, 0), (INT32_MIN, 0), (INT32_MAX, 999_999_999), (-1, UINT32_MAX),
              (1, 1_000_000_000), (123, UINT32_MAX))


@dataclass(frozen=True)
class Hostile:
    """One message, its case name and what a correct node does with it."""

    case: str
    message: Any
    expect: str


Case = Callable[[np.random.Generator], tuple[Any, str]]


class HostileMessages:
    """An endless seeded stream of hostile messages for one transport (``raw`` or
    ``compressed``), cycling through every case in a shuffled order. ``max_pixels`` is the
    node's limit (cases "just over the limit" need it small enough to send: at most 4 Mpx)."""

    def __init__(self, transport: str, seed: int = 0, max_pixels: int = 1_000_000) -> None:
        if transport not in ("raw", "compressed"):
            raise ValueError(f"transport must be raw or compressed, not {transport!r}")
        self.transport, self.max_pixels = transport, max_pixels
        self.rng = np.random.default_rng(seed)
        cases = raw_cases(max_pixels) if transport == "raw" else compressed_cases(max_pixels)
        self.cases: dict[str, Case] = cases

    def __iter__(self) -> Iterator[Hostile]:
        names = sorted(self.cases)
        while True:
            for i in self.rng.permutation(len(names)):
                name = names[int(i)]
                msg, expect = self.cases[name](self.rng)
                self._odd_header(msg)
                yield Hostile(f"{self.transport}/{name}", msg, expect)

    def take(self, count: int) -> list[Hostile]:
        it = iter(self)
        return [next(it) for _ in range(count)]

    def _odd_header(self, msg: Any) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            msg.header.frame_id = ODD_FRAME_IDS[int(rng.integers(len(ODD_FRAME_IDS)))]
        else:
            msg.header.frame_id = "fuzz"
        if rng.random() < 0.3:
            sec, nanosec = ODD_STAMPS[int(rng.integers(len(ODD_STAMPS)))]
        else:
            sec, nanosec = int(rng.integers(1, INT32_MAX)), int(rng.integers(0, 10**9))
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec


# ---- raw -------------------------------------------------------------------------------------
def image(encoding: str, height: int, width: int, step: int, data: bytes,
          bigendian: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step,
                is_bigendian=bigendian)
    msg.data = data
    return msg


def _pixels(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def _valid_raw(encoding: str, pad: bool) -> Case:
    def make(rng: np.random.Generator) -> tuple[Image, str]:
        c = CHANNELS[encoding]
        h, w = int(rng.integers(2, 97)), int(rng.integers(2, 129))   # at most 64:1
        extra = int(rng.integers(1, 17)) if pad else 0
        rows = np.zeros((h, w * c + extra), np.uint8)
        rows[:, :w * c] = _pixels(rng, h, w, c).reshape(h, w * c)
        spelling = encoding.upper() if rng.random() < 0.2 else encoding
        return image(spelling, h, w, w * c + extra, rows.tobytes(),
                     int(rng.integers(0, 2))), CLASSIFIED
    return make


def _raw_fixed(height: int, width: int, step: int, size: int, encoding: str = "rgb8",
               expect: str = MALFORMED) -> Case:
    def make(rng: np.random.Generator) -> tuple[Image, str]:
        return image(encoding, height, width, step, bytes(size)), expect
    return make


def _raw_mismatch(delta: int) -> Case:
    def make(rng: np.random.Generator) -> tuple[Image, str]:
        h, w = int(rng.integers(2, 64)), int(rng.integers(2, 64))
        return image("rgb8", h, w, w * 3, bytes(max(0, h * w * 3 + delta))), MALFORMED
    return make


def _raw_encoding(name: str) -> Case:
    def make(rng: np.random.Generator) -> tuple[Image, str]:
        h, w = int(rng.integers(1, 32)), int(rng.integers(1, 32))
        return image(name, h, w, w * 2, bytes(h * w * 2)), MALFORMED
    return make


def _raw_over_limit(max_pixels: int) -> Case:
    """All the bytes of a mono8 frame one row over ``max_pixels``."""
    def make(rng: np.random.Generator) -> tuple[Image, str]:
        w = 1000
        h = max_pixels // w + 1
        return image("mono8", h, w, w, bytes(h * w)), MALFORMED
    return make


def raw_cases(max_pixels: int) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for encoding in CHANNELS:
        cases[f"valid {encoding}"] = _valid_raw(encoding, pad=False)
        cases[f"valid {encoding} padded rows"] = _valid_raw(encoding, pad=True)
    cases["valid 1x1"] = _raw_fixed(1, 1, 3, 3, expect=CLASSIFIED)
    h, w = (1080, 1920) if max_pixels >= 1920 * 1080 else (max_pixels // 1000, 1000)
    cases[f"valid {w}x{h}"] = _raw_fixed(h, w, 3 * w, 3 * w * h, expect=CLASSIFIED)
    cases["aspect 1x5000"] = _raw_fixed(1, 5000, 15000, 15000)
    cases["aspect 3000x2"] = _raw_fixed(3000, 2, 6, 18000)
    for name in ("yuv422", "16UC1", "mono16", "32FC1", "bayer_rggb8", "", "rgb8 ", "rgb 8",
                 "\u0440gb8", "x" * 300):
        cases[f"encoding {name[:12]!r}"] = _raw_encoding(name)
    cases["data one byte short"] = _raw_mismatch(-1)
    cases["data one byte long"] = _raw_mismatch(1)
    cases["data empty"] = _raw_fixed(4, 4, 12, 0)
    cases["step too small"] = _raw_fixed(8, 8, 23, 8 * 23)
    cases["step zero"] = _raw_fixed(8, 8, 0, 0)
    cases["step 2^32-1"] = _raw_fixed(1, 8, UINT32_MAX, 24)
    cases["height zero"] = _raw_fixed(0, 8, 24, 24)
    cases["width zero"] = _raw_fixed(8, 0, 0, 24)
    cases["height and width 2^32-1"] = _raw_fixed(UINT32_MAX, UINT32_MAX, UINT32_MAX, 64)
    cases["header bomb 100000x100000"] = _raw_fixed(100000, 100000, 300000, 300000)
    if max_pixels <= 4_000_000:
        cases["over max_pixels with its bytes"] = _raw_over_limit(max_pixels)
    return cases


# ---- compressed ------------------------------------------------------------------------------
def compressed(fmt: str, data: bytes) -> CompressedImage:
    return CompressedImage(format=fmt, data=data)


def encode(kind: str, pixels: np.ndarray, **params: int) -> bytes:
    """``pixels`` (uint8 or uint16, HxW or HxWxC, BGR order) as JPEG or PNG bytes."""
    flags = [v for item in params.items() for v in (getattr(cv2, item[0]), item[1])]
    ok, buf = cv2.imencode(f".{kind}", pixels, flags)
    if not ok:
        raise ValueError(f"cannot encode {pixels.shape} as {kind}")
    return buf.tobytes()


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims ``width`` x ``height`` RGB pixels, followed by one
    tiny IDAT and IEND: a few dozen bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def jpeg_header_bomb(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 header rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode("jpg", np.zeros((8, 8, 3), np.uint8)))
    at = data.find(b"\xff\xc0")
    if at < 0:
        raise ValueError("no SOF0 marker in OpenCV's JPEG")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def _valid_compressed(kind: str, variant: str) -> Case:
    spellings = {"jpg": ("jpeg", "jpg", "JPEG", "rgb8; jpeg compressed bgr8", ""),
                 "png": ("png", "PNG", "bgr8; png compressed bgr8", "")}[kind]

    def make(rng: np.random.Generator) -> tuple[CompressedImage, str]:
        h, w = int(rng.integers(2, 97)), int(rng.integers(2, 129))   # at most 64:1
        if variant == "grey":
            pixels = _pixels(rng, h, w, 1)
        elif variant == "16-bit":
            pixels = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        elif variant == "alpha":
            pixels = _pixels(rng, h, w, 4)
        else:
            pixels = _pixels(rng, h, w, 3)
        data = encode(kind, pixels)
        return compressed(spellings[int(rng.integers(len(spellings)))], data), CLASSIFIED
    return make


def _palette_png(rng: np.random.Generator) -> tuple[CompressedImage, str]:
    image = PILImage.fromarray(_pixels(rng, 24, 40, 3)).convert("P")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return compressed("png", buf.getvalue()), CLASSIFIED


def _other_format(fmt: str, pil_format: str) -> Case:
    def make(rng: np.random.Generator) -> tuple[CompressedImage, str]:
        buf = io.BytesIO()
        PILImage.fromarray(_pixels(rng, 16, 16, 3)).save(buf, format=pil_format)
        return compressed(fmt, buf.getvalue()), MALFORMED
    return make


def _truncated(kind: str) -> Case:
    def make(rng: np.random.Generator) -> tuple[CompressedImage, str]:
        data = encode(kind, _pixels(rng, 64, 64, 3))
        cut = int(rng.integers(1, len(data)))
        return compressed("png" if kind == "png" else "jpeg", data[:cut]), EITHER
    return make


def _mutated(kind: str) -> Case:
    def make(rng: np.random.Generator) -> tuple[CompressedImage, str]:
        data = bytearray(encode(kind, _pixels(rng, 64, 64, 3)))
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        return compressed("png" if kind == "png" else "jpeg", bytes(data)), EITHER
    return make


def _fixed(fmt: str, data: bytes, expect: str = MALFORMED) -> Case:
    def make(rng: np.random.Generator) -> tuple[CompressedImage, str]:
        return compressed(fmt, data), expect
    return make


def _random_bytes(rng: np.random.Generator) -> tuple[CompressedImage, str]:
    data = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    return compressed("jpeg", data), MALFORMED


def compressed_cases(max_pixels: int) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for kind in ("jpg", "png"):
        for variant in ("colour", "grey") + (("16-bit", "alpha") if kind == "png" else ()):
            cases[f"valid {kind} {variant}"] = _valid_compressed(kind, variant)
        cases[f"truncated {kind}"] = _truncated(kind)
        cases[f"mutated {kind}"] = _mutated(kind)
    cases["valid png palette"] = _palette_png
    cases["valid png 1x1"] = _fixed("png", encode("png", np.zeros((1, 1, 3), np.uint8)),
                                    CLASSIFIED)
    cases["aspect png 1x5000"] = _fixed("png", encode("png", np.zeros((1, 5000, 3), np.uint8)))
    cases["format webp"] = _other_format("webp", "WEBP")
    cases["bmp data as png"] = _other_format("png", "BMP")
    cases["tiff data as jpeg"] = _other_format("jpeg", "TIFF")
    cases["format h264"] = _fixed("h264", b"\x00\x00\x00\x01\x67")
    cases["png header bomb 100000x100000"] = _fixed("png", png_header_bomb(100000, 100000))
    cases["jpeg header bomb 65500x65500"] = _fixed("jpeg", jpeg_header_bomb(65500, 65500))
    cases["data empty"] = _fixed("jpeg", b"")
    cases["data one byte"] = _fixed("png", b"\x89")
    cases["random bytes"] = _random_bytes
    if max_pixels <= 4_000_000:
        side = int(max_pixels ** 0.5) + 1
        cases["png over max_pixels"] = _fixed("png", encode("png", np.zeros((side, side, 3),
                                                                           np.uint8)))
    return cases
