"""Small JPEG thumbnails for the HTML galleries: pure functions over image bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageOps

SIZE = 160
QUALITY = 70
BOX_COLOUR = (255, 64, 32)
ORIENTATION = 0x0112  # the EXIF tag


class ThumbnailError(Exception):
    """The bytes could not be made into a thumbnail (not an image, truncated, too large)."""


def thumbnail(data: bytes, size: int = SIZE, boxes: Sequence[Sequence[float]] = (), stored: bool = False) -> bytes:
    """A JPEG at most ``size`` px on its longest side, upright per EXIF, with ``boxes`` drawn; with ``stored``,
    the pixels as the file stores them, EXIF orientation not applied (the "before" of a rotation, which a
    viewer would otherwise show already turned).

    ``boxes`` are (left, top, right, bottom) in pixels of the upright full-size
    image, as the worker reports faces.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            upright_size = img.size if stored else _upright_size(img)
            # Let the JPEG decoder scale down by 1/2..1/8 while decoding: far less work for big photos.
            img.draft("RGB", (size * 2, size * 2))
            if not stored:
                img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ThumbnailError(f"cannot read image: {err}") from err
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    # Boxes are in full-size upright coordinates; the pixels are now thumbnail-sized.
    scale_x = img.width / upright_size[0]
    scale_y = img.height / upright_size[1]
    if boxes:
        draw = ImageDraw.Draw(img)
        line = max(2, img.width // 60)
        for left, top, right, bottom in boxes:
            draw.rectangle(
                (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y),
                outline=BOX_COLOUR, width=line,
            )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """Full-resolution size after EXIF orientation, from the header only (call before draft())."""
    width, height = img.size
    return (height, width) if _orientation(img) in (5, 6, 7, 8) else (width, height)


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orientation(data: bytes) -> int:
    """The EXIF orientation of an image (1 to 8; 1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _orientation(img)
    except (OSError, ValueError, Image.DecompressionBombError):
        return 1
