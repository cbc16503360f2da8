"""Opening untrusted image bytes with Pillow: one place for limits and clean errors.

Both operations start here, so a truncated file, a decompression bomb or a
page of HTML named ``.png`` get the same specific message whichever RPC saw it.

Besides pixels, the work a file may cause is bounded: JPEG scans (counted
here before Pillow decodes), frames or pages (``count_frames``), and a
per-call ``Budget`` of CPU time checked each time a decoder or encoder reads
or writes a block. The scan count is a hand-written marker walk because
neither Pillow nor its libjpeg exposes one before decoding (libjpeg only warns
about bogus progressions and goes on; libjpeg-turbo's TJFLAG_LIMITSCANS exists
for its own transform and decompress functions, not for Pillow's decoder).
"""

from __future__ import annotations

import io
import re
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from worker.errors import InvalidArgument, Reason

if TYPE_CHECKING:
    import numpy as np

# 100 MP photos must pass; Pillow's own default (~89 MP) would refuse them.
DEFAULT_MAX_PIXELS = 150_000_000

# libjpeg-turbo's own bound for progressive scans (TJFLAG_LIMITSCANS): a few
# tens of thousands of tiny scans cost a minute of CPU, real files have ~10.
MAX_JPEG_SCANS = 500
# Frames (GIF, WebP) or pages (TIFF) one call decodes; each costs a decode and
# an encode however small it is (20,000 1x1 TIFF pages: minutes).
DEFAULT_MAX_FRAMES = 1000
# Thread CPU time one call may use: a backstop over the counts above, far above
# what a --max-pixels image in any supported format costs.
DEFAULT_CPU_SECONDS = 60.0

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


class Budget:
    """The CPU time one call may spend, and the caller's own ``check`` (deadline, cancellation).

    ``check()`` raises when the call must stop: the caller's callback raises
    its own error, an exhausted budget raises InvalidArgument (WORK_LIMIT).
    The clock is this thread's CPU time, so other calls' work does not count.
    Pillow reads a file's header in small blocks (37 for a 64x64 JPEG), so
    after the first check the next are made only every ``CHECK_EVERY`` seconds
    of wall time: the thread's CPU clock is a system call, unlike the monotonic
    one, and a tiny image spent more on its checks than on its decode.
    """

    CHECK_EVERY = 0.002  # a call runs at most this much longer than its limits allow

    def __init__(self, cpu_seconds: float | None = DEFAULT_CPU_SECONDS,
                 check: Callable[[], None] | None = None) -> None:
        self.cpu_seconds = cpu_seconds
        self._stop = None if cpu_seconds is None else time.thread_time() + cpu_seconds
        self._check = check
        self._next = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.CHECK_EVERY
        if self._check is not None:
            self._check()
        if self._stop is not None and time.thread_time() > self._stop:
            raise InvalidArgument(
                f"decoding and encoding this image took over {self.cpu_seconds:g} s of CPU time, the worker's "
                "budget for one call; refused as a possible decoder work bomb",
                Reason.WORK_LIMIT,
            )


class BudgetedIO(io.BytesIO):
    """A BytesIO that checks a Budget at each block Pillow's decoders read and its encoders write."""

    def __init__(self, data: bytes = b"", budget: Budget | None = None) -> None:
        super().__init__(data)
        self.budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        if self.budget is not None:
            self.budget.check()
        return super().read(size)

    def write(self, data, /) -> int:  # noqa: ANN001 - any bytes-like, as io.BytesIO
        if self.budget is not None:
            self.budget.check()
        return super().write(data)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, budget: Budget | None = None) -> Image.Image:
    """Identify ``data`` and check its declared size (and a JPEG's scan count); pixels are not decoded yet.

    Raises InvalidArgument for empty, unrecognised, unsupported or oversized
    images, naming what was wrong. With ``budget``, decoding the image later
    checks it at every block read.
    """
    if not data:
        raise InvalidArgument("image is empty (0 bytes)", Reason.EMPTY_IMAGE)
    try:
        img = Image.open(BudgetedIO(data, budget), formats=FORMATS)
    except UnidentifiedImageError:
        unsupported = _unsupported_tiff_samples(data) if _guess(data) == "TIFF" else None
        if unsupported is not None:
            raise InvalidArgument(
                f"unsupported sample format: TIFF with {unsupported}, which the worker cannot decode",
                Reason.UNSUPPORTED_FORMAT,
            ) from None
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
    if img.format in ("JPEG", "MPO"):
        check_jpeg_scans(data)
    return img


# A marker: 0xFF then anything but stuffing (0x00), a restart (RST0-7) or a fill byte.
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def check_jpeg_scans(data: bytes, limit: int = MAX_JPEG_SCANS) -> None:
    """Refuse a JPEG whose first image has over ``limit`` scans (SOS markers), before any decoding.

    Segments are skipped by their lengths, so a thumbnail inside EXIF is not
    counted; entropy-coded data is skipped to the next real marker.
    """
    pos, scans = 2, 0
    while (found := _JPEG_MARKER.search(data, pos)) is not None:
        at, marker = found.start(), data[found.start() + 1]
        if marker == 0xD9:  # end of the (primary) image
            return
        if at + 4 > len(data):
            return  # truncated: the decoder says so
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:
            scans += 1
            if scans > limit:
                raise InvalidArgument(
                    f"progressive JPEG with over {limit} scans (a real one has about 10; each scan is a pass "
                    "over the whole image); refused as a possible decoder work bomb",
                    Reason.WORK_LIMIT,
                )
        pos = end


def count_frames(img: Image.Image, max_frames: int = DEFAULT_MAX_FRAMES) -> int:
    """The number of frames or pages of ``img``, refusing more than ``max_frames`` without counting them all."""
    fmt = img.format
    try:
        if fmt == "TIFF":
            # Pillow's n_frames walks every page directory (quadratic in pages):
            # step through them up to the limit only, reading directories, not pixels.
            # (One seek far ahead would do, but then Pillow miscounts n_frames.)
            count = 1
            while count <= max_frames:
                try:
                    img.seek(count)
                except EOFError:
                    break
                count += 1
            img.seek(0)
        else:
            count = getattr(img, "n_frames", 1)  # GIF: parsed, not decoded; WebP: from libwebp's demuxer
    except Image.DecompressionBombError as e:  # GIF frames are checked as they are counted
        raise bomb_refused(e) from None
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt {fmt} image: cannot count its frames: {e}") from None
    if count > max_frames:
        counted = f"over {max_frames:,}" if fmt == "TIFF" else f"{count:,}"  # TIFF pages are counted to the limit
        raise InvalidArgument(
            f"{fmt} image with {counted} frames/pages, over the worker's limit of {max_frames:,} for one call "
            "(each is decoded and encoded); refused as a possible decoder work bomb",
            Reason.WORK_LIMIT,
        )
    return count


# What each Pillow mode holds per sample: (bits, TIFF SampleFormat 1 uint / 2 int / 3 float).
_MODE_SAMPLES = {
    "1": (1, 1), "I;16": (16, 1), "I;16B": (16, 1), "I;16L": (16, 1), "I;16N": (16, 1), "I": (32, 2), "F": (32, 3),
    **{mode: (8, 1) for mode in ("L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB")},
}
_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating point"}


def check_depth(img: Image.Image, data: bytes) -> None:
    """Refuse an image (its current frame or page) that Pillow holds with fewer bits or another sample type.

    Pillow keeps at most 8 bits per channel in colour modes, so 16-bit RGB(A)
    PNGs and TIFFs load as 8-bit, 32-bit unsigned grey loads as signed and
    16-bit signed grey as 32-bit: none could be written back as sent. Samples
    of under 8 bits (1/2/4-bit grey or palette) widen to 8 exactly and pass.
    """
    declared = _declared_samples(img, data)
    held = _MODE_SAMPLES.get(img.mode)
    if declared is None or held is None:
        return
    bits, kind = declared
    if kind == held[1] and (bits == held[0] or bits < held[0] <= 8):
        return
    raise InvalidArgument(
        f"{img.format} image with {bits}-bit {_SAMPLE_FORMATS.get(kind, f'type {kind}')} samples: the worker "
        f"holds it only as {held[0]}-bit {_SAMPLE_FORMATS[held[1]]} ({img.mode}), not as sent, so it is "
        "refused rather than rotated with less than was sent",
        Reason.UNSUPPORTED_FORMAT,
    )


def _declared_samples(img: Image.Image, data: bytes) -> tuple[int, int] | None:
    """(bits per sample, sample format) as the file declares them, for the formats that can exceed 8 bits."""
    if img.format == "PNG":
        return data[24], 1  # IHDR's bit depth: IHDR is the first chunk (Pillow checks)
    if img.format == "TIFF":
        return max(img.tag_v2.get(258, (1,))), max(img.tag_v2.get(339, (1,)))
    return None


def _unsupported_tiff_samples(data: bytes) -> str | None:
    """Why Pillow has no mode for this TIFF's first page (float64, 2 x 16-bit...), or None if that is not why.

    The first directory is read with Pillow's own parser and its sample layout
    looked up in Pillow's own table (OPEN_INFO), ignoring byte and fill order.
    """
    try:
        fp = io.BytesIO(data)
        ifd = TiffImagePlugin.ImageFileDirectory_v2(fp.read(16 if data[2:4] in (b"+\x00", b"\x00+") else 8))
        fp.seek(ifd.next)
        ifd.load(fp)
    except DECODE_ERRORS:
        return None
    bits, photometric = ifd.get(258), ifd.get(262)
    if bits is None or photometric is None:
        return None
    formats = ifd.get(339, (1,))
    spp = ifd.get(277, 1)
    if len(bits) == 1 and spp > 1:
        bits = bits * spp
    if len(formats) > 1 and min(formats) == max(formats):
        formats = formats[:1]
    if any(key[1:3] == (photometric, formats) and key[4] == bits for key in TiffImagePlugin.OPEN_INFO):
        return None
    kinds = ", ".join(sorted({_SAMPLE_FORMATS.get(f, f"sample format {f}") for f in formats}))
    return f"{spp} sample(s) per pixel of {'/'.join(map(str, bits))} bits ({kinds}), photometric {photometric}"


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
    import numpy as np  # only the legacy ABImage's raw pixels need it: not imported at the worker's start

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
