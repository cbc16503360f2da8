"""Metadata carried through a rotation: EXIF, XMP, ICC and DPI as save() arguments, and EXIF/XMP patched
in place (same length, so nothing else moves) where the bytes are kept."""

from __future__ import annotations

import re
import struct
from typing import Any

from PIL import Image

from worker.rotation.orientation import ORIENTATION_TAG, SWAPS_AXES, T, orientation_of

_EXIF_IFD_TAG = 0x8769
_PIXEL_X_TAG, _PIXEL_Y_TAG = 0xA002, 0xA003
_X_RESOLUTION_TAG, _Y_RESOLUTION_TAG = 0x011A, 0x011B


def common_metadata(img: Image.Image, op: T | None, size: tuple[int, int]) -> dict[str, Any]:
    """ICC profile, EXIF (orientation 1 when it was applied), XMP and DPI of ``img`` as save() arguments."""
    kw: dict[str, Any] = {}
    info = img.info
    reset = orientation_of(img) != 1
    if info.get("icc_profile"):
        kw["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        exif = bytearray(info["exif"])
        _patch_exif(memoryview(exif), *size, swap=op in SWAPS_AXES, reset=reset)
        kw["exif"] = bytes(exif)
    if info.get("xmp"):
        xmp = bytearray(info["xmp"])
        if reset:
            _patch_xmp(memoryview(xmp))
        kw["xmp"] = bytes(xmp)
    if "dpi" in info:
        dpi = info["dpi"]
        kw["dpi"] = (dpi[1], dpi[0]) if op in SWAPS_AXES else dpi
    return kw


def patch_jpeg_metadata(buf: memoryview, width: int, height: int, swap: bool, reset: bool) -> None:
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

    ``reset`` is true exactly when ``orientation_of`` applied the tag to the pixels, so that the two go
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
            if tag == ORIENTATION_TAG:
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


def reset_xmp_text(text: str) -> str:
    return _XMP_ORIENTATION.sub(lambda m: m.group(0)[:-1] + b"1", text.encode()).decode()
