"""Property tests: arbitrary bytes into the worker's decode path and the manifest parser.

The promise is narrow and absolute: whatever the bytes, the answer is a result
or one of our own clean errors (``WorkerError`` on the worker side, the
manifest's error types on the driver side) — never another exception, a crash
or a hang. Inputs are both raw noise and mutations of small valid files, since
noise alone rarely gets past the first magic-number check.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.hostile import tiff_with_broken_second_page
from tests.support.images import png_header
from worker.decode import open_image, upright
from worker.errors import WorkerError

# Small limit: a mutated header may declare a large image, and decoding
# millions of pixels per example would make the test slow, not more thorough.
MAX_PIXELS = 200_000

FUZZ = settings(
    max_examples=200,
    deadline=5000,  # ms per example: a hang fails the example instead of the whole run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # CI reproducible; failures print the minimal input
)


def _seed_files() -> dict[str, bytes]:
    """One tiny valid file per supported format, as mutation seeds."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    files = {}
    for fmt, img, kw in [
        ("JPEG", rgb, {"quality": 80}),
        ("PNG", rgb, {}),
        ("PNG", rgb.convert("P"), {}),
        ("GIF", rgb.convert("P"), {}),
        ("BMP", rgb, {}),
        ("TIFF", rgb, {}),
        ("WEBP", rgb, {"quality": 80}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        files[f"{fmt}-{img.mode}"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate on display, exercises exif_transpose
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif.tobytes())
    files["JPEG-exif"] = buf.getvalue()
    return files


SEEDS = _seed_files()


@st.composite
def mutated_images(draw) -> bytes:
    """A valid seed file with a few bytes overwritten, a cut, or a spliced chunk."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["none", "truncate", "splice"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


def png_declaring(width: int, height: int, body: bytes) -> bytes:
    """A PNG header with any declared size followed by an arbitrary compressed IDAT."""
    return png_header(width, height, idat=zlib.compress(body))


hostile_bytes = st.one_of(
    st.binary(max_size=2048),
    mutated_images(),
    st.builds(png_declaring, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=256)),
)


@pytest.mark.timeout(180)
@FUZZ
@given(hostile_bytes)
def test_decode_gives_an_image_or_a_clean_error(data: bytes):
    """decode.open_image and decode.upright: 200 arbitrary, mutated or huge-header inputs"""
    try:
        img = open_image(data, MAX_PIXELS)
    except WorkerError as e:
        assert str(e), "errors must say what was wrong"
        return
    assert img.width * img.height <= MAX_PIXELS
    try:
        shown = upright(data, MAX_PIXELS)
    except WorkerError as e:
        assert str(e)
        return
    assert shown.width * shown.height <= MAX_PIXELS


@pytest.mark.timeout(180)
@FUZZ
@given(hostile_bytes, st.sampled_from([0, 90, 180, 270, -90, 450, 45]))
@example(tiff_with_broken_second_page(), 90)  # found by this test: TypeError from Pillow's TIFF reader
def test_rotate_gives_a_file_or_a_clean_error(data: bytes, degrees: int):
    """worker.rotation.rotate: 200 arbitrary, mutated or huge-header inputs at 7 angles"""
    from worker import rotation

    try:
        out = rotation.rotate(data, degrees, max_pixels=MAX_PIXELS)
    except WorkerError as e:
        assert str(e)
        return
    assert degrees % 90 == 0
    assert out.data and out.width * out.height <= MAX_PIXELS


# --- the manifest parser ---------------------------------------------------------------------------

manifest_text = st.one_of(
    st.binary(max_size=1024),
    # CSV-shaped text: headers right, fields arbitrary — what gets past the first check
    st.lists(
        st.tuples(st.text(max_size=40), st.sampled_from(["rotate", "classify", "", "ROTATE", "x"]),
                  st.text(max_size=12), st.text(max_size=20)),
        max_size=12,
    ).map(lambda rows: ("path,op,rotation,output\n" + "\n".join(",".join(r) for r in rows)).encode("utf-8",
                                                                                                   "surrogatepass")),
)


@pytest.mark.timeout(180)
@FUZZ
@given(manifest_text)
def test_manifest_parser_gives_rows_or_its_own_errors(tmp_path_factory, data: bytes):
    """batch.manifest.read_rows: 200 arbitrary byte strings and CSV-shaped texts with arbitrary fields"""
    from batch.manifest import ManifestError, Row, read_rows

    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "m.csv"
    path.write_bytes(data)
    try:
        rows = list(read_rows(path, folder / "out"))
    except ManifestError as e:
        assert e.message
        return
    for row in rows:
        assert isinstance(row, Row)
        # a row either failed with a message or is ready to run, never half-resolved
        if row.error is None:
            assert row.input_path is not None and row.op in ("rotate", "classify")
            if row.op == "rotate":
                assert row.degrees is not None and row.degrees % 90 == 0
                assert row.output_path is not None and (folder / "out") in row.output_path.parents
