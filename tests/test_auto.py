"""Rotation ``auto`` (``auto_rotate``): the EXIF orientation, else the faces, else nothing decides the turn;
pure with a stand-in for the face search, and through a real worker with its face model.

The EXIF cases are made here: an upright picture stored as each of the eight orientations would store it,
compared after ``auto`` with Pillow's own ``ImageOps.exif_transpose`` of the stored file.
"""

from __future__ import annotations

import struct
import time

import grpc
import pytest
from PIL import Image, ImageOps

from tests.support.faces import SAMPLES, lfw_root
from tests.support.images import decode, encode, exif_block, mad, photo
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch
from tests.support.results import results
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
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


# --- malformed orientation tags: applied and reset together, or both left alone ------------------------------

SHORT, LONG = 3, 4


def shorts(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


# Tags Pillow (hence the worker) reads as orientation 6: the first value of an integer tag of any count.
APPLIED = {
    "SHORT[2] (6, 0)": [(ORIENTATION, SHORT, 2, shorts(6, 0))],
    "SHORT[3], stored by offset": [(ORIENTATION, SHORT, 3, shorts(6, 0, 0))],
    "LONG[2], stored by offset": [(ORIENTATION, LONG, 2, struct.pack("<II", 6, 0))],
    "SSHORT[1]": [(ORIENTATION, 8, 1, shorts(6))],
    "the tag twice (6, then 3)": [(ORIENTATION, SHORT, 1, shorts(6)), (ORIENTATION, SHORT, 1, shorts(3))],
}
# Tags the worker does not apply (not an integer): left as they are, never reset without being applied.
NOT_APPLIED = {
    "RATIONAL 6/1": [(ORIENTATION, 5, 1, struct.pack("<II", 6, 1))],
    "ASCII '6'": [(ORIENTATION, 2, 2, b"6\0")],
    "UNDEFINED": [(ORIENTATION, 7, 1, b"\x06")],
    "BYTE[4]": [(ORIENTATION, 1, 4, bytes([6, 0, 0, 0]))],
}


def malformed(entries, width: int = 64) -> tuple[bytes, Image.Image]:
    """The upright picture stored turned as orientation 6 asks, with ``entries`` as its only EXIF tags;
    ``width`` 64 is whole MCUs (lossless), 60 is not (re-encoded)."""
    upright = photo(width, 48)
    stored = upright.transpose(T.ROTATE_90)
    return encode(stored, "JPEG", quality=95, subsampling=0, exif=exif_block(entries)), upright


@pytest.mark.parametrize("target", ["", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("width", [64, 60], ids=["lossless", "reencoded"])
@pytest.mark.parametrize("tag", APPLIED)
def test_an_orientation_tag_of_any_count_or_repetition_is_applied_and_reset(tag, width, target):
    data, upright = malformed(APPLIED[tag], width)
    for out in (auto_rotate(data, no_faces, format=target), rotate(data, 0, format=target)):
        got = decode(out.data)
        assert got.getexif().get(ORIENTATION, 1) == 1, "applied to the pixels, so reset to 1"
        assert got.size == upright.size and mad(got.convert("RGB"), upright) < 4
    assert (out.degrees, auto_rotate(data, no_faces).decided_by) == (0, "exif")


@pytest.mark.parametrize("target", ["", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("tag", NOT_APPLIED)
def test_an_orientation_tag_that_is_not_applied_is_left_alone(tag, target):
    data, _ = malformed(NOT_APPLIED[tag])
    stored = decode(data)
    out = auto_rotate(data, lambda: None, format=target)
    got = decode(out.data)
    assert out.decided_by == "none" and got.size == stored.size and mad(got.convert("RGB"), stored) < 4
    if target == "TIFF":
        # libtiff writes only 1..8: the tag goes, and the row says so.
        assert ORIENTATION not in got.getexif() and "orientation dropped" in out.note
    else:
        assert got.getexif().get(ORIENTATION) == stored.getexif().get(ORIENTATION)


@pytest.mark.slow
def test_a_malformed_orientation_through_batch_run_is_upright_and_reset(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for i, (_tag, entries) in enumerate(APPLIED.items()):
        data, upright = malformed(entries, 64 if i % 2 else 60)
        (folder / f"{i}.jpg").write_bytes(data)
        upright.save(folder / f"{i}.png")
        rows.append({"path": f"{i}.jpg", "op": "rotate", "rotation": "auto"})
    write_manifest(folder / "m.csv", rows)
    done = run_batch(folder / "m.csv", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    rows_out = results(tmp_path / "out")
    assert {(r["status"], r["decided_by"]) for r in rows_out} == {("ok", "exif")} and len(rows_out) == len(rows)
    for i in range(len(rows)):
        got = decode((tmp_path / "out" / "rotated" / f"{i}.jpg").read_bytes())
        assert got.getexif().get(ORIENTATION, 1) == 1
        assert mad(got, Image.open(folder / f"{i}.png")) < 4


# --- through the worker, with its face model ---------------------------------------------------------------


def auto(worker, data: bytes) -> tuple[v1.RotateResponse, float]:
    """Rotate auto, waiting for the face model to load (MODEL_LOADING is retried); the answer and its seconds."""
    with grpc.insecure_channel(worker.address) as ch:
        stub = v1_grpc.ImageWorkerStub(ch)
        deadline = time.monotonic() + 240
        while True:
            start = time.perf_counter()
            try:
                return stub.Rotate(v1.RotateRequest(image=data, auto=True), timeout=120), time.perf_counter() - start
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_exif_decides_through_the_worker(worker):
    data, upright = oriented(6)
    reply, _ = auto(worker, data)
    assert (reply.decided_by, reply.degrees, reply.method) == ("exif", 270, "lossless")
    assert mad(decode(reply.image), upright) < 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_turned_face_photo_is_made_upright_through_the_worker(worker):
    path = sorted((lfw_root() / "George_W_Bush").glob("*.jpg"))[0]
    turned = encode(decode(path.read_bytes()).transpose(T.ROTATE_90), "JPEG", quality=95)  # no EXIF
    reply, _ = auto(worker, turned)
    assert (reply.decided_by, reply.degrees) == ("faces", 270)
    assert mad(decode(reply.image), decode(turned).transpose(T.ROTATE_270)) < 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_photo_without_face_or_orientation_comes_back_unchanged(worker, record_property):
    data = (SAMPLES / "china.jpg").read_bytes()
    auto(worker, data)  # the first face search loads the model
    reply, seconds = auto(worker, data)
    record_property("seconds", f"{seconds:.2f}")  # docs/rotation.md quotes the cost of a face search
    assert (reply.decided_by, reply.degrees, reply.method, reply.image) == ("none", 0, "copy", data)
