"""Opening untrusted image bytes with Pillow: one place for limits and clean errors.

Both operations start here, so a truncated file, a decompression bomb or a
page of HTML named ``.png`` get the same specific message whichever RPC saw it.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.errors import InvalidArgument, Reason

# 100 MP photos must pass; Pillow's own default (~89 MP) would refuse them.
DEFAULT_MAX_PIXELS = 150_000_000

# Only formats we can also write back; anything else is refused up front so
# Pillow never runs a parser we do not need on untrusted input.
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")

# What Pillow's parsers raise on malformed files (a TIFF without its size tag
# raises TypeError, a broken IFD KeyError...): all mean "corrupt image".
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError, IndexError, struct.error)


def use_own_pixel_limit() -> None:
    """Leave bomb checks in this process to ``check_pixels``, with each call's ``max_pixels``.

    Pillow's guard is one process-wide setting (``Image.MAX_IMAGE_PIXELS``), read
    on every open, seek and load: there is no per-open limit. It would refuse
    images over ~179 MP before ``check_pixels`` runs, quoting its limit instead
    of --max-pixels, so the worker's server processes (which open untrusted
    images only through this module) turn it off; any other process keeps it.
    """
    Image.MAX_IMAGE_PIXELS = None


def bomb_refused(e: Image.DecompressionBombError) -> InvalidArgument:
    """Pillow's own guard refused the image first (a process that kept it on): the same kind as ours."""
    return InvalidArgument(f"refused as a possible decompression bomb: {e}", Reason.PIXEL_LIMIT)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Identify ``data`` and check its declared size; pixels are not decoded yet.

    Raises InvalidArgument for empty, unrecognised, unsupported or oversized
    images, naming what was wrong.
    """
    if not data:
        raise InvalidArgument("image is empty (0 bytes)", Reason.EMPTY_IMAGE)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        if _guess(data) != "unrecognised":  # the right signature, but its parser refused the rest
            raise InvalidArgument(f"corrupt {_guess(data)} image: its header could not be read") from None
        raise InvalidArgument(
            f"not a supported image ({len(data)} bytes starting {data[:8]!r}); "
            f"supported formats: {', '.join(FORMATS)}",
            Reason.UNSUPPORTED_FORMAT,
        ) from None
    except Image.DecompressionBombError as e:
        raise bomb_refused(e) from None
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt {_guess(data)} image: {e}") from None
    check_pixels(img.width, img.height, max_pixels)
    return img


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose declared size is over ``max_pixels`` (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"image declares an empty size {width}x{height}", Reason.EMPTY_IMAGE)
    if width * height > max_pixels:
        raise InvalidArgument(
            f"image declares {width}x{height} = {width * height:,} pixels, over the worker's "
            f"limit of {max_pixels:,} (worker serve --max-pixels); refused as a possible decompression bomb",
            Reason.PIXEL_LIMIT,
        )


def raw_pixels(data: bytes, width: int, height: int, channels: int,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """View raw row-major 8-bit pixels (the legacy ABImage) as an HxW (grey) or HxWx3 (RGB) array.

    Raises InvalidArgument for a channel count other than 1 or 3, a size that
    is not positive or is over ``max_pixels``, or data of the wrong length.
    """
    if channels not in (1, 3):
        raise InvalidArgument(f"channels must be 1 (grey) or 3 (RGB), got {channels}", Reason.INVALID_PIXELS)
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"width and height must be positive, got {width}x{height}", Reason.INVALID_PIXELS)
    check_pixels(width, height, max_pixels)
    expected = width * height * channels
    if len(data) != expected:
        raise InvalidArgument(
            f"pixel data is {len(data):,} bytes but {width}x{height} with {channels} channel(s) "
            f"needs {expected:,} bytes (width*height*{channels} = {expected:,})",
            Reason.INVALID_PIXELS,
        )
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load(img: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image, turning decoder failures into InvalidArgument."""
    try:
        img.load()
    except Image.DecompressionBombError as e:  # a TIFF tile over Pillow's guard
        raise bomb_refused(e) from None
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt or truncated {img.format} image: {e}") from None
    return img


def upright(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` and apply its EXIF orientation: the picture a viewer sees."""
    img = load(open_image(data, max_pixels))
    try:
        return ImageOps.exif_transpose(img)
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt EXIF data in {img.format} image: {e}") from None


def _guess(data: bytes) -> str:
    signatures = {
        b"\xff\xd8": "JPEG",
        b"\x89PNG": "PNG",
        b"GIF8": "GIF",
        b"BM": "BMP",
        b"RIFF": "WEBP",
        b"II*\x00": "TIFF",
        b"MM\x00*": "TIFF",
    }
    for sig, name in signatures.items():
        if data.startswith(sig):
            return name
    return "unrecognised"
