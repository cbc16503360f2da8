"""Files for the fidelity and work-bound tests: deep colour, odd EXIF, RGBA BMP and decoder work bombs.

Built byte by byte (struct, zlib, numpy) where Pillow cannot write them
(16-bit RGB PNG, uint32 or float64 TIFF, V5 BMP), deterministic, small.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.images import png_chunk


def ramp(height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Distinct values over the dtype's whole range, so lost low bits or a wrapped sign show."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    count = height * width * channels
    if info is None:
        values = np.linspace(-1e300, 1e300, count)
    else:
        values = np.linspace(info.min, info.max, count).round()
    shape = (height, width) if channels == 1 else (height, width, channels)
    return values.astype(dtype).reshape(shape)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of ``pixels`` (HxW grey, HxWx2 grey+alpha, HxWx3 RGB, HxWx4 RGBA), unfiltered."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def tiff(pixels: np.ndarray) -> bytes:
    """An uncompressed little-endian one-strip TIFF of ``pixels``, any dtype and 1 to 4 channels."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    bits, kind = pixels.dtype.itemsize * 8, _SAMPLE_FORMAT[pixels.dtype.kind]
    data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    per_sample = [(258, bits), (339, kind)]  # BitsPerSample, SampleFormat: one value per channel
    entries = [(256, 4, [width]), (257, 4, [height]), (259, 3, [1]), (262, 3, [2 if channels >= 3 else 1]),
               (273, 4, [0]), (277, 3, [channels]), (278, 4, [height]), (279, 4, [len(data)])]
    entries += [(tag, 3, [value] * channels) for tag, value in per_sample]
    if channels in (2, 4):
        entries.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
    entries.sort()
    ifd_size = 2 + 12 * len(entries) + 4
    extra, packed = b"", []
    for tag, kind_code, values in entries:
        fmt = "H" if kind_code == 3 else "I"
        payload = struct.pack(f"<{len(values)}{fmt}", *values)
        if len(payload) <= 4:
            packed.append([tag, kind_code, len(values), payload.ljust(4, b"\0")])
        else:
            packed.append([tag, kind_code, len(values), 8 + ifd_size + len(extra)])
            extra += payload
    data_at = 8 + ifd_size + len(extra)
    ifd = struct.pack("<H", len(entries))
    for tag, kind_code, count, value in packed:
        if tag == 273:
            value = struct.pack("<I", data_at)
        ifd += struct.pack("<HHI", tag, kind_code, count) + (value if isinstance(value, bytes) else
                                                               struct.pack("<I", value))
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + extra + data


def exif_orientation(value: int, kind: int = 4) -> bytes:
    """An EXIF block holding only Orientation, stored with TIFF type ``kind`` (4 = LONG, not the standard SHORT)."""
    fmt = {3: "<HH", 4: "<I"}[kind]
    payload = struct.pack(fmt, value, 0) if kind == 3 else struct.pack(fmt, value)
    return b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHI", 0x0112, kind, 1) + payload + bytes(4)


def bmp_v5_rgba(pixels: np.ndarray) -> bytes:
    """A 32-bit BMP with a BITMAPV5HEADER whose alpha mask is 0xFF000000 (what image editors write for RGBA)."""
    height, width = pixels.shape[:2]
    rows = b"".join(pixels[y][:, [2, 1, 0, 3]].tobytes() for y in range(height - 1, -1, -1))  # BGRA, bottom up
    header = (struct.pack("<IiiHHIIiiII", 124, width, height, 1, 32, 3, len(rows), 2835, 2835, 0, 0)
              + struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
              + b"BGRs" + bytes(48) + struct.pack("<IIII", 4, 0, 0, 0))  # sRGB, intent, no profile
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + rows


_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def jpeg_scan_bomb(side: int = 1024, extra_scans: int = 2000) -> bytes:
    """A progressive grey JPEG with its last scan (a few bytes: a refinement of an all-flat image)
    repeated ``extra_scans`` times. libjpeg only warns, and passes over the whole image per scan:
    1024 px and 2000 scans cost seconds in 70 KB; 2048 px and 30,000 scans, minutes in 1.2 MB."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    pos, unit_start, last = 2, None, None
    while (found := _MARKER.search(data, pos)) is not None and data[found.start() + 1] != 0xD9:
        at = found.start()
        end = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if unit_start is None and data[at + 1] in (0xC4, 0xDA):  # the tables before a scan belong to it
            unit_start = at
        if data[at + 1] == 0xDA:
            end = _MARKER.search(data, end).start()  # over the entropy-coded data
            last, unit_start = data[unit_start:end], None
        pos = end
    assert last is not None
    return data[:pos] + last * extra_scans + data[pos:]


def tiff_pages(count: int) -> bytes:
    """A TIFF of ``count`` 1x1 grey pages, 104 bytes each (written here: Pillow's save_all is quadratic in pages)."""
    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for index in range(count):
        at = len(out)
        pixel_at = at + 2 + 12 * 8 + 4
        entries = [(256, 4, 1), (257, 4, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, pixel_at),
                   (278, 4, 1), (279, 4, 1)]
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHII", tag, kind, 1, value)
        next_at = pixel_at + 2 if index + 1 < count else 0  # the pixel byte, padded to a word boundary
        out += struct.pack("<I", next_at) + bytes([index % 256, 0])
    return bytes(out)


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def webp_nested_anmf(levels: int = 2000) -> bytes:
    """A valid lossless WebP followed, inside its RIFF, by ANMF chunks nested ``levels`` deep.

    libwebp ignores the trailing chunk (and frames never nest), so the image opens."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "WEBP", lossless=True)
    nest = b""
    for _ in range(levels):
        nest = _riff_chunk(b"ANMF", bytes(16) + nest)
    body = buf.getvalue()[12:] + nest
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
