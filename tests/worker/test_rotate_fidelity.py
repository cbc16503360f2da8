"""Rotation never answers ok with less than was sent, and the work one call may cause is bounded.

Deep colour is kept exactly or refused (UNSUPPORTED_FORMAT), an EXIF orientation
is applied and reset together whatever its type, count or repetitions (or, when
it is not an integer, both are left alone), RGBA BMP keeps its alpha, and decoder work bombs
(JPEG scans, TIFF pages, CPU time) are refused with WORK_LIMIT in milliseconds.
Pure-function checks first, then the same files through the worker's real servicers (in this process).
"""

from __future__ import annotations

import io
import struct
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from tests.support.deep import (
    bmp_v5_rgba,
    exif_orientation,
    jpeg_scan_bomb,
    png16,
    ramp,
    tiff,
    tiff_pages,
    webp_nested_anmf,
)
from tests.support.images import decode, encode, exif_block, jpeg, mad, photo
from tests.support.inprocess import run_cli
from tests.support.manifests import write_manifest
from tests.support.results import results
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.decode import MAX_JPEG_SCANS, upright
from worker.errors import Cancelled, InvalidArgument, Reason
from worker.rotation import auto_rotate, rotate

T = Image.Transpose


def refused(data: bytes, degrees: int = 90, **kw) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        rotate(data, degrees, **kw)
    return err.value


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- deep colour: kept exactly, or refused ---------------------------------------------------------------

DEEP_REFUSED = {
    "16-bit RGB PNG": lambda: png16(ramp(4, 5, 3, "uint16")),
    "16-bit RGBA PNG": lambda: png16(ramp(4, 5, 4, "uint16")),
    "16-bit grey+alpha PNG": lambda: png16(ramp(4, 5, 2, "uint16")),
    "16-bit RGB TIFF": lambda: tiff(ramp(4, 5, 3, "uint16")),
    "16-bit RGBA TIFF": lambda: tiff(ramp(4, 5, 4, "uint16")),
    "32-bit unsigned grey TIFF": lambda: tiff(ramp(4, 5, 1, "uint32")),
    "16-bit signed grey TIFF": lambda: tiff(ramp(4, 5, 1, "int16")),
}


@pytest.mark.parametrize("make", DEEP_REFUSED.values(), ids=DEEP_REFUSED.keys())
def test_deep_colour_pillow_would_narrow_is_refused_never_ok(make):
    data = make()
    err = refused(data)
    assert err.reason == Reason.UNSUPPORTED_FORMAT
    assert "-bit" in str(err) and "refused" in str(err)
    assert rotate(data, 0).data == data  # 0 degrees: the bytes as sent, nothing decoded


DEEP_KEPT = {
    "16-bit grey PNG": lambda: png16(ramp(4, 5, 1, "uint16")),
    "16-bit grey TIFF": lambda: tiff(ramp(4, 5, 1, "uint16")),
    "32-bit float grey TIFF": lambda: tiff(np.linspace(-3e38, 3e38, 20, dtype=np.float32).reshape(4, 5)),
    "32-bit signed grey TIFF": lambda: tiff(ramp(4, 5, 1, "int32")),
}


@pytest.mark.parametrize("make", DEEP_KEPT.values(), ids=DEEP_KEPT.keys())
def test_deep_colour_pillow_holds_is_kept_exactly(make):
    data = make()
    out = rotate(data, 90)
    assert out.method == "reencoded"
    got, sent = decoded(out.data), decoded(data)
    assert got.dtype == sent.dtype and np.array_equal(got, np.rot90(sent))
    assert Image.open(io.BytesIO(out.data)).mode == Image.open(io.BytesIO(data)).mode


@pytest.mark.parametrize("pixels", [np.arange(20, dtype=np.float64).reshape(4, 5), ramp(4, 5, 2, "uint16")],
                         ids=["float64 grey TIFF", "2-channel 16-bit TIFF"])
def test_tiff_sample_layouts_without_a_mode_are_unsupported_not_corrupt(pixels):
    err = refused(tiff(pixels))
    assert err.reason == Reason.UNSUPPORTED_FORMAT
    assert "unsupported sample format" in str(err)


# --- EXIF orientation of type LONG ------------------------------------------------------------------------


def _with_exif(fmt: str, kind: int, **options) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg(64, 48))).save(buf, fmt, exif=exif_orientation(6, kind), **options)
    return buf.getvalue()


@pytest.mark.parametrize("kind", [3, 4], ids=["SHORT", "LONG"])
@pytest.mark.parametrize("fmt, options, degrees", [
    ("JPEG", {"quality": 90}, 90),  # lossless DCT path
    ("JPEG", {"quality": 90}, 0),  # orientation alone: only the EXIF changes
    ("PNG", {}, 90),
    ("WEBP", {"lossless": True}, 180),
])
def test_exif_orientation_is_reset_whatever_its_type(fmt, options, degrees, kind):
    data = _with_exif(fmt, kind, **options)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    out = rotate(data, degrees)
    assert Image.open(io.BytesIO(out.data)).getexif().get(0x0112, 1) == 1
    want = np.asarray(upright(data).rotate(degrees, expand=True), dtype=np.int16)
    seen = np.asarray(upright(out.data), dtype=np.int16)  # what a viewer shows
    assert seen.shape == want.shape and np.abs(seen - want).mean() < 2


# --- RGBA BMP ---------------------------------------------------------------------------------------------


def test_rgba_bmp_keeps_its_alpha_and_declares_it():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 10, 4), dtype=np.uint8)
    out = rotate(bmp_v5_rgba(pixels), 90)
    header_size, compression = struct.unpack_from("<I", out.data, 14)[0], struct.unpack_from("<I", out.data, 30)[0]
    alpha_mask = struct.unpack_from("<I", out.data, 14 + 52)[0]
    assert header_size >= 108 and compression == 3 and alpha_mask == 0xFF000000
    back = Image.open(io.BytesIO(out.data))
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back), np.rot90(pixels))


# --- decoder work bombs -----------------------------------------------------------------------------------


def _refused_fast(data: bytes, **kw) -> tuple[InvalidArgument, float]:
    start = time.process_time()
    err = refused(data, **kw)
    return err, time.process_time() - start


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    err, seconds = _refused_fast(jpeg_scan_bomb(1024, 2000))  # took ~2.7 s of CPU to rotate, answered ok
    assert err.reason == Reason.WORK_LIMIT and str(MAX_JPEG_SCANS) in str(err)
    assert seconds < 0.5
    with pytest.raises(InvalidArgument) as classify:  # Classify decodes through the same door
        upright(jpeg_scan_bomb(1024, 2000))
    assert classify.value.reason == Reason.WORK_LIMIT


def test_a_progressive_jpeg_with_an_exif_thumbnail_is_not_counted_twice():
    buf = io.BytesIO()
    photo(256, 256).save(buf, "JPEG", progressive=True, exif=b"Exif\0\0" + b"\xff\xda" * 600)
    assert rotate(buf.getvalue(), 90).method == "lossless"


def test_tiff_with_too_many_pages_is_refused_without_reading_them_all():
    err, seconds = _refused_fast(tiff_pages(20_000))  # 2.1 MB: minutes of CPU before
    assert err.reason == Reason.WORK_LIMIT and "1,000" in str(err)
    assert seconds < 0.5
    assert refused(tiff_pages(30), max_frames=20).reason == Reason.WORK_LIMIT
    assert rotate(tiff_pages(30), 90, max_frames=30).method == "reencoded"


def test_cpu_budget_and_the_callers_check_stop_a_call():
    data = jpeg(640, 480)  # 480 rows: 180 degrees re-encodes (not whole 16-px MCUs at the top)
    err = refused(data, 180, cpu_seconds=0.0)
    assert err.reason == Reason.WORK_LIMIT and "CPU" in str(err)
    calls = []

    def stop() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled("client went away")

    # The check is made while the work goes on (every Budget.CHECK_EVERY seconds), and its error ends it.
    with pytest.raises(Cancelled):
        rotate(jpeg(1610, 1210), 180, check=stop)  # ~50 ms of re-encoding
    assert len(calls) == 3


def test_webp_with_deeply_nested_frames_rotates_without_recursion():
    data = webp_nested_anmf(2000)
    out = rotate(data, 90)
    assert np.array_equal(decoded(out.data), np.rot90(decoded(data)))


# --- end to end through the worker's servicers (in this process) ------------------------------------------

E2E = [
    ("16-bit RGB PNG", lambda: png16(ramp(4, 5, 3, "uint16")), "UNSUPPORTED_FORMAT"),
    ("32-bit unsigned grey TIFF", lambda: tiff(ramp(4, 5, 1, "uint32")), "UNSUPPORTED_FORMAT"),
    ("float64 TIFF", lambda: tiff(np.arange(20, dtype=np.float64).reshape(4, 5)), "UNSUPPORTED_FORMAT"),
    ("progressive JPEG with 30,000 scans (1.2 MB)", lambda: jpeg_scan_bomb(2048, 30_000), "WORK_LIMIT"),
    ("TIFF of 20,000 1x1 pages (2.1 MB)", lambda: tiff_pages(20_000), "WORK_LIMIT"),
    ("JPEG with EXIF orientation 6 stored as LONG", lambda: _with_exif("JPEG", 4, quality=90), "OK"),
    ("RGBA BMP with a V5 header", lambda: bmp_v5_rgba(ramp(4, 6, 4, "uint8")), "OK"),
    ("WebP with ANMF nested 2,000 deep", lambda: webp_nested_anmf(2000), "OK"),
]


@pytest.mark.parametrize("make, expected", [(m, e) for _, m, e in E2E], ids=[c for c, _, _ in E2E])
def test_through_the_worker(live, record_property, make, expected):
    data = make()
    record_property("expected", expected)
    start = time.perf_counter()
    with grpc.insecure_channel(live.address) as ch:
        try:
            answer = v1_grpc.ImageWorkerStub(ch).Rotate(v1.RotateRequest(image=data, degrees=90), timeout=60)
        except grpc.RpcError as e:
            status = rpc_status.from_call(e)
            info = error_details_pb2.ErrorInfo()
            reason = next((info.reason for d in status.details if d.Unpack(info)), None) if status else None
            ms = 1000 * (time.perf_counter() - start)
            record_property("observed", f"{e.code().name} {reason} in {ms:.0f} ms: {e.details()}")
            assert reason == expected, e.details()
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            return
    record_property("observed", f"OK, {len(answer.image):,} bytes")
    assert expected == "OK"
    out = Image.open(io.BytesIO(answer.image))
    assert out.getexif().get(0x0112, 1) == 1
    if out.format == "BMP":
        assert out.mode == "RGBA"


# --- malformed orientation tags: applied and reset together, or both left alone ------------------------------

SHORT, LONG = 3, 4
ORIENTATION = 0x0112


def no_faces() -> int | None:
    raise AssertionError("the faces are asked only when the file has no orientation to apply")


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


def test_a_malformed_orientation_through_batch_run_is_upright_and_reset(live, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for i, (_tag, entries) in enumerate(APPLIED.items()):
        data, upright = malformed(entries, 64 if i % 2 else 60)
        (folder / f"{i}.jpg").write_bytes(data)
        upright.save(folder / f"{i}.png")
        rows.append({"path": f"{i}.jpg", "op": "rotate", "rotation": "auto"})
    write_manifest(folder / "m.csv", rows)
    code, _, stderr = run_cli("run", folder / "m.csv", "--worker", live.address, "--out", tmp_path / "out")
    assert code == 0, stderr
    rows_out = results(tmp_path / "out")
    assert {(r["status"], r["decided_by"]) for r in rows_out} == {("ok", "exif")} and len(rows_out) == len(rows)
    for i in range(len(rows)):
        got = decode((tmp_path / "out" / "rotated" / f"{i}.jpg").read_bytes())
        assert got.getexif().get(ORIENTATION, 1) == 1
        assert mad(got, Image.open(folder / f"{i}.png")) < 4
