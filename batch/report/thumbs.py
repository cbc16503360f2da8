"""Small JPEG thumbnails for the HTML galleries: pure functions over image bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageOps

SIZE = 160
QUALITY = 70
BOX_COLOUR = (255, 64, 32)


class ThumbnailError(Exception):
    """The bytes could not be made into a thumbnail (not an image, truncated, too large)."""


def thumbnail(data: bytes, size: int = SIZE, boxes: Sequence[Sequence[float]] = ()) -> bytes:
    """A JPEG at most ``size`` px on its longest side, upright per EXIF, with ``boxes`` drawn.

    ``boxes`` are (left, top, right, bottom) in pixels of the upright full-size
    image, as the worker reports faces.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            upright_size = _upright_size(img)
            # Let the JPEG decoder scale down by 1/2..1/8 while decoding: far less work for big photos.
            img.draft("RGB", (size * 2, size * 2))
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
    orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
