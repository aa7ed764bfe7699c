"""A seeded corpus of 200 awkward image files: the odd but valid ones that must be processed,
and the broken ones that must each be refused with its own message."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .helpers import photo

GOOD, BAD = "good", "bad"


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG file whose header claims width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def huge_bmp_header(width: int = 20000, height: int = 20000) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\x00" * 16


def build_corpus(folder: Path, seed: int = 0) -> dict[str, str]:
    """Write the corpus into ``folder``; returns {file name: GOOD or BAD}."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def add(name: str, data: bytes, kind: str) -> None:
        assert name not in kinds, name
        (folder / name).write_bytes(data)
        kinds[name] = kind

    def picture(w: int, h: int) -> Image.Image:
        return Image.fromarray(photo((w, h), seed=rng.randrange(10**6)))

    formats = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "tif": "TIFF"}
    # -- odd but valid: processed ----------------------------------------------------------
    for i in range(3):
        for ext, fmt in formats.items():
            add(f"plain_{i}.{ext}", _encode(picture(rng.randint(20, 90), rng.randint(20, 90)), fmt), GOOD)
    add("plain.webp", _encode(picture(40, 30), "WEBP"), GOOD)
    for ext, fmt in formats.items():
        add(f"one_pixel.{ext}", _encode(picture(1, 1), fmt), GOOD)
    add("thin_2x300.png", _encode(picture(2, 300), "PNG"), GOOD)
    for i in range(3):
        sixteen = np.asarray(picture(50, 40).convert("L"), dtype=np.uint16) * 257
        add(f"sixteen_bit_{i}.png", _encode(Image.fromarray(sixteen), "PNG"), GOOD)
        add(f"sixteen_bit_{i}.tif", _encode(Image.fromarray(sixteen), "TIFF"), GOOD)
    for i in range(3):
        add(f"cmyk_{i}.jpg", _encode(picture(48, 36).convert("CMYK"), "JPEG"), GOOD)
        add(f"cmyk_{i}.tif", _encode(picture(48, 36).convert("CMYK"), "TIFF"), GOOD)
    for i in range(3):
        palette = picture(40, 40).convert("P", palette=Image.ADAPTIVE, colors=16)
        add(f"palette_transparent_{i}.png", _encode(palette, "PNG", transparency=0), GOOD)
        add(f"gray_alpha_{i}.png", _encode(picture(30, 30).convert("LA"), "PNG"), GOOD)
        add(f"rgba_{i}.png", _encode(picture(30, 30).convert("RGBA"), "PNG"), GOOD)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        add(f"exif_orientation_{orientation}.jpg", _encode(picture(60, 40), "JPEG", exif=exif), GOOD)
    for i in range(3):  # content and extension disagree: decoded by content
        add(f"jpeg_named_{i}.png", _encode(picture(40, 40), "JPEG"), GOOD)
        add(f"png_named_{i}.jpg", _encode(picture(40, 40), "PNG"), GOOD)
    add("bmp_named.tif", _encode(picture(40, 40), "BMP"), GOOD)
    frames = [picture(32, 32).convert("P") for _ in range(3)]
    for i in range(2):  # an animated GIF under an image extension: its first frame
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
        add(f"animated_gif_{i}.png", buffer.getvalue(), GOOD)
    # -- broken: each refused with its own message -----------------------------------------
    for i in range(3):
        for ext in formats:
            add(f"zero_bytes_{i}.{ext}", b"", BAD)
    for ext, fmt in formats.items():
        for i in range(26):
            data = _encode(picture(rng.randint(24, 80), rng.randint(24, 80)), fmt)
            cut = int(len(data) * rng.uniform(0.02, 0.85))
            add(f"truncated_{i:02d}.{ext}", data[:cut], BAD)
    for i, (w, h) in enumerate([(20000, 20000), (30000, 20000), (65000, 65000)]):
        add(f"huge_header_{i}.png", huge_png_header(w, h), BAD)
    add("huge_header.bmp", huge_bmp_header(), BAD)
    for i in range(5):
        add(f"text_named_{i}.{rng.choice(list(formats))}", f"not an image, file {i}\n".encode(), BAD)
        add(f"random_bytes_{i}.{rng.choice(list(formats))}", rng.randbytes(rng.randint(10, 5000)), BAD)
        add(f"html_named_{i}.jpg", b"<!doctype html><html><body>404 Not Found</body></html>", BAD)
    for i in range(7):  # a corrupted middle: the PNG checksums catch it
        data = bytearray(_encode(picture(64, 64), "PNG"))
        start = len(data) // 3
        for k in range(start, start + 40):
            data[k] ^= 0xFF
        add(f"corrupt_middle_{i}.png", bytes(data), BAD)
    add("png_signature_only.png", b"\x89PNG\r\n\x1a\n", BAD)
    add("jpeg_markers_only.jpg", b"\xff\xd8\xff\xd9", BAD)
    assert len(kinds) == 200, len(kinds)
    return kinds
