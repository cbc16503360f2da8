"""Images the suite makes for itself: photo-like pictures, small JPEGs and PNGs, PNG chunks, and the corpus.

Everything here is deterministic (the same arguments give the same bytes)
and needs only numpy and Pillow.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

BAND = 256  # rows computed at a time, so a 24 MP picture never holds more than a band as floats


def photo(width: int, height: int, seed: int = 0, grain: float = 3.0) -> Image.Image:
    """A smooth RGB picture with sensor-like grain: compresses like a photo, cheap to make at any size."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.float32)[None, :]
    for top in range(0, height, BAND):
        y = np.arange(top, min(top + BAND, height), dtype=np.float32)[:, None]
        band = np.empty((len(y), width, 3), np.float32)
        band[..., 0] = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
        band[..., 1] = 128 + 100 * np.cos((x + y) / 71.0)
        band[..., 2] = 255 * x / width
        band += rng.normal(0, grain, (len(y), width, 1)).astype(np.float32)
        pixels[top:top + len(y)] = np.clip(band, 0, 255)
    return Image.fromarray(pixels)


def jpeg(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A small photo-like JPEG (gradient plus noise), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y + seed) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def png_bytes(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    """A PNG of one colour."""
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int, *, bit_depth: int = 8, colour: int = 2, idat: bytes = b"") -> bytes:
    """A PNG signature and IHDR declaring any size, then ``idat`` as its compressed data: a PNG of any claim."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- the corpus: photos, large, tiny and one file per format and mode a worker should handle --------------

GROUPS = {"photos": (1920, 1080), "large": (6000, 4000), "tiny": (64, 64)}  # large: over gRPC's 4 MiB default
ROTATIONS = (90, 180, 270, -90)


def _jpeg(img: Image.Image, path: Path, **options) -> None:
    img.save(path, "JPEG", **{"quality": 90, **options})


def _oriented(img: Image.Image, path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    _jpeg(img, path, exif=exif)


# File name -> how to write it from the 320x240 base picture (whole JPEG MCUs: every turn can be lossless).
# Small: every turn of a PNG, WebP or GIF is encoded again, and at 640x480 test_rotate took ~3 s longer.
FORMATS: dict[str, Callable[[Image.Image, Path], None]] = {
    "rgb.jpg": _jpeg,
    "rgb_444.jpg": lambda img, p: _jpeg(img, p, subsampling=0),
    "progressive.jpg": lambda img, p: _jpeg(img, p, progressive=True),
    "odd_size.jpg": lambda img, p: _jpeg(img.crop((0, 0, 317, 239)), p),
    "gray.jpg": lambda img, p: _jpeg(img.convert("L"), p),
    "cmyk.jpg": lambda img, p: _jpeg(img.convert("CMYK"), p),
    "exif_orientation_6.jpg": _oriented,
    "rgb.png": lambda img, p: img.save(p),
    "rgba.png": lambda img, p: img.convert("RGBA").save(p),
    "palette.png": lambda img, p: img.convert("P").save(p),
    "gray16.png": lambda img, p: Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257).save(p),
    "bilevel.png": lambda img, p: img.convert("1").save(p),
    "rgb.webp": lambda img, p: img.save(p, "WEBP", quality=90),
    "rgb.tiff": lambda img, p: img.save(p, "TIFF"),
    "rgb.bmp": lambda img, p: img.save(p, "BMP"),
    "anim.gif": lambda img, p: img.convert("P").save(p, save_all=True, append_images=[img.rotate(10).convert("P")]),
}


def _write_manifest(path: Path, rows: list[tuple[str, str, int]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "op", "rotation"])
        writer.writerows(rows)


def make_corpus(out: Path, photos: int = 4, large: int = 1, tiny: int = 16) -> Path:
    """Write the corpus under ``out`` and return it:

    ``photos/``, ``large/``, ``tiny/``: that many JPEGs (quality 90, 4:2:0) of GROUPS' sizes;
    ``formats/``: one file per name in FORMATS; ``manifest-<group>.csv`` over each group and
    ``manifest-mixed.csv`` over formats/ at three angles (columns path, op, rotation; paths relative to ``out``).
    """
    counts = {"photos": photos, "large": large, "tiny": tiny}
    for group, (width, height) in GROUPS.items():
        folder = out / group
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(counts[group]):
            path = folder / f"{group}_{i:05d}.jpg"
            _jpeg(photo(width, height, seed=i * 7919 + width, grain=6), path)
            rows.append((str(path.relative_to(out)), "rotate", ROTATIONS[i % 4]))
        _write_manifest(out / f"manifest-{group}.csv", rows)
    make_formats(out)
    return out


def make_formats(out: Path) -> Path:
    """Only the corpus's ``formats/`` and ``manifest-mixed.csv`` under ``out`` (the photos take a second to
    make, the formats a tenth of that); returns ``out / "formats"``."""
    folder = out / "formats"
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(320, 240, seed=1, grain=6)
    rows = []
    for name, write in FORMATS.items():
        write(base, folder / name)
        rows += [(f"formats/{name}", "rotate", degrees) for degrees in (90, 180, 270)]
    _write_manifest(out / "manifest-mixed.csv", rows)
    return folder


def exif_block(entries: list[tuple[int, int, int, bytes]], order: str = "<") -> bytes:
    """A raw EXIF block (``Exif\\0\\0`` + TIFF header + IFD0) holding exactly ``entries``: (tag, type, count,
    the values' bytes), in the order given, values over four bytes stored after the IFD. Pillow's writer
    normalises what it writes; this writes malformed tags (wrong counts, types, repeated tags) as cameras
    and editors sometimes do."""
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd, extra = struct.pack(order + "H", len(entries)), b""
    for tag, kind, count, raw in entries:
        value = raw.ljust(4, b"\0") if len(raw) <= 4 else struct.pack(order + "I", data_at + len(extra))
        if len(raw) > 4:
            extra += raw
        ifd += struct.pack(order + "HHI", tag, kind, count) + value
    return b"Exif\x00\x00" + header + ifd + struct.pack(order + "I", 0) + extra


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved as ``fmt``, as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """An image opened from bytes and loaded."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def mad(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per sample, 0..255."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert x.shape == y.shape
    return float(np.mean(np.abs(x - y)))
