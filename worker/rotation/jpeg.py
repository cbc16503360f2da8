"""JPEG: rotated in the DCT domain by libjpeg-turbo where the edges allow, else re-encoded with the input's
own quantisation tables and subsampling."""

from __future__ import annotations

import logging
import struct
from typing import Any

from PIL import Image, JpegImagePlugin

from worker import jpeg_transform
from worker.decode import Budget, load
from worker.rotation.metadata import common_metadata, patch_jpeg_metadata
from worker.rotation.orientation import SWAPS_AXES, T, orientation_of, out_size
from worker.rotation.rotated import Rotated, save

log = logging.getLogger(__name__)


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


def jpeg_lossless(data: bytes, img: Image.Image, op: T | None) -> Rotated | None:
    """Rotate in the DCT domain, or None when that would trim/pad or cannot be done here."""
    width, height = out_size(img, op)
    if op is None and img.format == "JPEG":
        # Orientation already cancels the turn: only the metadata changes.
        out = bytearray(data)
        patch_jpeg_metadata(memoryview(out), width, height, swap=False, reset=True)
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
            patch=lambda view: patch_jpeg_metadata(view, width, height, swap=op in SWAPS_AXES,
                                                   reset=orientation_of(img) != 1),
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


def jpeg_reencode(img: Image.Image, op: T | None, budget: Budget, quality: int = 0) -> Rotated:
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
    kw.update(common_metadata(img, op, out.size))
    return save(out, "JPEG", kw, budget)
