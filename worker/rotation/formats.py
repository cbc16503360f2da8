"""Every format but JPEG rotated by re-encoding with its own settings, frames and pages included; the
options each format is written with."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from PIL import Image, PngImagePlugin

from worker.decode import DECODE_ERRORS, Budget, bomb_refused, check_depth, count_frames, load
from worker.errors import InvalidArgument, Reason
from worker.rotation.metadata import common_metadata, reset_xmp_text
from worker.rotation.orientation import SWAPS_AXES, T, orientation_of
from worker.rotation.rotated import Rotated, save
from worker.rotation.webp import webp_quality


def reencode(data: bytes, img: Image.Image, op: T | None, quality: int, max_pixels: int, max_frames: int,
             budget: Budget) -> Rotated:
    fmt = img.format or ""
    count = count_frames(img, max_frames)
    frames, durations = decoded_frames(data, img, op, count, count, max_pixels, budget)
    kw = common_metadata(img, op, frames[0].size)
    kw.update(_FORMAT_OPTIONS[fmt](data, img, op, frames))
    if quality and "quality" in kw:  # a lossy WebP at the quality asked for instead of its own
        kw["quality"] = quality
    return save_frames(frames, durations, img.info.get("loop"), fmt, kw, budget)


def decoded_frames(data: bytes, img: Image.Image, op: T | None, count: int, keep: int, max_pixels: int,
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


def save_frames(frames: list[Image.Image], durations: list[int], loop: int | None, fmt: str,
                kw: dict[str, Any], budget: Budget) -> Rotated:
    if len(frames) > 1:
        kw.update(save_all=True, append_images=frames[1:])
        if fmt in ANIMATED:
            kw["duration"] = durations
            if loop is not None:
                kw["loop"] = loop
    out = save(frames[0], fmt, kw, budget)
    if fmt == "BMP" and frames[0].mode == "RGBA":
        return dataclasses.replace(out, data=_bmp_declaring_alpha(out.data))
    return out


def _png_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    text = getattr(img, "text", {})
    if not text:
        return {}
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if key == "XML:com.adobe.xmp" and orientation_of(img) != 1:
            value = reset_xmp_text(value)
        if isinstance(value, PngImagePlugin.iTXt):
            info.add_itxt(key, value, value.lang or "", value.tkey or "")
        else:
            info.add_text(key, value)
    return {"pnginfo": info}


def _webp_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "background" in img.info and len(frames) > 1:
        kw["background"] = img.info["background"]
    quality = webp_quality(data)
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
            if op in SWAPS_AXES:
                x_res, y_res = y_res, x_res
            kept.update({282: x_res, 283: y_res, 296: tags.get(296, 2)})
            kw.pop("dpi", None)
        kw["tiffinfo"] = kept
    return kw


# Text tags worth carrying over; structural ones are Pillow's to write.
_TIFF_DESCRIPTIVE_TAGS = (269, 270, 271, 272, 285, 305, 306, 315, 316, 33432)


def gif_options(data: bytes, img: Image.Image, op: T | None, frames: list[Image.Image]) -> dict[str, Any]:
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
    "GIF": gif_options,
    "BMP": _no_options,
}

ANIMATED = ("GIF", "PNG", "WEBP")  # formats whose frames are an animation (durations, loop)

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
