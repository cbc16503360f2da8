"""Hostile and broken image bytes sent to a real worker over gRPC: one case each, with its expected answer.

Every case must get a specific status and message (never INTERNAL or UNKNOWN),
and after each one the worker must still be healthy and still rotate a good
image. The worker runs with ``--max-message-mb 1`` and an address-space cap, so
a bomb that slipped past its checks fails loudly here instead of exhausting the
machine's memory.
"""

from __future__ import annotations

import zlib

import grpc
import pytest

from tests.support.hostile import (
    HTML,
    bad_crc_png,
    gif_frame_bomb,
    noise,
    other_format,
    png_bomb,
    tiff_with_broken_second_page,
    tiff_with_huge_second_page,
    truncated,
)
from tests.support.images import jpeg, png_bytes, png_header
from tests.support.processes import BIG_MESSAGES, cap_memory, rotates, serving, worker_process
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc

pytestmark = pytest.mark.slow  # real worker processes on loopback

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


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
