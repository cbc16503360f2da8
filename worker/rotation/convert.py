"""Conversion to another format: what the target can hold is kept, what it cannot is said in a note."""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from typing import Any

from PIL import Image, ImageCms, PngImagePlugin

from worker.decode import Budget, count_frames
from worker.errors import InvalidArgument, Reason
from worker.rotation.formats import ANIMATED, decoded_frames, gif_options, save_frames
from worker.rotation.metadata import common_metadata
from worker.rotation.orientation import ORIENTATION_TAG, UPRIGHT, T
from worker.rotation.rotated import DEFAULT_QUALITY, Rotated

log = logging.getLogger(__name__)


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


def convert_to(data: bytes, img: Image.Image, op: T | None, target: str, quality: int, max_pixels: int,
               max_frames: int, budget: Budget) -> Rotated:
    """``img`` turned by ``op`` and written as ``target``, another format than its own: what it can hold is
    kept, what it cannot is said in ``note``."""
    source = img.format or ""
    notes: list[str] = []
    count = keep = count_frames(img, max_frames)
    if count > 1 and not (source in ANIMATED and target in ANIMATED):
        if target == "TIFF":
            notes.append(f"{count} frames kept as TIFF pages, without their durations and loop")
        else:
            keep = 1  # only the frame kept is decoded
            holds = "has no pages" if source == "TIFF" else "holds one picture"
            notes.append(f"first of {count} {'pages' if source == 'TIFF' else 'frames'} kept: {target} {holds}")
    frames, durations = decoded_frames(data, img, op, count, keep, max_pixels, budget)
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
        kw.update(gif_options(data, img, op, frames))
    loop = img.info.get("loop")
    if loop is None and source == "GIF":
        loop = 1  # a GIF without a loop count plays once; WebP and APNG would loop forever
    out = save_frames(frames, durations, loop, target, kw, budget)
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
        import numpy as np  # numpy only where pixels are reworked: not imported at the worker's start
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
    import numpy as np  # see _fit_mode

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
    import numpy as np  # see _fit_mode

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
    kw = common_metadata(img, op, frame.size)
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
            value = tags.get(ORIENTATION_TAG, 1)
            if not isinstance(value, int) or value not in UPRIGHT:
                # Not applied (see orientation_of), and libtiff refuses to write what is not 1..8.
                del tags[ORIENTATION_TAG]
                notes.append("malformed EXIF orientation dropped: TIFF cannot hold it (nor was it applied)")
        if "xmp" in kw:
            tags[700] = kw.pop("xmp")
        kw["exif"] = tags
    elif target == "PNG" and "xmp" in kw:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", kw.pop("xmp").decode("utf-8", "replace"))
        kw["pnginfo"] = info
    return kw
