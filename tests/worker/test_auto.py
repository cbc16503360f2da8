"""Rotation ``auto`` (``auto_rotate``): the EXIF orientation, else the faces, else nothing decides the turn;
pure with a stand-in for the face search, and through a real worker with its face model.

The EXIF cases are made here: an upright picture stored as each of the eight orientations would store it,
compared after ``auto`` with Pillow's own ``ImageOps.exif_transpose`` of the stored file.
"""

from __future__ import annotations

import time

import grpc
import pytest
from PIL import Image, ImageOps

from tests.support.faces import SAMPLES, lfw_root
from tests.support.images import decode, encode, mad, photo
from tests.support.inprocess import in_process_worker
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.faces import load_classifier
from worker.rotation import auto_rotate, rotate

T = Image.Transpose
ORIENTATION = 0x0112
# What a camera stores for each orientation, given the upright picture: the inverse of the transpose a viewer
# applies (PIL.ImageOps.exif_transpose's table).
STORED = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM,
          5: T.TRANSPOSE, 6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}
TURNS = {0: None, 90: T.ROTATE_90, 180: T.ROTATE_180, 270: T.ROTATE_270}
MIRRORED = {2, 4, 5, 7}





def oriented(orientation: int, fmt: str = "JPEG") -> tuple[bytes, Image.Image]:
    """The upright 64x48 picture stored with ``orientation`` (whole 16x16 MCUs: every JPEG transform exact)."""
    upright = photo(64, 48)
    op = STORED[orientation]
    stored = upright if op is None else upright.transpose(op)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif.tobytes(), **options), upright


def no_faces() -> int | None:
    raise AssertionError("the faces are asked only when the file has no orientation to apply")


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_decides_and_is_applied_losslessly(orientation):
    data, upright = oriented(orientation)
    out = auto_rotate(data, no_faces)
    got = decode(out.data)
    assert (out.decided_by, out.method) == ("exif", "lossless")
    assert got.getexif().get(ORIENTATION, 1) == 1 and got.size == upright.size
    assert mad(got, ImageOps.exif_transpose(decode(data))) < 1
    assert mad(got, upright) < 3
    # degrees is the turn, after a left-right mirror for a mirrored orientation: stored pixels, so treated,
    # are the upright picture.
    stored = decode(data)
    if orientation in MIRRORED:
        stored = stored.transpose(T.FLIP_LEFT_RIGHT)
    turn = TURNS[out.degrees]
    assert (stored if turn is None else stored.transpose(turn)).tobytes() == ImageOps.exif_transpose(
        decode(data)).tobytes()


def test_the_degrees_of_each_orientation():
    got = {o: auto_rotate(oriented(o)[0], no_faces).degrees for o in range(2, 9)}
    assert got == {2: 0, 3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}


def test_exif_orientation_of_a_png_decides_too():
    data, upright = oriented(8, "PNG")
    out = auto_rotate(data, no_faces)
    assert (out.decided_by, out.degrees) == ("exif", 90)
    assert decode(out.data).tobytes() == upright.tobytes()


def test_orientation_1_asks_the_faces_and_without_one_writes_the_file_unchanged():
    data, _ = oriented(1)
    asked = []
    out = auto_rotate(data, lambda: asked.append(True))  # None: no face
    assert asked == [True]
    assert (out.decided_by, out.degrees, out.method, out.data) == ("none", 0, "copy", data)


@pytest.mark.parametrize("turn", [0, 90, 180, 270])
def test_the_faces_turn_decides_without_an_orientation(turn):
    data = encode(photo(64, 48), "JPEG", quality=90)
    out = auto_rotate(data, lambda: turn)
    assert (out.decided_by, out.degrees) == ("faces", turn)
    assert out.data == rotate(data, turn).data


def test_auto_converts_like_any_rotation():
    data, upright = oriented(6)
    out = auto_rotate(data, no_faces, format="PNG")
    assert (out.format, out.decided_by, out.degrees) == ("PNG", "exif", 270)
    assert mad(decode(out.data), upright) < 3
    unchanged = auto_rotate(encode(photo(64, 48), "PNG"), lambda: None, format="JPEG")
    assert (unchanged.decided_by, unchanged.format, unchanged.method) == ("none", "JPEG", "reencoded")


# --- through the worker's servicers, with the shipped face model (in this process) -------------------------------


@pytest.fixture(scope="module")
def shipped_worker():
    with in_process_worker(load_classifier()) as w:
        yield w


def auto(worker, data: bytes) -> tuple[v1.RotateResponse, float]:
    """Rotate auto; the answer and its seconds."""
    with grpc.insecure_channel(worker.address) as ch:
        start = time.perf_counter()
        reply = v1_grpc.ImageWorkerStub(ch).Rotate(v1.RotateRequest(image=data, auto=True), timeout=120)
        return reply, time.perf_counter() - start


def test_exif_decides_through_the_worker(shipped_worker):
    data, upright = oriented(6)
    reply, _ = auto(shipped_worker, data)
    assert (reply.decided_by, reply.degrees, reply.method) == ("exif", 270, "lossless")
    assert mad(decode(reply.image), upright) < 3


def test_a_turned_face_photo_is_made_upright_through_the_worker(shipped_worker):
    path = sorted((lfw_root() / "George_W_Bush").glob("*.jpg"))[0]
    turned = encode(decode(path.read_bytes()).transpose(T.ROTATE_90), "JPEG", quality=95)  # no EXIF
    reply, _ = auto(shipped_worker, turned)
    assert (reply.decided_by, reply.degrees) == ("faces", 270)
    assert mad(decode(reply.image), decode(turned).transpose(T.ROTATE_270)) < 3


def test_a_photo_without_face_or_orientation_comes_back_unchanged(shipped_worker, record_property):
    data = (SAMPLES / "china.jpg").read_bytes()
    reply, seconds = auto(shipped_worker, data)
    record_property("seconds", f"{seconds:.2f}")  # docs/rotation.md quotes the cost of a face search
    assert (reply.decided_by, reply.degrees, reply.method, reply.image) == ("none", 0, "copy", data)
