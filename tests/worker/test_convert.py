"""Conversion to another format (``rotate(format=, quality=)``): every pair of formats, what each target keeps,
what a lossy one says in ``note``; pure and through a real worker.

References are Pillow's own decode of the input, turned with ``transpose``: pixels must be equal for the
lossless targets (PNG, TIFF, BMP; GIF when the picture has at most 256 colours), close for JPEG and WebP.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image, ImageCms, ImageSequence

from tests.support.images import decode, encode, mad, photo
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.errors import InvalidArgument, Reason
from worker.rotation import rotate

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
LOSSY = ("JPEG", "WEBP")
CLOSE = 4  # mean absolute difference a lossy target at quality 90 stays under on these pictures
MAKE, ORIENTATION = 0x010F, 0x0112





def few_colours(width: int = 64, height: int = 48) -> Image.Image:
    """A photo-like RGB picture with 64 colours: every format, GIF included, can hold it exactly."""
    return photo(width, height).quantize(64).convert("RGB")


# --- every pair -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", FORMATS)
@pytest.mark.parametrize("target", FORMATS)
def test_every_pair_converts_with_the_pixels_turned(source, target):
    data = encode(few_colours(), source, **({"quality": 95} if source in LOSSY else {}))
    out = rotate(data, 90, format=target)
    got = decode(out.data)
    assert (out.format, got.format, got.size, out.degrees) == (target, target, (48, 64), 90)
    reference = decode(data).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    if target in LOSSY:
        assert mad(got.convert("RGB"), reference) < CLOSE
    elif target == "GIF" and reference.getcolors(256) is None:  # a JPEG's or WebP's decode has more colours
        assert mad(got.convert("RGB"), reference) < 6
        assert out.note == "colours reduced to a 256-colour palette: GIF holds 256"
    else:
        assert got.convert("RGB").tobytes() == reference.tobytes()
    if source == target:
        assert out.note == ""
    elif target != "GIF":
        assert out.note == "", "an opaque 8-bit RGB picture loses nothing but quality in any format"


# --- what each lossy case does ----------------------------------------------------------------------------


def rgba_picture() -> Image.Image:
    img = few_colours().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    img.putalpha(Image.fromarray(alpha))
    return img


def test_alpha_is_flattened_onto_white_for_jpeg_and_said():
    img = rgba_picture()
    out = rotate(encode(img, "PNG"), 0, format="JPEG")
    assert out.note == "alpha flattened onto white: JPEG has no transparency"
    white = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("RGB")
    assert decode(out.data).mode == "RGB" and mad(decode(out.data), white) < CLOSE


def test_opaque_rgba_to_jpeg_loses_nothing_and_says_nothing():
    out = rotate(encode(few_colours().convert("RGBA"), "PNG"), 0, format="JPEG")
    assert out.note == ""


@pytest.mark.parametrize("target", ["PNG", "WEBP", "TIFF", "BMP"])
def test_alpha_is_kept_where_the_target_holds_it(target):
    img = rgba_picture()
    got = decode(rotate(encode(img, "PNG"), 180, format=target).data)
    assert got.mode == "RGBA"
    reference = img.transpose(Image.Transpose.ROTATE_180)
    if target == "WEBP":
        assert mad(got, reference) < CLOSE
    else:
        assert got.tobytes() == reference.tobytes()


def test_partial_alpha_to_gif_becomes_on_or_off_and_is_said():
    out = rotate(encode(rgba_picture(), "PNG"), 0, format="GIF")
    assert "partial transparency made on or off (alpha under 128 transparent): GIF has none" in out.note
    got = np.asarray(decode(out.data).convert("RGBA"))[..., 3]
    assert np.array_equal(got, np.where(np.asarray(rgba_picture())[..., 3] < 128, 0, 255))


def test_gif_palette_transparency_becomes_alpha_in_png_and_webp():
    img = few_colours().quantize(16)
    img.info["transparency"] = 3
    data = encode(img, "GIF")
    reference = decode(data).convert("RGBA")
    png = decode(rotate(data, 0, format="PNG").data)
    assert png.mode == "RGBA" and png.tobytes() == reference.tobytes()
    webp = decode(rotate(data, 0, format="WEBP").data)
    assert webp.mode == "RGBA" and np.array_equal(np.asarray(webp)[..., 3], np.asarray(reference)[..., 3])


def animated_gif(frames: int = 3) -> bytes:
    pictures = [few_colours().rotate(30 * i) for i in range(frames)]
    return encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=[100, 200, 300], loop=0)


@pytest.mark.parametrize("target", ["JPEG", "BMP"])
def test_an_animation_to_a_single_picture_format_keeps_its_first_frame_and_says_so(target):
    data = animated_gif()
    out = rotate(data, 90, format=target)
    assert out.note == f"first of 3 frames kept: {target} holds one picture"
    first = decode(data).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    assert mad(decode(out.data).convert("RGB"), first) < (CLOSE if target == "JPEG" else 1e-9)


@pytest.mark.parametrize("target", ["PNG", "WEBP"])
def test_an_animation_stays_one_between_animation_formats(target):
    data = animated_gif()
    out = rotate(data, 90, format=target)
    assert out.note == ""
    want = [f.convert("RGB").transpose(Image.Transpose.ROTATE_90) for f in ImageSequence.Iterator(decode(data))]
    got = decode(out.data)
    assert got.n_frames == 3 and got.info.get("loop") == 0
    for index, frame in enumerate(ImageSequence.Iterator(got)):
        frame.load()  # WebP reads a frame's duration with its pixels
        assert frame.info["duration"] == 100 * (index + 1)
        assert mad(frame.convert("RGB"), want[index]) < (CLOSE if target == "WEBP" else 1e-9)


def test_an_animation_to_tiff_keeps_every_frame_as_a_page_and_says_timing_is_lost():
    out = rotate(animated_gif(), 0, format="TIFF")
    assert out.note == "3 frames kept as TIFF pages, without their durations and loop"
    assert decode(out.data).n_frames == 3


def test_a_multipage_tiff_to_another_format_keeps_its_first_page_and_says_so():
    pages = [few_colours(), photo(64, 48, seed=1)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    out = rotate(data, 0, format="PNG")
    assert out.note == "first of 2 pages kept: PNG has no pages"
    assert decode(out.data).tobytes() == pages[0].tobytes()


def grey16() -> Image.Image:
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    return Image.fromarray(values)  # I;16


@pytest.mark.parametrize("target", ["JPEG", "WEBP", "BMP", "GIF"])
def test_16_bit_grey_to_an_8_bit_format_is_scaled_and_said(target):
    img = grey16()
    out = rotate(encode(img, "PNG"), 0, format=target)
    assert f"16-bit grey reduced to 8 bits: {target} holds 8" in out.note
    scaled = Image.fromarray((np.asarray(img, np.float64) / 257).round().astype(np.uint8))
    assert mad(decode(out.data).convert("L"), scaled) < (CLOSE if target in LOSSY else 1e-9)


def test_16_bit_grey_is_kept_where_the_target_holds_it():
    img = grey16()
    for source, target in (("PNG", "TIFF"), ("TIFF", "PNG")):
        got = decode(rotate(encode(img, source), 90, format=target).data)
        assert got.mode.startswith("I;16") and np.array_equal(np.asarray(got), np.rot90(np.asarray(img)))


def test_32_bit_grey_is_written_exactly_when_it_fits_16_bits_else_refused():
    fits = Image.fromarray(np.arange(64 * 48, dtype=np.int32).reshape(48, 64) * 13)  # I
    got = decode(rotate(encode(fits, "TIFF"), 0, format="PNG").data)
    assert np.array_equal(np.asarray(got, np.int32), np.asarray(fits))
    for img in (Image.fromarray(np.full((4, 4), 70_000, np.int32)), Image.fromarray(np.full((4, 4), 0.5, np.float32))):
        with pytest.raises(InvalidArgument) as e:
            rotate(encode(img, "TIFF"), 0, format="PNG")
        assert e.value.reason == Reason.CONVERSION_REFUSED and "keep TIFF" in str(e.value)


def cmyk_jpeg() -> bytes:
    return encode(few_colours().convert("CMYK"), "JPEG", quality=95)


@pytest.mark.parametrize("target", ["PNG", "WEBP", "BMP", "GIF"])
def test_cmyk_becomes_rgb_where_the_target_has_no_cmyk_and_says_so(target):
    data = cmyk_jpeg()
    out = rotate(data, 0, format=target)
    assert f"CMYK converted to RGB without a colour profile (approximate colours): {target} has no CMYK" in out.note
    bound = CLOSE if target in ("WEBP", "GIF") else 1e-9
    assert mad(decode(out.data).convert("RGB"), decode(data).convert("RGB")) < bound


def test_cmyk_is_kept_by_tiff():
    data = cmyk_jpeg()
    got = decode(rotate(data, 0, format="TIFF").data)
    assert got.mode == "CMYK" and got.tobytes() == decode(data).tobytes()


# --- metadata ---------------------------------------------------------------------------------------------


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def jpeg_with_metadata(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[MAKE], exif[ORIENTATION] = "TestCam", orientation
    return encode(few_colours(), "JPEG", quality=95, exif=exif.tobytes(), icc_profile=srgb_icc(),
                  xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>')


@pytest.mark.parametrize("target", ["PNG", "WEBP", "TIFF"])
def test_icc_exif_and_xmp_are_kept_with_the_orientation_reset(target):
    data = jpeg_with_metadata()
    out = rotate(data, 0, format=target)
    got = decode(out.data)
    assert out.note == ""
    assert got.info["icc_profile"] == srgb_icc()
    assert got.getexif()[MAKE] == "TestCam" and got.getexif().get(ORIENTATION, 1) == 1
    xmp = got.info["xmp"]
    assert b"<tiff:Orientation>1<" in (xmp if isinstance(xmp, bytes) else xmp.encode())
    # The orientation was applied before it was reset: 64x48 stored, 48x64 seen.
    assert got.size == (48, 64)


@pytest.mark.parametrize("target", ["BMP", "GIF"])
def test_metadata_a_target_cannot_hold_is_said_dropped(target):
    out = rotate(jpeg_with_metadata(), 0, format=target)
    assert f"EXIF and XMP and ICC profile dropped: {target} cannot hold them" in out.note


def test_a_grey_profile_is_not_attached_to_rgb_pixels():
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any non-RGB space
    data = encode(few_colours().convert("L"), "PNG", icc_profile=grey_icc)
    out = rotate(data, 0, format="WEBP")
    assert "icc_profile" not in decode(out.data).info
    assert out.note.startswith("ICC profile dropped: it describes Lab pixels, the WEBP holds RGB")


# --- quality ----------------------------------------------------------------------------------------------


def test_quality_default_and_asked_for_on_lossy_targets():
    data = encode(photo(256, 192), "PNG")
    default = rotate(data, 0, format="JPEG")
    assert default.data == rotate(data, 0, format="JPEG", quality=90).data
    assert len(rotate(data, 0, format="JPEG", quality=40).data) < len(default.data)
    assert len(rotate(data, 0, format="WEBP", quality=40).data) < len(rotate(data, 0, format="WEBP").data)


def test_same_format_keeps_its_own_quality_unless_one_is_asked_for():
    data = encode(photo(256, 192), "JPEG", quality=95)
    kept = rotate(data, 90)
    assert kept.method == "lossless" and kept == rotate(data, 90, format="JPEG")
    asked = rotate(data, 90, quality=40)
    assert asked.method == "reencoded" and len(asked.data) < len(kept.data) / 2
    assert rotate(data, 0, quality=40).method == "reencoded"  # asked for a quality: not a copy
    assert rotate(data, 0).method == "copy"


@pytest.mark.parametrize("kw, reason", [
    ({"format": "JPEG2000"}, Reason.INVALID_FORMAT),
    ({"quality": 101}, Reason.INVALID_QUALITY),
    ({"quality": -1}, Reason.INVALID_QUALITY),
])
def test_bad_options_are_refused_with_their_reason(kw, reason):
    with pytest.raises(InvalidArgument) as e:
        rotate(encode(few_colours(), "PNG"), 0, **kw)
    assert e.value.reason == reason


def test_degrees_is_the_normalised_turn():
    data = encode(few_colours(), "PNG")
    assert [rotate(data, d).degrees for d in (0, -90, 450, 180)] == [0, 270, 90, 180]


# --- through the worker -----------------------------------------------------------------------------------


def call(worker, **fields) -> v1.RotateResponse:
    with grpc.insecure_channel(worker.address) as ch:
        return v1_grpc.ImageWorkerStub(ch).Rotate(v1.RotateRequest(**fields), timeout=60)


def test_conversions_through_the_worker(live):
    reply = call(live, image=encode(rgba_picture(), "PNG"), degrees=-90, format="JPEG", quality=80)
    assert (reply.format, reply.degrees, reply.width, reply.height) == ("JPEG", 270, 48, 64)
    assert reply.note == "alpha flattened onto white: JPEG has no transparency" and reply.decided_by == ""
    assert decode(reply.image).format == "JPEG"
    reply = call(live, image=animated_gif(), degrees=90, format="WEBP")
    assert reply.format == "WEBP" and decode(reply.image).n_frames == 3 and reply.note == ""


@pytest.mark.parametrize("fields, reason", [
    ({"format": "JPEG2000"}, "INVALID_FORMAT"),
    ({"quality": 500}, "INVALID_QUALITY"),
])
def test_bad_options_through_the_worker_carry_their_reason(live, fields, reason):
    with pytest.raises(grpc.RpcError) as e:
        call(live, image=encode(few_colours(), "PNG"), degrees=90, **fields)
    info = error_details_pb2.ErrorInfo()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [info.reason for d in rpc_status.from_call(e.value).details if d.Unpack(info)] == [reason]
