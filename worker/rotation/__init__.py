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
hand (``formats._bmp_declaring_alpha``): Pillow writes RGBA BMPs under a header that
declares no alpha and has no option for another.

A conversion to another format (``convert.convert_to``) keeps what the target can
hold and says in ``Rotated.note`` what it could not (alpha flattened onto
white, the first of several frames, 16 to 8 bits, CMYK to RGB, metadata).

The package's modules follow those paths: ``orientation``, ``jpeg``, ``formats`` (everything else),
``convert``, ``metadata`` and ``webp``. docs/rotation.md says which path each case takes and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from PIL import Image

from worker import jpeg_transform
from worker.decode import (
    DEFAULT_CPU_SECONDS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    FORMATS,
    Budget,
    open_image,
    raw_pixels,
)
from worker.errors import InvalidArgument, Reason
from worker.rotation.convert import convert_to
from worker.rotation.formats import reencode
from worker.rotation.jpeg import jpeg_lossless, jpeg_reencode
from worker.rotation.orientation import TURN, UPRIGHT, compose, orientation_of, turn_of
from worker.rotation.rotated import DEFAULT_QUALITY, Rotated
from worker.rotation.webp import webp_quality

__all__ = ["DEFAULT_QUALITY", "Rotated", "auto_rotate", "lossless_jpeg_available", "normalize_degrees", "rotate",
           "rotate_pixels"]


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
    out = _write(data, img, orientation_of(img), turn, target, quality, max_pixels, max_frames, budget)
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
    orientation = orientation_of(img)
    if orientation != 1:
        decided, turn, degrees = "exif", 0, turn_of(UPRIGHT[orientation])
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
    op = compose(UPRIGHT[orientation], TURN[turn])
    # MPO (stereo pairs, phones' HDR gain maps) is a JPEG with more images
    # appended: its primary image is rotated and written as a plain JPEG.
    source = "JPEG" if img.format == "MPO" else img.format or ""
    if target not in ("", source):
        return convert_to(data, img, op, target, quality, max_pixels, max_frames, budget)
    # A quality asked for is honoured on a lossy output of the same format: re-encoded at it.
    requantise = bool(quality) and (source == "JPEG" or (source == "WEBP" and webp_quality(data) is not None))
    if op is None and orientation == 1 and not requantise:
        return Rotated(data, img.format or "", img.width, img.height, "copy")
    if source == "JPEG":
        done = None if requantise else jpeg_lossless(data, img, op)
        return done or jpeg_reencode(img, op, budget, quality)
    return reencode(data, img, op, quality, max_pixels, max_frames, budget)


def rotate_pixels(data: bytes, width: int, height: int, channels: int, degrees: int,
                  *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Rotate raw row-major 8-bit pixels (1 grey or 3 RGB channels) counter-clockwise, exactly.

    The result has the same layout with width and height swapped for 90/270.
    """
    import numpy as np  # not imported at the worker's start (worker/server.py)

    turn = normalize_degrees(degrees)
    pixels = raw_pixels(data, width, height, channels, max_pixels)
    # np.rot90 turns counter-clockwise as displayed; tobytes makes the one copy.
    return np.rot90(pixels, turn // 90).tobytes()
