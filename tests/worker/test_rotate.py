"""worker.rotation as pure functions: every corpus format and angle against a reference.

References are computed independently of the code under test: Pillow's
``transpose`` of the upright decoded image (pixel-exact for lossless formats),
PSNR for JPEG, and ``jpegtran`` where it is installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageSequence, JpegImagePlugin

from tests.support.images import FORMATS, photo, png_header
from worker import jpeg_transform
from worker.decode import upright
from worker.errors import InvalidArgument
from worker.rotation import (
    lossless_jpeg_available,
    normalize_degrees,
    rotate,
    rotate_pixels,
)
from worker.rotation.webp import webp_quality

T = Image.Transpose
TURN = {0: None, 90: T.ROTATE_90, 180: T.ROTATE_180, 270: T.ROTATE_270, -90: T.ROTATE_270}
ANGLES = (90, 180, 270, -90)
# 320x240 (whole 16x16 MCUs) rotates losslessly at every angle; 317x239 at none.
NOT_LOSSLESS = {"odd_size.jpg"}
ORIENTATION = 0x0112

needs_turbojpeg = pytest.mark.skipif(
    not lossless_jpeg_available(),
    reason="libturbojpeg is not installed (Debian: apt-get install libturbojpeg0); "
    "the lossless JPEG path cannot be tested",
)


# --- fixtures and helpers ---------------------------------------------------


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def turned(img: Image.Image, degrees: int) -> Image.Image:
    op = TURN[degrees]
    return img if op is None else img.transpose(op)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **{"quality": 90, **kw})
    return buf.getvalue()


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def expected_method(name: str, degrees: int) -> str:
    if name == "exif_orientation_6.jpg" and degrees % 360 == 90:
        return "lossless"  # orientation 6 undoes a 90 degree turn: only the tag changes
    if not name.endswith(".jpg"):
        return "reencoded"
    if name in NOT_LOSSLESS or not lossless_jpeg_available():
        return "reencoded"
    return "lossless"


# --- the corpus: every format, every angle -----------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("degrees", ANGLES)
@pytest.mark.parametrize("name", FORMATS)
def test_corpus_file_matches_reference(formats_corpus, name, degrees):
    data = (formats_corpus / name).read_bytes()
    source = decode(data)
    want = turned(upright(data), degrees)

    got = rotate(data, degrees)
    out = decode(got.data)

    assert got.format == out.format == source.format
    assert out.mode == source.mode
    assert (got.width, got.height) == out.size == want.size
    assert out.width * out.height == source.width * source.height  # never downscaled
    if degrees % 180:
        assert out.size == (upright(data).height, upright(data).width)
    assert out.info.get("icc_profile") == source.info.get("icc_profile")
    assert out.getexif().get(ORIENTATION, 1) == 1
    assert got.method == expected_method(name, degrees)

    if source.format == "JPEG":
        size_ratio = len(got.data) / len(data)
        if got.method == "lossless":
            assert psnr(out, want) >= 50
            assert abs(size_ratio - 1) <= 0.03, size_ratio
        else:
            assert psnr(out, want) >= 35
            assert size_ratio <= 1.25
            assert out.quantization == source.quantization
            assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(source)
        assert bool(out.info.get("progressive")) == bool(source.info.get("progressive"))
    elif name == "rgb.webp":  # lossy WebP: no pixel-exact reference exists
        assert psnr(out, want) >= 35
        assert len(got.data) <= 1.25 * len(data)
        assert abs(webp_quality(got.data) - webp_quality(data)) <= 2  # its own quality, not more
    else:
        assert_frames_equal(got.data, data, degrees)


def assert_frames_equal(rotated: bytes, original: bytes, degrees: int) -> None:
    """Every frame pixel-exact against Pillow's transpose of the original frame."""
    with Image.open(io.BytesIO(original)) as src, Image.open(io.BytesIO(rotated)) as out:
        src_frames = [f.copy() for f in ImageSequence.Iterator(src)]
        out_frames = [f.copy() for f in ImageSequence.Iterator(out)]
    assert len(out_frames) == len(src_frames)
    for want, got in zip(src_frames, out_frames, strict=True):
        if want.mode in ("P", "PA"):  # palettes may be reordered: compare colours
            want, got = want.convert("RGBA"), got.convert("RGBA")
        assert got.mode == want.mode
        assert np.array_equal(np.asarray(got), np.asarray(turned(want, degrees)))


# --- JPEG: lossless path -----------------------------------------------------


@needs_turbojpeg
@pytest.mark.parametrize("degrees", ANGLES)
@pytest.mark.parametrize("name", ["rgb.jpg", "rgb_444.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg"])
def test_lossless_jpeg_decodes_like_jpegtran(formats_corpus, name, degrees):
    jpegtran = shutil.which("jpegtran")
    if jpegtran is None:
        pytest.skip("jpegtran not installed (Debian: apt-get install libjpeg-turbo-progs)")
    path = formats_corpus / name
    clockwise = (-degrees) % 360  # jpegtran's -rotate is clockwise; ours counter-clockwise
    reference = subprocess.run(
        [jpegtran, "-rotate", str(clockwise), "-perfect", "-copy", "all", str(path)],
        check=True, capture_output=True,
    ).stdout
    got = rotate(path.read_bytes(), degrees)
    assert got.method == "lossless"
    # The same DCT coefficients decode to the very same pixels.
    assert np.array_equal(np.asarray(decode(got.data)), np.asarray(decode(reference)))


@pytest.mark.slow
@needs_turbojpeg
@pytest.mark.timeout(180)
def test_24_megapixel_jpeg_is_lossless_at_every_angle():
    data = jpeg_bytes(photo(6000, 4000), quality=90, subsampling=2)
    source = decode(data)
    for degrees in ANGLES:
        got = rotate(data, degrees)
        assert got.method == "lossless"
        assert abs(len(got.data) / len(data) - 1) <= 0.03
        out = decode(got.data)
        want = turned(source, degrees)
        assert out.size == want.size == ((4000, 6000) if degrees % 180 else (6000, 4000))
        # every 5th row keeps the comparison's memory small
        assert psnr(np.asarray(out)[::5], np.asarray(want)[::5]) >= 50


@pytest.mark.parametrize(
    ("degrees", "method"), [(90, "lossless"), (180, "reencoded"), (270, "reencoded"), (-90, "reencoded")]
)
def test_1920x1080_420_jpeg_paths(degrees, method):
    """1080 is not a multiple of the 16-pixel MCU: only the turn that keeps it at the bottom is exact."""
    if method == "lossless" and not lossless_jpeg_available():
        method = "reencoded"
    data = jpeg_bytes(photo(1920, 1080, seed=3), quality=90, subsampling=2)
    source = decode(data)
    got = rotate(data, degrees)
    out = decode(got.data)
    assert got.method == method
    assert out.size == ((1080, 1920) if degrees % 180 else (1920, 1080))
    want = turned(source, degrees)
    if method == "lossless":
        assert psnr(out, want) >= 50
        assert abs(len(got.data) / len(data) - 1) <= 0.03
    else:
        assert psnr(out, want) >= 35
        assert len(got.data) <= 1.25 * len(data)
        assert out.quantization == source.quantization  # its own tables, not a higher quality
        assert JpegImagePlugin.get_sampling(out) == 2  # still 4:2:0


@pytest.mark.parametrize(
    ("size", "mcu", "lossless_angles"),
    [
        ((6000, 4000), (16, 16), {90, 180, 270}),
        ((4032, 3024), (16, 16), {90, 180, 270}),
        ((1920, 1080), (16, 16), {90}),
        ((1920, 1080), (16, 8), {90, 180, 270}),  # 4:2:2: 8-pixel-high MCUs
        ((1920, 1080), (8, 8), {90, 180, 270}),  # 4:4:4 and grey
        ((637, 479), (16, 16), set()),
        ((640, 479), (16, 16), {90}),
        ((637, 480), (16, 16), {270}),
    ],
)
def test_which_turns_are_exact(size, mcu, lossless_angles):
    """The table in docs/rotation.md: a counter-clockwise turn by 90 moves the left edge to
    the bottom, so the width must be whole MCUs; by 270 the height; by 180 both."""
    ccw = {90: jpeg_transform.Op.ROT270, 180: jpeg_transform.Op.ROT180, 270: jpeg_transform.Op.ROT90}
    exact = {d for d, op in ccw.items() if jpeg_transform.is_perfect(op, *size, mcu)}
    assert exact == lossless_angles


@pytest.mark.parametrize(
    ("sampling", "mcu"),
    [
        ([(1, 1)], (8, 8)),
        ([(1, 1)] * 3, (8, 8)),
        ([(2, 1), (1, 1), (1, 1)], (16, 8)),
        ([(2, 2), (1, 1), (1, 1)], (16, 16)),
        ([(1, 1)] * 4, (8, 8)),  # CMYK
        ([(2, 2), (2, 1), (1, 1)], None),  # TurboJPEG cannot transform this: re-encode
    ],
)
def test_mcu_size_from_sampling_factors(sampling, mcu):
    assert jpeg_transform.mcu_size(sampling) == mcu


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("degrees", [0, *ANGLES])
@pytest.mark.parametrize(("width", "height"), [(64, 48), (60, 44)])
def test_every_exif_orientation_combines_with_the_turn(orientation, degrees, width, height):
    """What a viewer sees is turned: orientation and rotation become one transform."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = jpeg_bytes(photo(width, height, seed=orientation), exif=exif.tobytes(), subsampling=2)
    want = turned(upright(data), degrees)
    got = rotate(data, degrees)
    out = decode(got.data)
    assert out.size == want.size
    assert out.getexif()[ORIENTATION] == 1
    if orientation == 1 and degrees == 0:
        assert got.method == "copy" and got.data is data
    elif got.method == "lossless":
        assert psnr(out, want) >= 50
    else:
        assert (width, height) == (60, 44) or not lossless_jpeg_available()
        assert psnr(out, want) >= 35


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_png_is_applied_exactly(orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    source = photo(30, 20, seed=orientation)
    data = encoded(source, "PNG", exif=exif.tobytes())
    got = rotate(data, 90)
    out = decode(got.data)
    assert np.array_equal(np.asarray(out), np.asarray(upright(data).transpose(T.ROTATE_90)))
    assert out.getexif()[ORIENTATION] == 1


def test_orientation_that_cancels_the_turn_only_rewrites_the_tag(formats_corpus):
    data = (formats_corpus / "exif_orientation_6.jpg").read_bytes()
    got = rotate(data, 90)  # 6 = "turn 90 clockwise to view"; then 90 counter-clockwise
    assert got.method == "lossless"
    assert len(got.data) == len(data)
    assert sum(a != b for a, b in zip(got.data, data, strict=True)) == 1  # the orientation value
    assert np.array_equal(np.asarray(decode(got.data)), np.asarray(decode(data)))


def test_zero_degrees_without_orientation_returns_the_input(formats_corpus):
    data = (formats_corpus / "rgb.png").read_bytes()
    got = rotate(data, 0)
    assert got.method == "copy"
    assert got.data is data
    assert (got.format, got.width, got.height) == ("PNG", 320, 240)
    assert rotate(data, 360).data is data


def test_zero_degrees_with_orientation_normalises(formats_corpus):
    data = (formats_corpus / "exif_orientation_6.jpg").read_bytes()
    got = rotate(data, 0)
    assert (got.width, got.height) == (240, 320)
    assert decode(got.data).getexif()[ORIENTATION] == 1
    assert psnr(decode(got.data), upright(data)) >= 50


# --- JPEG: re-encode path ------------------------------------------------------


def test_without_libturbojpeg_jpeg_is_reencoded_with_its_own_tables(formats_corpus, monkeypatch):
    # The machine without libturbojpeg0, simulated by the one seam that loads it.
    monkeypatch.setattr(jpeg_transform, "_library", lambda: None)
    assert not lossless_jpeg_available()
    for name in ("rgb.jpg", "rgb_444.jpg", "progressive.jpg"):
        data = (formats_corpus / name).read_bytes()
        source = decode(data)
        got = rotate(data, 90)
        out = decode(got.data)
        assert got.method == "reencoded"
        assert out.quantization == source.quantization
        assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(source)
        assert bool(out.info.get("progressive")) == bool(source.info.get("progressive"))
        assert psnr(out, source.transpose(T.ROTATE_90)) >= 35
        assert len(got.data) <= 1.25 * len(data)


# --- metadata ----------------------------------------------------------------------


def tagged_exif() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model X"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    return exif.tobytes()


@pytest.mark.parametrize(
    ("fmt", "options", "degrees", "method"),
    [
        ("JPEG", {"quality": 90}, 90, "lossless"),
        ("JPEG", {"quality": 90, "progressive": True}, 270, "lossless"),
        ("JPEG", {"quality": 90}, 180, "reencoded"),  # 608x412: 412 is not whole MCUs
        ("PNG", {}, 90, "reencoded"),
        ("WEBP", {"quality": 85}, 90, "reencoded"),
        ("TIFF", {}, 270, "reencoded"),
    ],
)
def test_icc_dpi_and_exif_tags_are_kept(fmt, options, degrees, method):
    icc = srgb_icc()
    source = photo(608, 412 if method == "reencoded" and fmt == "JPEG" else 400)
    dpi = (300, 150)
    kw = {"icc_profile": icc, "dpi": dpi, **options}
    if fmt != "TIFF":
        kw["exif"] = tagged_exif()
    data = encoded(source, fmt, **kw)
    got = rotate(data, degrees)
    out = decode(got.data)
    if method == "lossless" and not lossless_jpeg_available():
        method = "reencoded"
    assert got.method == method
    assert out.info.get("icc_profile") == icc
    if fmt != "WEBP":  # WebP has no resolution field
        want_dpi = dpi[::-1] if degrees % 180 else dpi
        assert tuple(round(v) for v in out.info["dpi"]) == want_dpi
    if fmt != "TIFF":
        exif = out.getexif()
        assert exif[0x010F] == "Camera maker" and exif[0x0110] == "Model X"
        assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
        assert exif[ORIENTATION] == 1
    if fmt == "JPEG":
        assert bool(out.info.get("progressive")) == bool(options.get("progressive"))


def test_xmp_orientation_is_reset_too():
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = jpeg_bytes(photo(64, 48), exif=exif.tobytes(), xmp=xmp)
    out = decode(rotate(data, 180).data)
    assert b'tiff:Orientation="1"' in out.info["xmp"]


def test_16_bit_png_keeps_16_bits(formats_corpus):
    data = (formats_corpus / "gray16.png").read_bytes()
    out = decode(rotate(data, 90).data)
    assert out.mode == "I;16"
    values = np.asarray(out)
    assert values.dtype == np.uint16 and values.max() > 255
    assert np.array_equal(values, np.rot90(np.asarray(decode(data))))


def test_palette_png_keeps_palette_and_transparency():
    source = photo(40, 30).convert("P")
    data = encoded(source, "PNG", transparency=3)
    out = decode(rotate(data, 270).data)
    assert out.mode == "P" and out.info["transparency"] == 3
    assert np.array_equal(np.asarray(out.convert("RGBA")), np.asarray(source.convert("RGBA").transpose(T.ROTATE_270)))


def test_rgba_keeps_alpha_in_png_and_lossless_webp():
    rgba = photo(50, 40).convert("RGBA")
    alpha = np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))
    rgba.putalpha(Image.fromarray(alpha))
    for fmt, kw in (("PNG", {}), ("WEBP", {"lossless": True, "exact": True})):
        data = encoded(rgba, fmt, **kw)
        got = rotate(data, 90)
        out = decode(got.data)
        assert out.mode == "RGBA"
        assert np.array_equal(np.asarray(out), np.asarray(rgba.transpose(T.ROTATE_90))), fmt


def test_animated_gif_keeps_every_frame_duration_and_loop():
    frames = [photo(48, 32, seed=i).convert("P") for i in range(3)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[100, 250, 400], loop=0)
    got = rotate(data, 90)
    assert got.method == "reencoded" and (got.width, got.height) == (32, 48)
    with Image.open(io.BytesIO(got.data)) as out:
        assert out.n_frames == 3
        assert out.info["loop"] == 0
        durations = []
        for frame in ImageSequence.Iterator(out):
            durations.append(frame.info["duration"])
    assert durations == [100, 250, 400]
    assert_frames_equal(got.data, data, 90)


def test_animated_webp_keeps_every_frame():
    frames = [photo(48, 32, seed=i) for i in range(3)]
    data = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=[100, 200, 300],
                   loop=2, lossless=True)
    got = rotate(data, 180)
    with Image.open(io.BytesIO(got.data)) as out:
        assert out.n_frames == 3 and out.info["loop"] == 2
    assert_frames_equal(got.data, data, 180)


# --- errors --------------------------------------------------------------------------


BOMB_PNG = png_header(100_000, 100_000, idat=zlib.compress(b"\x00" * 4096))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: b"", "empty"),
        (lambda c: (c / "rgb.jpg").read_bytes()[:(c / "rgb.jpg").stat().st_size // 2], "truncated"),
        (lambda c: (c / "rgb.jpg").read_bytes()[:400], "corrupt JPEG"),
        (lambda c: (c / "rgb.png").read_bytes()[:(c / "rgb.png").stat().st_size // 2], "truncated"),
        (lambda c: np.random.default_rng(1).bytes(10_000), "not a supported image"),
        (lambda c: b"<!DOCTYPE html><html><title>404</title></html>", "not a supported image"),
        (lambda c: BOMB_PNG, "decompression bomb"),
    ],
    ids=["empty", "truncated-jpeg", "jpeg-header-only", "truncated-png", "random", "html-named-png", "bomb"],
)
def test_bad_images_are_invalid_argument_with_a_specific_message(formats_corpus, make, message):
    with pytest.raises(InvalidArgument, match=message):
        rotate(make(formats_corpus), 90)


def test_pixel_limit_is_configurable(formats_corpus):
    data = (formats_corpus / "rgb.png").read_bytes()
    with pytest.raises(InvalidArgument, match=r"320x240 = 76,800 pixels, over the worker's limit of 50,000"):
        rotate(data, 90, max_pixels=50_000)


@pytest.mark.parametrize("degrees", [45, 1, -45, 10**9 + 1, 89])
def test_rotation_not_a_multiple_of_90_names_the_value(degrees):
    with pytest.raises(InvalidArgument, match=rf"multiple of 90 degrees.*got {degrees}$"):
        normalize_degrees(degrees)


@pytest.mark.parametrize("degrees", [1.5, "90", None, True])
def test_rotation_of_the_wrong_type_names_the_value(degrees):
    with pytest.raises(InvalidArgument, match="whole number of degrees"):
        normalize_degrees(degrees)


@pytest.mark.parametrize(
    ("degrees", "normal"),
    [(0, 0), (90, 90), (-90, 270), (450, 90), (-360, 0), (720, 0), (-270, 90), (10**9 + 80, 0)],
)
def test_multiples_of_90_are_normalised(degrees, normal):
    assert normalize_degrees(degrees) == normal


def test_bad_rotation_is_refused_before_the_image_is_read():
    with pytest.raises(InvalidArgument, match="got 45"):
        rotate(b"", 45)


# --- raw pixels (legacy ABImageService) ------------------------------------------------


@pytest.mark.parametrize("degrees", [0, *ANGLES, 450])
@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_rotate_pixels_is_exact(mode, channels, degrees):
    source = photo(37, 23, seed=5).convert(mode)
    out = rotate_pixels(source.tobytes(), 37, 23, channels, degrees)
    want = turned(source, degrees if degrees != 450 else 90)
    assert out == want.tobytes()
    assert len(out) == 37 * 23 * channels


def test_rotate_pixels_full_hd_colour():
    source = photo(1920, 1080, seed=9)
    out = rotate_pixels(source.tobytes(), 1920, 1080, 3, 270)
    assert out == source.transpose(T.ROTATE_270).tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"\x00" * 11, 4, 3, 1, 90), "11 bytes but 4x3 with 1 channel"),
        ((b"\x00" * 12, 4, 3, 3, 90), "12 bytes but 4x3 with 3 channel.*needs 36"),
        ((b"", 0, 3, 1, 90), "width and height must be positive, got 0x3"),
        ((b"", 4, -1, 1, 90), "width and height must be positive, got 4x-1"),
        ((b"\x00" * 24, 4, 3, 2, 90), "channels must be 1 .* or 3 .*, got 2"),
        ((b"\x00" * 12, 4, 3, 1, 45), "multiple of 90 degrees.*got 45"),
    ],
)
def test_rotate_pixels_validation(args, message):
    with pytest.raises(InvalidArgument, match=message):
        rotate_pixels(*args)


@pytest.mark.parametrize("library", ["loaded", "missing"])
@pytest.mark.parametrize("degrees", [0, 90, 180])
def test_mpo_primary_image_is_rotated_into_a_plain_jpeg(monkeypatch, library, degrees):
    """Multi-picture JPEGs (stereo pairs, phones' HDR gain maps) open as MPO in Pillow."""
    if library == "missing":
        monkeypatch.setattr(jpeg_transform, "_library", lambda: None)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    first, second = photo(64, 48, seed=1), photo(64, 48, seed=2)
    data = encoded(first, "MPO", save_all=True, append_images=[second], exif=exif.tobytes(), quality=90)
    got = rotate(data, degrees)
    out = decode(got.data)
    assert got.format == out.format == "JPEG"
    assert getattr(out, "n_frames", 1) == 1 and b"MPF\x00" not in got.data
    assert out.getexif()[ORIENTATION] == 1
    want = turned(upright(data), degrees)
    assert psnr(out, want) >= (50 if got.method == "lossless" else 35)
    assert got.method == ("lossless" if lossless_jpeg_available() else "reencoded")


def test_animated_gif_with_transparency_shows_the_same_frames():
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3)
    frames = []
    for i in range(3):
        index = np.zeros((30, 40), np.uint8)
        index[5 + 5 * i : 15 + 5 * i, 5 + 8 * i : 20 + 8 * i] = 1 + i  # a moving box on transparency
        frame = Image.fromarray(index, "P")
        frame.putpalette(palette)
        frames.append(frame)
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0, disposal=2,
                   duration=[50, 60, 70], loop=0)
    got = rotate(data, 90)
    # assert_frames_equal compares the composited RGBA frames, transparency included
    assert_frames_equal(got.data, data, 90)
