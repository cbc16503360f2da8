"""Hostile files: bombs, truncations, lies in headers, noise, and things that are not images at all."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.images import png_bytes, png_header


def png_bomb() -> bytes:
    """A genuine, complete 1-bit PNG of 20000x20000 = 400 MP, all zeros: a few hundred KiB on disk."""
    width, height = 20_000, 20_000
    row = b"\x00" + bytes(width // 8)  # filter byte + packed pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return png_header(width, height, bit_depth=1, colour=0, idat=idat)


def gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes([0, 0, 0, 255, 255, 255])


def gif_frame_bomb(width: int = 2000, height: int = 2000, frames: int = 400) -> bytes:
    """An animated GIF of ``frames`` one-pixel frames on a large canvas: 9 KiB, but each
    decoded frame is a full canvas, so rotating every frame needs width*height*frames pixels."""
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms
        + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # a 1x1 image descriptor
        + b"\x02\x02\x44\x01\x00"  # LZW data for one pixel
    )
    return gif_header(width, height) + frame * frames + b"\x3b"


def noise(size: int, seed: int = 1) -> bytes:
    """Random bytes, the same on every run (the generated table quotes their first bytes)."""
    return np.random.default_rng(seed).bytes(size)


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def bad_crc_png() -> bytes:
    data = bytearray(png_bytes())
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def tiff_with_broken_second_page() -> bytes:
    """A valid one-page TIFF whose 'next page' pointer leads to a page with no dimensions."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[ifd:ifd + 2])[0]
    next_pointer = ifd + 2 + 12 * entries
    data[next_pointer:next_pointer + 4] = struct.pack("<I", len(data))
    data += struct.pack("<H", 1) + struct.pack("<HHII", 0x0111, 4, 1, 8) + struct.pack("<I", 0)
    return bytes(data)


def tiff_with_huge_second_page(side: int = 40_000) -> bytes:
    """A two-page grey TIFF: page 1 is 4x4, page 2 declares side x side (1.6 GP by default) in 300 bytes."""
    buf = io.BytesIO()
    Image.new("L", (4, 4), 1).save(buf, "TIFF", save_all=True, append_images=[Image.new("L", (4, 4), 2)])
    data = bytearray(buf.getvalue())
    first = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[first:first + 2])[0]
    second = struct.unpack("<I", data[first + 2 + 12 * count:first + 6 + 12 * count])[0]
    for i in range(struct.unpack("<H", data[second:second + 2])[0]):
        entry = second + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257, 278):  # width, height, rows per strip
            data[entry + 8:entry + 12] = struct.pack("<HH", side, 0) if kind == 3 else struct.pack("<I", side)
    return bytes(data)


def other_format(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(buf, fmt)
    return buf.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"
