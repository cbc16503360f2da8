"""Hostile and broken image bytes sent to a real worker over gRPC: one case each, with its expected answer.

Every case must get a specific status and message (never INTERNAL or UNKNOWN),
and after each one the worker must still be healthy and still rotate a good
image. The worker runs with ``--max-message-mb 1`` and an address-space cap, so
a bomb that slipped past its checks fails loudly here instead of exhausting the
machine's memory.
"""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from conftest import BIG_MESSAGES, worker_process
from PIL import Image
from reliability_support import cap_memory, jpeg, rotates, serving

from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


# --- building the hostile files ----------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int, *, bit_depth: int = 8, colour: int = 2, idat: bytes = b"") -> bytes:
    """A PNG signature and IHDR declaring any size, then ``idat`` as its compressed data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


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


def png_bytes(size=(64, 64), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buf, "PNG")
    return buf.getvalue()


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


def jpeg_with_bad_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 99  # not one of the eight orientations
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg(32, 16))).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"

# (case id, image bytes factory, degrees, expected status, expected words in the message, ops it applies to)
# Classify decodes only the first frame/page, so frame-level cases apply to Rotate alone.
CASES = [
    ("empty file", lambda: b"", 90, INVALID, ["empty", "0 bytes"], ("Rotate", "Classify")),
    ("random bytes named .jpg", lambda: noise(4096), 90, INVALID, ["not a supported image"],
     ("Rotate", "Classify")),
    ("HTML page named .png", lambda: HTML, 90, INVALID, ["not a supported image", "<!DOCTYP"],
     ("Rotate", "Classify")),
    ("JPEG truncated half-way", lambda: truncated(jpeg(256, 256), 0.5), 90, INVALID, ["JPEG", "truncated"],
     ("Rotate", "Classify")),
    ("JPEG cut inside its headers", lambda: jpeg(64, 64)[:120], 180, INVALID, ["JPEG"], ("Rotate", "Classify")),
    ("PNG truncated half-way", lambda: truncated(png_bytes((256, 256)), 0.5), 90, INVALID, ["PNG"],
     ("Rotate", "Classify")),
    ("PNG with a bad header CRC", bad_crc_png, 90, INVALID, ["corrupt PNG image"], ("Rotate", "Classify")),
    ("decompression bomb: 1-bit PNG, 400 MP in a small file", png_bomb, 90, INVALID,
     ["20000x20000", "--max-pixels"], ("Rotate", "Classify")),
    ("PNG declaring 100,000 x 100,000", lambda: png_header(100_000, 100_000, idat=zlib.compress(b"\0" * 64)), 90,
     INVALID, ["100000x100000", "--max-pixels"], ("Rotate", "Classify")),
    ("PNG declaring 0 x 0", lambda: png_header(0, 0, idat=zlib.compress(b"")), 90, INVALID, ["corrupt PNG image"],
     ("Rotate", "Classify")),
    ("GIF declaring 65,535 x 65,535", lambda: gif_frame_bomb(65535, 65535, frames=1), 90, INVALID,
     ["65535x65535", "--max-pixels"], ("Rotate", "Classify")),
    ("animated GIF bomb: 400 full-canvas frames in 9 KiB", gif_frame_bomb, 90, INVALID, ["pixels", "--max-pixels"],
     ("Rotate",)),
    ("TIFF bomb: 4x4 first page, second page declaring 40,000 x 40,000", tiff_with_huge_second_page, 90, INVALID,
     ["40000x40000", "--max-pixels"], ("Rotate",)),
    ("TIFF whose second page has no dimensions", tiff_with_broken_second_page, 90, INVALID, ["TIFF"], ("Rotate",)),
    ("a real image in an unsupported format (ICO)", lambda: other_format("ICO"), 90, INVALID,
     ["not a supported image"], ("Rotate", "Classify")),
    ("a real image in an unsupported format (PCX)", lambda: other_format("PCX"), 90, INVALID,
     ["not a supported image"], ("Rotate", "Classify")),
    ("image over --max-message-mb (1 MiB here)", lambda: b"\xff\xd8\xff" + noise(int(1.5 * 2**20)), 90,
     EXHAUSTED, ["1.5 MiB", "--max-message-mb"], ("Rotate", "Classify")),
    ("message over the transport cap (20 MiB)", lambda: noise(20 * 2**20), 90, EXHAUSTED, ["larger than max"],
     ("Rotate",)),
    ("rotation 45 on a good JPEG", lambda: jpeg(32, 32), 45, INVALID, ["45", "multiple of 90"], ("Rotate",)),
    ("rotation 2**63-1 on a good JPEG", lambda: jpeg(32, 32), 2**63 - 1, INVALID, [str(2**63 - 1)], ("Rotate",)),
]


@pytest.fixture(scope="module")
def hostile_worker():
    """One worker for all cases: 1 MiB message limit, memory capped at start-up size + 1.5 GiB."""
    with worker_process("--max-message-mb", "1", "--threads", "2") as w:
        cap_memory(w, headroom_mb=1500)
        yield w


def _call(address: str, op: str, data: bytes, degrees: int):
    with grpc.insecure_channel(address, options=BIG_MESSAGES) as ch:
        stub = v1_grpc.ImageWorkerStub(ch)
        if op == "Rotate":
            return stub.Rotate(v1.RotateRequest(image=data, degrees=degrees), timeout=60)
        return stub.Classify(v1.ClassifyRequest(image=data), timeout=60)


PARAMS = [pytest.param(op, make, degrees, code, expected, id=f"{op}: {case}")
          for case, make, degrees, code, expected, ops in CASES for op in ops]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op, make, degrees, code, expected", PARAMS)
def test_hostile_image_gets_a_specific_error_and_the_worker_keeps_serving(
    hostile_worker, record_property, op, make, degrees, code, expected
):
    data = make()
    with pytest.raises(grpc.RpcError) as err:
        _call(hostile_worker.address, op, data, degrees)
    got, details = err.value.code(), err.value.details() or ""
    record_property("expected", f"{code.name} naming " + ", ".join(repr(w) for w in expected))
    record_property("observed", f"{got.name}: {details}")
    assert got == code, details
    for word in expected:
        assert word in details
    assert hostile_worker.proc.poll() is None, "the worker died"
    assert serving(hostile_worker.address) and rotates(hostile_worker.address)
