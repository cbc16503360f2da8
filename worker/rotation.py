"""Rotating encoded images at full resolution: pure functions over bytes.

``rotate`` turns what a viewer sees (EXIF orientation applied first) by a
multiple of 90 degrees counter-clockwise and writes the same format back (or
the ``format`` asked for), with the orientation reset to 1. ``auto_rotate``
makes an image upright: its EXIF orientation, else its faces decide the turn.
Three paths, reported in ``Rotated.method``:

- ``copy``: nothing to do (0 degrees, no EXIF orientation): the input bytes.
- ``lossless``: JPEG whose moved edges are whole MCUs: the DCT coefficients
  are permuted by libjpeg-turbo (``worker.jpeg_transform``), no generation loss.
- ``reencoded``: everything else, decoded with Pillow and written back with
  the input's own settings (JPEG: its quantisation tables and subsampling).

Images Pillow would hold with fewer bits than sent are refused, never
rotated into less (``decode.check_depth``). RGBA BMP headers are rewritten by
hand (``_bmp_declaring_alpha``): Pillow writes RGBA BMPs under a header that
declares no alpha and has no option for another.

A conversion to another format (``_convert``) keeps what the target can
hold and says in ``Rotated.note`` what it could not (alpha flattened onto
white, the first of several frames, 16 to 8 bits, CMYK to RGB, metadata).

docs/rotation.md says which path each case takes and why.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageCms, JpegImagePlugin, PngImagePlugin

from worker import jpeg_transform
from worker.decode import (
    DECODE_ERRORS,
    DEFAULT_CPU_SECONDS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    FORMATS,
    Budget,
    BudgetedIO,
    bomb_refused,
    check_depth,
    count_frames,
    load,
    open_image,
    raw_pixels,
)
from worker.errors import InvalidArgument, Reason

log = logging.getLogger(__name__)

T = Image.Transpose
_ORIENTATION_TAG = 0x0112
_EXIF_IFD_TAG = 0x8769
_PIXEL_X_TAG, _PIXEL_Y_TAG = 0xA002, 0xA003
_X_RESOLUTION_TAG, _Y_RESOLUTION_TAG = 0x011A, 0x011B

# Pillow transposes that make stored pixels upright, per EXIF orientation
# (the same table as PIL.ImageOps.exif_transpose). None is "leave as is".
_UPRIGHT: dict[int, T | None] = {
    1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE, 6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90,
}
# Our degrees are counter-clockwise, as are Pillow's ROTATE_*.
_TURN: dict[int, T | None] = {0: None, 90: T.ROTATE_90, 180: T.ROTATE_180, 270: T.ROTATE_270}
# The same operation in TurboJPEG's terms; its ROT90/ROT270 are clockwise.
_TJ_OP = {
    T.FLIP_LEFT_RIGHT: jpeg_transform.Op.HFLIP,
    T.FLIP_TOP_BOTTOM: jpeg_transform.Op.VFLIP,
    T.TRANSPOSE: jpeg_transform.Op.TRANSPOSE,
    T.TRANSVERSE: jpeg_transform.Op.TRANSVERSE,
    T.ROTATE_90: jpeg_transform.Op.ROT270,
    T.ROTATE_180: jpeg_transform.Op.ROT180,
    T.ROTATE_270: jpeg_transform.Op.ROT90,
}
_SWAPS_AXES = {T.TRANSPOSE, T.TRANSVERSE, T.ROTATE_90, T.ROTATE_270}


@dataclass(frozen=True)
class Rotated:
    """A rotated image, encoded in the input's format."""

    data: bytes  # encoded file, same format as the input
    format: str  # Pillow format name: "JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"
    width: int
    height: int
    method: str  # "lossless" | "reencoded" | "copy"
    # The counter-clockwise turn applied, 0/90/180/270; after a left-right mirror for a mirrored
    # EXIF orientation (2, 4, 5, 7) applied by auto_rotate.
    degrees: int = 0
    decided_by: str = ""  # auto_rotate only: "exif", "faces" or "none"
    note: str = ""  # what a conversion lost, "; "-separated; empty when nothing was


# Quality of a conversion to a lossy format when the caller names none (proto RotateRequest.quality).
DEFAULT_QUALITY = 90


def normalize_degrees(degrees: int) -> int:
    """Map any multiple of 90 (-90, 450, ...) to 0, 90, 180 or 270; refuse anything else."""
    if isinstance(degrees, bool) or not isinstance(degrees, int):
        raise InvalidArgument(f"rotation must be a whole number of degrees, got {degrees!r}", Reason.INVALID_ROTATION)
    if degrees % 90:
        raise InvalidArgument(
            f"rotation must be a multiple of 90 degrees (..., -90, 0, 90, 180, 270, ...), got {degrees}",
            Reason.INVALID_ROTATION,
        )
    return degrees % 360


def lossless_jpeg_available() -> bool:
    """Whether JPEGs can be rotated in the DCT domain here (libturbojpeg is loadable)."""
    return jpeg_transform.available()


def rotate(data: bytes, degrees: int, *, format: str = "", quality: int = 0,
           max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int = DEFAULT_MAX_FRAMES,
           cpu_seconds: float | None = DEFAULT_CPU_SECONDS, check: Callable[[], None] | None = None) -> Rotated:
    """Rotate the encoded image ``data`` as displayed by ``degrees`` counter-clockwise.

    Never changes the pixel count; keeps format, mode, bit depth, ICC profile,
    DPI and metadata; resets EXIF orientation to 1. ``format`` (Pillow's name;
    empty: the input's own) converts to another format, keeping what it can
    hold and saying in ``note`` what it could not; ``quality`` 1..100 is the
    quality of a lossy output (0: the input's own when the format stays,
    else ``DEFAULT_QUALITY``). Raises InvalidArgument for a bad rotation,
    format or quality, for a conversion that would need a loss the worker does
    not choose (CONVERSION_REFUSED), and for empty, corrupt, truncated,
    unsupported, oversized images or images that would cost too much work
    (over 500 JPEG scans, ``max_frames`` frames/pages, ``cpu_seconds`` of this
    thread's CPU time). ``check`` is called at the same points as the CPU
    budget (every block the codecs read or write, every frame): the caller
    stops an abandoned call by raising from it (its deadline passed, its
    client went away).
    """
    turn = normalize_degrees(degrees)
    img, target, budget = _open(data, format, quality, max_pixels, cpu_seconds, check)
    out = _write(data, img, _orientation(img), turn, target, quality, max_pixels, max_frames, budget)
    return dataclasses.replace(out, degrees=turn)


def auto_rotate(data: bytes, faces: Callable[[], int | None], *, format: str = "",
                quality: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int = DEFAULT_MAX_FRAMES,
                cpu_seconds: float | None = DEFAULT_CPU_SECONDS,
                check: Callable[[], None] | None = None) -> Rotated:
    """Make the encoded image ``data`` upright; ``decided_by`` says what decided, ``degrees`` the turn.

    An EXIF orientation other than 1 is applied and reset (``exif``; lossless
    for JPEG where the edges allow, like ``jpegtran -autorotate``); a mirrored
    one (2, 4, 5, 7) also flips the image, and ``degrees`` is the turn after a
    left-right mirror. Without one, ``faces()`` is called: the
    counter-clockwise quarter turn under which the image's faces were found
    (0: upright), or None without a face; with a face the image is turned by
    it (``faces``), else written unchanged (``none``: the input's bytes unless
    converted). The face search runs within this call's CPU budget and
    ``check``. Options and errors as ``rotate``.
    """
    img, target, budget = _open(data, format, quality, max_pixels, cpu_seconds, check)
    orientation = _orientation(img)
    if orientation != 1:
        decided, turn, degrees = "exif", 0, _turn_of(_UPRIGHT[orientation])
    else:
        found = faces()
        decided, turn = ("none", 0) if found is None else ("faces", normalize_degrees(found))
        degrees = turn
    out = _write(data, img, orientation, turn, target, quality, max_pixels, max_frames, budget)
    return dataclasses.replace(out, degrees=degrees, decided_by=decided)


def _open(data: bytes, fmt: str, quality: int, max_pixels: int, cpu_seconds: float | None,
          check: Callable[[], None] | None) -> tuple[Image.Image, str, Budget]:
    """The checked options, then the opened image: (image, target format or "" to keep its own, budget)."""
    target = fmt.upper()
    if target and target not in FORMATS:
        raise InvalidArgument(f"cannot write format {fmt!r}; the worker writes {', '.join(FORMATS)}",
                              Reason.INVALID_FORMAT)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise InvalidArgument(f"quality must be 1..100 (0: the default), got {quality!r}", Reason.INVALID_QUALITY)
    budget = Budget(cpu_seconds, check)
    return open_image(data, max_pixels, budget), target, budget


def _write(data: bytes, img: Image.Image, orientation: int, turn: int, target: str, quality: int,
           max_pixels: int, max_frames: int, budget: Budget) -> Rotated:
    """``img`` with its orientation applied and turned by ``turn``, in ``target`` (""; its own format)."""
    op = _compose(_UPRIGHT[orientation], _TURN[turn])
    # MPO (stereo pairs, phones' HDR gain maps) is a JPEG with more images
    # appended: its primary image is rotated and written as a plain JPEG.
    source = "JPEG" if img.format == "MPO" else img.format or ""
    if target not in ("", source):
        return _convert(data, img, op, target, quality, max_pixels, max_frames, budget)
    # A quality asked for is honoured on a lossy output of the same format: re-encoded at it.
    requantise = bool(quality) and (source == "JPEG" or (source == "WEBP" and _webp_quality(data) is not None))
    if op is None and orientation == 1 and not requantise:
        return Rotated(data, img.format or "", img.width, img.height, "copy")
    if source == "JPEG":
        done = None if requantise else _jpeg_lossless(data, img, op)
        return done or _jpeg_reencode(img, op, budget, quality)
    return _reencode(data, img, op, quality, max_pixels, max_frames, budget)


def rotate_pixels(data: bytes, width: int, height: int, channels: int, degrees: int,
                  *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Rotate raw row-major 8-bit pixels (1 grey or 3 RGB channels) counter-clockwise, exactly.

    The result has the same layout with width and height swapped for 90/270.
    """
    turn = normalize_degrees(degrees)
    pixels = raw_pixels(data, width, height, channels, max_pixels)
    # np.rot90 turns counter-clockwise as displayed; tobytes makes the one copy.
    return np.rot90(pixels, turn // 90).tobytes()


# --- orientation -----------------------------------------------------------


def _orientation(img: Image.Image) -> int:
    if img.format != "JPEG":
        # PNG's eXIf may follow the pixels: decode first so a truncated file
        # is reported as truncated, not as bad EXIF. (JPEG's EXIF is in the header.)
        load(img)
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt EXIF data in {img.format} image: {e}") from None
    # Out-of-range values are ignored by viewers; so do we.
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _turn_of(op: T | None) -> int:
    """The counter-clockwise turn in ``op``: ``op`` is that turn, or a left-right mirror then that turn."""
    for degrees, turn in _TURN.items():
        if op in (turn, _compose(T.FLIP_LEFT_RIGHT, turn)):
            return degrees
    raise AssertionError(f"{op} is neither a turn nor a mirrored one")


@functools.cache
def _compose(first: T | None, then: T | None) -> T | None:
    """The single transpose equal to ``first`` followed by ``then`` (found on a probe image)."""
    probe = Image.frombytes("L", (3, 2), bytes(range(6)))

    def apply(im: Image.Image, op: T | None) -> Image.Image:
        return im if op is None else im.transpose(op)

    want = apply(apply(probe, first), then)
    for op in (None, *T):
        got = apply(probe, op)
        if got.size == want.size and got.tobytes() == want.tobytes():
            return op
    raise AssertionError(f"transposes are a group; {first} then {then} has no match")


# --- JPEG ------------------------------------------------------------------


def _jpeg_lossless(data: bytes, img: Image.Image, op: T | None) -> Rotated | None:
    """Rotate in the DCT domain, or None when that would trim/pad or cannot be done here."""
    width, height = _out_size(img, op)
    if op is None and img.format == "JPEG":
        # Orientation already cancels the turn: only the metadata changes.
        out = bytearray(data)
        _patch_jpeg_metadata(memoryview(out), width, height, swap=False, reset=True)
        return Rotated(bytes(out), "JPEG", width, height, "lossless")
    if not jpeg_transform.available():
        return None
    mcu = jpeg_transform.mcu_size([(h, v) for _, h, v, _ in img.layer])
    tj_op = jpeg_transform.Op.NONE if op is None else _TJ_OP[op]
    if mcu is None or not jpeg_transform.is_perfect(tj_op, img.width, img.height, mcu):
        return None
    try:
        out = jpeg_transform.transform(
            data, tj_op,
            progressive=bool(img.info.get("progressive")),
            patch=lambda view: _patch_jpeg_metadata(view, width, height, swap=op in _SWAPS_AXES,
                                                    reset=_orientation(img) != 1),
        )
    except jpeg_transform.TransformFailed as e:
        # Truncated or odd files: Pillow decides below whether they are usable
        # and gives the same error message as for any other format.
        log.debug("lossless JPEG transform refused (%s); re-encoding", e)
        return None
    return Rotated(_primary_jpeg(out, img), "JPEG", width, height, "lossless")


def _primary_jpeg(data: bytes, img: Image.Image) -> bytes:
    """For MPO input: only the primary image, without the MPF index that would point past its end."""
    if img.format != "MPO":
        return data
    parts, pos = [data[:2]], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if not (data[pos + 1] == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\x00"):
            parts.append(data[pos:end])
        pos = end
    parts.append(data[pos:])  # the transform wrote only the primary image
    return b"".join(parts)


# APP markers Pillow writes itself from the arguments we give it.
_PILLOW_WRITES = {"APP0": (b"JFIF",), "APP1": (b"Exif", b"http://ns.adobe.com/xap/"),
                  "APP2": (b"ICC_PROFILE", b"MPF"), "APP14": (b"Adobe",)}


def _jpeg_reencode(img: Image.Image, op: T | None, budget: Budget, quality: int = 0) -> Rotated:
    load(img)
    out = img if op is None else img.transpose(op)
    extra = b""
    for name, payload in getattr(img, "applist", []):
        if name.startswith("APP") and not payload.startswith(_PILLOW_WRITES.get(name, ())):
            marker = 0xFFE0 + int(name[3:])
            extra += struct.pack(">HH", marker, len(payload) + 2) + payload
    subsampling = JpegImagePlugin.get_sampling(img)
    kw: dict[str, Any] = {
        # The input's own tables: same quality, no guessing and no inflating it (unless one is asked for).
        **({"quality": quality} if quality else {"qtables": img.quantization}),
        "subsampling": subsampling if subsampling != -1 else 0,
        "progressive": bool(img.info.get("progressive")),
        # libjpeg always optimises Huffman tables for progressive files; do likewise.
        "optimize": bool(img.info.get("progressive")),
        "keep_rgb": img.info.get("adobe_transform") == 0,
        "extra": extra,
    }
    kw.update(_common_metadata(img, op, out.size))
    return _save(out, "JPEG", kw, budget)


# --- everything else ------------------------------------------------------


def _reencode(data: bytes, img: Image.Image, op: T | None, quality: int, max_pixels: int, max_frames: int,
              budget: Budget) -> Rotated:
    fmt = img.format or ""
    count = count_frames(img, max_frames)
    frames, durations = _frames(data, img, op, count, count, max_pixels, budget)
    kw = _common_metadata(img, op, frames[0].size)
    kw.update(_FORMAT_OPTIONS[fmt](data, img, op, frames))
    if quality and "quality" in kw:  # a lossy WebP at the quality asked for instead of its own
        kw["quality"] = quality
    return _save_frames(frames, durations, img.info.get("loop"), fmt, kw, budget)


def _frames(data: bytes, img: Image.Image, op: T | None, count: int, keep: int, max_pixels: int,
            budget: Budget) -> tuple[list[Image.Image], list[int]]:
    """The first ``keep`` of ``count`` frames or pages, decoded and turned by ``op``, and their durations."""
    fmt = img.format or ""
    frames, durations = [], []
    # Every frame or page is decoded and kept, so --max-pixels bounds their sum:
    # a few KiB of GIF can declare hundreds of full-canvas frames.
    decoded = 0
    for index in range(keep):
        if count > 1:
            try:
                img.seek(index)
            except Image.DecompressionBombError as e:  # a frame over Pillow's guard
                raise bomb_refused(e) from None
            except DECODE_ERRORS as e:
                raise InvalidArgument(f"corrupt or truncated {fmt} image at frame {index}: {e}") from None
        budget.check()
        check_depth(img, data)  # per page: a TIFF's pages may differ
        decoded += img.width * img.height
        if decoded > max_pixels:
            raise InvalidArgument(
                f"{fmt} image with {count} frames/pages needs over {max_pixels:,} pixels decoded by frame "
                f"{index + 1} ({img.width}x{img.height}), over the worker's limit (worker serve --max-pixels); "
                "refused as a possible decompression bomb",
                Reason.PIXEL_LIMIT,
            )
        load(img)
        if op is not None:
            frames.append(img.transpose(op))
        else:
            frames.append(img.copy() if count > 1 else img)
        durations.append(img.info.get("duration", 0))
    if count > 1:
        img.seek(0)  # the metadata read next is the first frame's
    return frames, durations


def _save_frames(frames: list[Image.Image], durations: list[int], loop: int | None, fmt: str,
                 kw: dict[str, Any], budget: Budget) -> Rotated:
    if len(frames) > 1:
        kw.update(save_all=True, append_images=frames[1:])
        if fmt in _ANIMATED:
            kw["duration"] = durations
            if loop is not None:
                kw["loop"] = loop
    out = _save(frames[0], fmt, kw, budget)
    if fmt == "BMP" and frames[0].mode == "RGBA":
        return dataclasses.replace(out, data=_bmp_declaring_alpha(out.data))
    return out


def _png_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    text = getattr(img, "text", {})
    if not text:
        return {}
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if key == "XML:com.adobe.xmp" and _orientation(img) != 1:
            value = _reset_xmp_text(value)
        if isinstance(value, PngImagePlugin.iTXt):
            info.add_itxt(key, value, value.lang or "", value.tkey or "")
        else:
            info.add_text(key, value)
    return {"pnginfo": info}


def _webp_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "background" in img.info and len(frames) > 1:
        kw["background"] = img.info["background"]
    quality = _webp_quality(data)
    if quality is None:
        # exact: keep the colour under fully transparent pixels too.
        kw.update(lossless=True, exact=True)
    else:
        kw["quality"] = quality
    return kw


def _tiff_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    compression = img.info.get("compression", "raw")
    if compression in ("jpeg", "tiff_jpeg"):
        compression = "tiff_adobe_deflate"  # lossless rather than a second JPEG generation
    kw: dict[str, Any] = {"compression": None if compression == "raw" else compression}
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        kept = {tag: tags[tag] for tag in _TIFF_DESCRIPTIVE_TAGS if tag in tags}
        x_res, y_res = tags.get(282), tags.get(283)
        if x_res is not None and y_res is not None:
            if op in _SWAPS_AXES:
                x_res, y_res = y_res, x_res
            kept.update({282: x_res, 283: y_res, 296: tags.get(296, 2)})
            kw.pop("dpi", None)
        kw["tiffinfo"] = kept
    return kw


# Text tags worth carrying over; structural ones are Pillow's to write.
_TIFF_DESCRIPTIVE_TAGS = (269, 270, 271, 272, 285, 305, 306, 315, 316, 33432)


def _gif_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if len(frames) > 1 and any(f.mode == "RGBA" or "transparency" in f.info for f in frames):
        # Frames are full composited pictures: clear each before the next so
        # transparent pixels do not show the previous frame through.
        kw["disposal"] = 2
    return kw


def _no_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    return {}


_FORMAT_OPTIONS = {
    "PNG": _png_options,
    "WEBP": _webp_options,
    "TIFF": _tiff_options,
    "GIF": _gif_options,
    "BMP": _no_options,
}


# --- conversion to another format -----------------------------------------

_ANIMATED = ("GIF", "PNG", "WEBP")  # formats whose frames are an animation (durations, loop)
# Modes each target writes as they are (GIF: Pillow's writer maps RGB(A) to a palette itself).
_HOLDS = {
    "JPEG": {"L", "RGB", "CMYK"},
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"},
    "WEBP": {"RGB", "RGBA"},
    "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"},
    "BMP": {"1", "L", "P", "RGB", "RGBA"},
    "GIF": {"1", "L", "P", "RGB", "RGBA"},
}
# Metadata each target can carry, as save() arguments.
_METADATA = {
    "JPEG": {"icc_profile", "exif", "xmp", "dpi"},
    "PNG": {"icc_profile", "exif", "xmp", "dpi"},
    "WEBP": {"icc_profile", "exif", "xmp"},
    "TIFF": {"icc_profile", "exif", "xmp", "dpi"},
    "BMP": {"dpi"},
    "GIF": set(),
}
_METADATA_NAMES = {"exif": "EXIF", "xmp": "XMP", "icc_profile": "ICC profile"}
# The colour space an ICC profile must describe for each mode's pixels.
_SPACE = {"1": "GRAY", "L": "GRAY", "LA": "GRAY", "I;16": "GRAY", "I": "GRAY", "F": "GRAY", "CMYK": "CMYK"}


def _convert(data: bytes, img: Image.Image, op: T | None, target: str, quality: int, max_pixels: int,
             max_frames: int, budget: Budget) -> Rotated:
    """``img`` turned by ``op`` and written as ``target``, another format than its own: what it can hold is
    kept, what it cannot is said in ``note``."""
    source = img.format or ""
    notes: list[str] = []
    count = keep = count_frames(img, max_frames)
    if count > 1 and not (source in _ANIMATED and target in _ANIMATED):
        if target == "TIFF":
            notes.append(f"{count} frames kept as TIFF pages, without their durations and loop")
        else:
            keep = 1  # only the frame kept is decoded
            holds = "has no pages" if source == "TIFF" else "holds one picture"
            notes.append(f"first of {count} {'pages' if source == 'TIFF' else 'frames'} kept: {target} {holds}")
    frames, durations = _frames(data, img, op, count, keep, max_pixels, budget)
    icc = img.info.get("icc_profile")
    frames = [_fit_mode(frame, source, target, icc, notes) for frame in frames]
    # GIF frames after the first decode as RGB(A); a GIF's own frames each have a palette of their own.
    if target != "GIF" and len({frame.mode for frame in frames}) > 1:
        mode = "RGBA" if any("A" in frame.mode for frame in frames) else "RGB"
        frames = [frame.convert(mode) for frame in frames]
    kw = _target_metadata(img, op, frames[0], target, notes)
    if target in ("JPEG", "WEBP"):
        kw["quality"] = quality or DEFAULT_QUALITY
    elif target == "TIFF":
        kw["compression"] = "tiff_adobe_deflate"  # lossless and compact
    elif target == "GIF":
        kw.update(_gif_options(data, img, op, frames))
    loop = img.info.get("loop")
    if loop is None and source == "GIF":
        loop = 1  # a GIF without a loop count plays once; WebP and APNG would loop forever
    out = _save_frames(frames, durations, loop, target, kw, budget)
    return dataclasses.replace(out, note="; ".join(dict.fromkeys(notes)))


def _fit_mode(im: Image.Image, source: str, target: str, icc: bytes | None, notes: list[str]) -> Image.Image:
    """``im`` in a mode ``target`` holds, the losses on the way added to ``notes``."""
    im = _standard_mode(im, source, target)
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB") and not (
            target == "GIF" and im.mode in ("L", "P")):
        im = im.convert("RGBA")  # palette or key-colour transparency as an alpha channel
    if im.mode == "CMYK" and "CMYK" not in _HOLDS[target]:
        im = _cmyk_to_rgb(im, icc, target, notes)
    if im.mode == "I;16" and "I;16" not in _HOLDS[target]:
        notes.append(f"16-bit grey reduced to 8 bits: {target} holds 8")
        # Scaled, not clipped (Pillow's convert clips at 255).
        im = Image.fromarray(((np.asarray(im, np.uint32) + 128) // 257).astype(np.uint8))
    if im.mode in ("LA", "RGBA") and target == "JPEG":
        if im.getchannel("A").getextrema()[0] < 255:
            notes.append("alpha flattened onto white: JPEG has no transparency")
        flat = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB")
        im = flat.convert("L") if im.mode == "LA" else flat
    if target == "GIF" and im.mode in ("RGB", "RGBA", "LA") and im.convert("RGB").getcolors(256) is None:
        notes.append("colours reduced to a 256-colour palette: GIF holds 256")
    if target == "GIF" and im.mode in ("LA", "RGBA"):
        im = _gif_with_transparency(im.convert("RGBA"), notes)
    if im.mode not in _HOLDS[target]:
        im = im.convert("RGBA" if "A" in im.mode else "L" if im.mode == "1" and target == "JPEG" else "RGB")
    return im


def _standard_mode(im: Image.Image, source: str, target: str) -> Image.Image:
    """Modes few formats write (premultiplied, YCbCr, LAB, big-endian 16-bit) as plain ones; 32-bit and float
    grey refused for a target that cannot hold them, rather than clipped or scaled by a guess."""
    if im.mode in ("RGBa", "La", "PA"):
        return im.convert("RGBA")
    if im.mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        try:
            return im.convert("RGB")
        except ValueError:
            raise InvalidArgument(f"cannot convert {source} {im.mode} pixels to {target}",
                                  Reason.CONVERSION_REFUSED) from None
    if im.mode.startswith("I;16") and im.mode != "I;16":
        return Image.fromarray(np.asarray(im).astype(np.uint16))
    if im.mode in ("I", "F") and im.mode not in _HOLDS[target]:
        low, high = im.getextrema()
        if im.mode == "F" or low < 0 or high > 65535:
            kind = "floating-point" if im.mode == "F" else f"integer ({low}..{high})"
            raise InvalidArgument(
                f"{source} with 32-bit {kind} grey samples cannot be written as {target} (at most 16-bit "
                "unsigned) without choosing a scale, which the worker does not do for you; keep TIFF",
                Reason.CONVERSION_REFUSED,
            )
        return Image.fromarray(np.asarray(im).astype(np.uint16))  # every value fits: exact
    return im


def _gif_with_transparency(im: Image.Image, notes: list[str]) -> Image.Image:
    """RGBA as a palette of 255 colours and one transparent entry: alpha under 128 transparent, the rest opaque.

    Pillow's GIF writer keeps transparency only for pictures of few colours; a photo would lose it all.
    """
    alpha = np.asarray(im.getchannel("A"))
    if alpha.min() == 255:
        return im.convert("RGB")
    if ((alpha > 0) & (alpha < 255)).any():
        notes.append("partial transparency made on or off (alpha under 128 transparent): GIF has none")
    paletted = im.convert("RGB").quantize(255)
    indices = np.asarray(paletted).copy()
    indices[alpha < 128] = 255
    out = Image.frombytes("P", im.size, indices.tobytes())
    palette = paletted.getpalette() or []
    out.putpalette(palette[: 3 * 255] + [0] * (3 * 256 - min(len(palette), 3 * 255)))
    out.info["transparency"] = 255
    return out


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, target: str, notes: list[str]) -> Image.Image:
    if icc and _icc_space(icc) == "CMYK":
        try:
            rgb = ImageCms.profileToProfile(im, io.BytesIO(icc), _srgb(), outputMode="RGB")
        except ImageCms.PyCMSError as e:
            log.debug("CMYK profile unusable (%s); converting without it", e)
        else:
            notes.append(f"CMYK converted to sRGB through its ICC profile: {target} has no CMYK")
            return rgb
    notes.append(f"CMYK converted to RGB without a colour profile (approximate colours): {target} has no CMYK")
    return im.convert("RGB")


def _icc_space(icc: bytes) -> str | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError):
        return None


def _target_metadata(img: Image.Image, op: T | None, frame: Image.Image, target: str,
                     notes: list[str]) -> dict[str, Any]:
    """``img``'s metadata that ``target`` can hold for ``frame``'s pixels, as save() arguments."""
    kw = _common_metadata(img, op, frame.size)
    icc = kw.get("icc_profile")
    if icc is not None:
        space = _icc_space(icc)
        if space != _SPACE.get(frame.mode, "RGB"):
            del kw["icc_profile"]
            if space != "CMYK":  # CMYK to RGB has its own note
                notes.append(f"ICC profile dropped: it describes {space} pixels, the {target} holds {frame.mode}")
    dropped = [name for key, name in _METADATA_NAMES.items() if key in kw and key not in _METADATA[target]]
    if dropped:
        notes.append(f"{' and '.join(dropped)} dropped: {target} cannot hold {'them' if len(dropped) > 1 else 'it'}")
    kw = {key: value for key, value in kw.items() if key in _METADATA[target]}
    # Pillow writes XMP itself only to JPEG and WebP; a TIFF's EXIF and XMP are tags of its own directory.
    if target == "TIFF" and ("exif" in kw or "xmp" in kw):
        tags = Image.Exif()
        if "exif" in kw:
            tags.load(kw["exif"])
            value = tags.get(_ORIENTATION_TAG, 1)
            if not isinstance(value, int) or value not in _UPRIGHT:
                # Not applied (see _orientation), and libtiff refuses to write what is not 1..8.
                del tags[_ORIENTATION_TAG]
                notes.append("malformed EXIF orientation dropped: TIFF cannot hold it (nor was it applied)")
        if "xmp" in kw:
            tags[700] = kw.pop("xmp")
        kw["exif"] = tags
    elif target == "PNG" and "xmp" in kw:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", kw.pop("xmp").decode("utf-8", "replace"))
        kw["pnginfo"] = info
    return kw


def _common_metadata(img: Image.Image, op: T | None, size: tuple[int, int]) -> dict[str, Any]:
    """ICC profile, EXIF (orientation 1 when it was applied), XMP and DPI of ``img`` as save() arguments."""
    kw: dict[str, Any] = {}
    info = img.info
    reset = _orientation(img) != 1
    if info.get("icc_profile"):
        kw["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        exif = bytearray(info["exif"])
        _patch_exif(memoryview(exif), *size, swap=op in _SWAPS_AXES, reset=reset)
        kw["exif"] = bytes(exif)
    if info.get("xmp"):
        xmp = bytearray(info["xmp"])
        if reset:
            _patch_xmp(memoryview(xmp))
        kw["xmp"] = bytes(xmp)
    if "dpi" in info:
        dpi = info["dpi"]
        kw["dpi"] = (dpi[1], dpi[0]) if op in _SWAPS_AXES else dpi
    return kw


def _save(image: Image.Image, fmt: str, kw: dict[str, Any], budget: Budget) -> Rotated:
    buf = BudgetedIO(budget=budget)  # encoders write block by block: the budget is checked there too
    image.save(buf, fmt, **kw)
    return Rotated(buf.getvalue(), fmt, image.width, image.height, "reencoded")


# BITMAPV4HEADER (108 bytes) after the 40 of BITMAPINFOHEADER: BI_BITFIELDS
# masks for Pillow's BGRA byte order, alpha included, and colour space sRGB.
_BMP_V4_MASKS = struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + bytes(48)
_BI_BITFIELDS = 3


def _bmp_declaring_alpha(bmp: bytes) -> bytes:
    """Pillow's 32-bit RGBA BMP with a V4 header whose alpha mask declares the fourth byte as alpha.

    Pillow writes RGBA as BGRA under a 40-byte BITMAPINFOHEADER (BI_RGB), which
    readers, Pillow included, take as RGB with a padding byte: the alpha is
    lost. Pillow has no option to write a V4/V5 header, so it is rewritten
    here: same pixels, only the header grows.
    """
    info_end = 14 + 40
    header = bytearray(bmp[14:info_end])
    struct.pack_into("<I", header, 0, 108)
    struct.pack_into("<I", header, 16, _BI_BITFIELDS)
    grown = len(_BMP_V4_MASKS)
    file_header = b"BM" + struct.pack("<IHHI", len(bmp) + grown, 0, 0, struct.unpack_from("<I", bmp, 10)[0] + grown)
    return file_header + bytes(header) + _BMP_V4_MASKS + bmp[info_end:]


def _out_size(img: Image.Image, op: T | None) -> tuple[int, int]:
    return (img.height, img.width) if op in _SWAPS_AXES else (img.width, img.height)


# --- metadata patched in place (same length, so nothing else moves) --------


def _patch_jpeg_metadata(buf: memoryview, width: int, height: int, swap: bool, reset: bool) -> None:
    """Set EXIF pixel dimensions in a JPEG's EXIF segment; with ``reset`` (the orientation was applied to
    the pixels) also reset the orientation to 1 there and in XMP.

    With ``swap`` (the axes were exchanged) also swap the JFIF and EXIF
    horizontal and vertical resolutions, which libjpeg's transform leaves alone.
    """
    if bytes(buf[:2]) != b"\xff\xd8":
        return
    pos = 2
    while pos + 4 <= len(buf) and buf[pos] == 0xFF:
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            return
        end = pos + 2 + ((buf[pos + 2] << 8) | buf[pos + 3])
        segment = buf[pos + 4 : min(end, len(buf))]
        if marker == 0xE0 and swap and bytes(segment[:5]) == b"JFIF\x00" and len(segment) >= 12:
            segment[8:10], segment[10:12] = bytes(segment[10:12]), bytes(segment[8:10])
        elif marker == 0xE1:
            if bytes(segment[:6]) == b"Exif\x00\x00":
                _patch_exif(segment, width, height, swap, reset)
            elif reset and bytes(segment[:29]) == b"http://ns.adobe.com/xap/1.0/\x00":
                _patch_xmp(segment)
        pos = end


def _patch_exif(exif: memoryview, width: int, height: int, swap: bool, reset: bool) -> None:
    """In a TIFF-structured EXIF block: PixelX/YDimension -> width/height, X/YResolution exchanged when
    ``swap``, and with ``reset`` every orientation entry rewritten as SHORT 1.

    ``reset`` is true exactly when ``_orientation`` applied the tag to the pixels, so that the two go
    together whatever the tag's type, count or repetitions (Pillow reads the first value of a SHORT[2],
    a viewer may read any of them): each entry becomes one SHORT, inline, same length. Otherwise the
    orientation is left as it is. Malformed blocks are left as they are: metadata must not fail a rotation.
    """
    if bytes(exif[:6]) == b"Exif\x00\x00":
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(exif[:2]))
    if order is None:
        return
    try:
        if struct.unpack_from(order + "H", exif, 2)[0] != 42:
            return
        exif_ifd = None
        resolution = {}
        for pos, tag, kind, count in _ifd_entries(exif, order, struct.unpack_from(order + "I", exif, 4)[0]):
            if tag == _ORIENTATION_TAG:
                if reset:
                    struct.pack_into(order + "HHIHH", exif, pos, tag, _SHORT, 1, 1, 0)
            elif count != 1:
                continue
            elif tag == _EXIF_IFD_TAG and kind in (4, 13):
                exif_ifd = struct.unpack_from(order + "I", exif, pos + 8)[0]
            elif tag in (_X_RESOLUTION_TAG, _Y_RESOLUTION_TAG) and kind == 5:  # RATIONAL, by offset
                resolution[tag] = struct.unpack_from(order + "I", exif, pos + 8)[0]
        if swap and len(resolution) == 2:
            x, y = resolution[_X_RESOLUTION_TAG], resolution[_Y_RESOLUTION_TAG]
            if max(x, y) + 8 <= len(exif):
                exif[x : x + 8], exif[y : y + 8] = bytes(exif[y : y + 8]), bytes(exif[x : x + 8])
        if exif_ifd is None:
            return
        for pos, tag, kind, count in _ifd_entries(exif, order, exif_ifd):
            if tag in (_PIXEL_X_TAG, _PIXEL_Y_TAG) and count == 1:
                value = width if tag == _PIXEL_X_TAG else height
                if kind == 4:
                    struct.pack_into(order + "I", exif, pos + 8, value)
                elif kind == 3 and value < 65536:
                    struct.pack_into(order + "H", exif, pos + 8, value)
    except struct.error:
        return


_SHORT = 3  # the EXIF/TIFF type code of an unsigned 16-bit value


def _ifd_entries(exif: memoryview, order: str, offset: int):
    """(position, tag, type, count) of each entry of the IFD at ``offset``."""
    entries = struct.unpack_from(order + "H", exif, offset)[0]
    for i in range(entries):
        pos = offset + 2 + 12 * i
        if pos + 12 > len(exif):
            return
        yield pos, *struct.unpack_from(order + "HHI", exif, pos)


_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)[2-8]')


def _patch_xmp(xmp: memoryview) -> None:
    for match in _XMP_ORIENTATION.finditer(bytes(xmp)):
        xmp[match.end() - 1] = ord("1")


def _reset_xmp_text(text: str) -> str:
    return _XMP_ORIENTATION.sub(lambda m: m.group(0)[:-1] + b"1", text.encode()).decode()


# --- WebP ------------------------------------------------------------------

# The coarsest VP8 quantiser index (0..127) libwebp picks for each quality
# 0..100 (measured with Pillow's libwebp 1.6 on a flat image, where it does
# not adapt to content; on photos it stays within ~2 steps of this).
_WEBP_QUANTISER = (
    127, 115, 111, 107, 104, 102, 100, 98, 96, 94, 92, 90, 89, 87, 86, 85, 83, 82, 81, 80, 78,
    77, 76, 75, 74, 73, 72, 71, 70, 69, 68, 67, 66, 65, 64, 64, 63, 62, 61, 60, 59, 59, 58, 57,
    56, 55, 55, 54, 53, 52, 52, 51, 50, 50, 49, 48, 48, 47, 46, 46, 45, 44, 44, 43, 42, 42, 41,
    40, 40, 39, 39, 38, 37, 37, 36, 36, 34, 32, 30, 29, 27, 26, 24, 23, 21, 20, 18, 17, 15, 14,
    12, 11, 10, 8, 7, 6, 5, 3, 2, 1, 0,
)


def _webp_quality(data: bytes) -> int | None:
    """The quality a lossy WebP was encoded with, read back from its quantiser; None if lossless.

    Like JPEG's quantisation tables, this re-encodes at the input's own
    quantiser: the lowest quality whose quantiser is at least as fine.
    The key-frame header is read as plain bits, which its uniform 50 %
    probabilities allow (as libwebp's extras/quality_estimate.c does).
    """
    vp8 = _first_vp8_chunk(data)
    if vp8 is None:
        return None
    if data[vp8 + 3 : vp8 + 6] != b"\x9d\x01\x2a":  # key-frame start code
        return 80  # unreadable header: Pillow's default quality
    bits = _Bits(data, (vp8 + 10) * 8)  # after frame tag, start code, width and height
    try:
        bits.read(2)  # colour space, clamping
        segments: list[int] = []
        absolute = False
        if bits.read(1):  # segmentation enabled
            update_map = bits.read(1)
            if bits.read(1):  # segment quantisers follow
                absolute = bool(bits.read(1))
                for _ in range(4):
                    value = bits.read(7) if bits.read(1) else 0
                    segments.append(-value if value and bits.read(1) else value)
                for _ in range(4):
                    bits.skip_if(7)  # filter strengths
            if update_map:
                for _ in range(3):
                    bits.skip_if(8)
        bits.read(10)  # filter type, level, sharpness
        if bits.read(1) and bits.read(1):
            for _ in range(8):
                bits.skip_if(6)
        bits.read(2)  # partitions
        base = bits.read(7)
    except IndexError:
        return 80
    if segments:
        coarsest = max(segments) if absolute else base + max(segments)
    else:
        coarsest = base
    coarsest = max(0, min(127, coarsest))
    return next(q for q, index in enumerate(_WEBP_QUANTISER) if index <= coarsest)


def _first_vp8_chunk(data: bytes) -> int | None:
    """Offset of the payload of the first lossy ("VP8 ") chunk, looking inside animation frames.

    Read as libwebp's demuxer reads it: a frame (ANMF) holds an optional ALPH
    then its VP8/VP8L, and whatever follows is ignored; frames never nest. So
    only one level is looked into, with loops: no file can make this recurse.
    """
    for fourcc, body, end in _riff_chunks(data, 12, len(data)):
        if fourcc == b"VP8 ":
            return body
        if fourcc == b"ANMF":  # 16 bytes of frame header, then the frame's own chunks
            for inner, inner_body, _ in _riff_chunks(data, body + 16, end):
                if inner == b"VP8 ":
                    return inner_body
                if inner != b"ALPH":
                    break
    return None


def _riff_chunks(data: bytes, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, payload offset, payload end) of each RIFF chunk from ``pos`` to ``end``."""
    while pos + 8 <= end:
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        yield data[pos : pos + 4], pos + 8, min(pos + 8 + size, end)
        pos += 8 + size + (size & 1)


class _Bits:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def skip_if(self, n: int) -> None:
        if self.read(1):
            self.read(n)
