"""A rotation's result, and Pillow's encoder writing one within the call's budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from worker.decode import Budget, BudgetedIO


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


def save(image: Image.Image, fmt: str, kw: dict[str, Any], budget: Budget) -> Rotated:
    buf = BudgetedIO(budget=budget)  # encoders write block by block: the budget is checked there too
    image.save(buf, fmt, **kw)
    return Rotated(buf.getvalue(), fmt, image.width, image.height, "reencoded")
