"""EXIF orientation and quarter turns as Pillow transposes: reading an image's orientation, composing
transposes, the turn in one and the size after it."""

from __future__ import annotations

import functools

from PIL import Image

from worker.decode import DECODE_ERRORS, load
from worker.errors import InvalidArgument

T = Image.Transpose
ORIENTATION_TAG = 0x0112

# Pillow transposes that make stored pixels upright, per EXIF orientation
# (the same table as PIL.ImageOps.exif_transpose). None is "leave as is".
UPRIGHT: dict[int, T | None] = {
    1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE, 6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90,
}
# Our degrees are counter-clockwise, as are Pillow's ROTATE_*.
TURN: dict[int, T | None] = {0: None, 90: T.ROTATE_90, 180: T.ROTATE_180, 270: T.ROTATE_270}

SWAPS_AXES = {T.TRANSPOSE, T.TRANSVERSE, T.ROTATE_90, T.ROTATE_270}


def orientation_of(img: Image.Image) -> int:
    if img.format != "JPEG":
        # PNG's eXIf may follow the pixels: decode first so a truncated file
        # is reported as truncated, not as bad EXIF. (JPEG's EXIF is in the header.)
        load(img)
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except DECODE_ERRORS as e:
        raise InvalidArgument(f"corrupt EXIF data in {img.format} image: {e}") from None
    # Out-of-range values are ignored by viewers; so do we.
    return value if isinstance(value, int) and value in UPRIGHT else 1


def turn_of(op: T | None) -> int:
    """The counter-clockwise turn in ``op``: ``op`` is that turn, or a left-right mirror then that turn."""
    for degrees, turn in TURN.items():
        if op in (turn, compose(T.FLIP_LEFT_RIGHT, turn)):
            return degrees
    raise AssertionError(f"{op} is neither a turn nor a mirrored one")


@functools.cache
def compose(first: T | None, then: T | None) -> T | None:
    """The single transpose equal to ``first`` followed by ``then`` (found on a probe image)."""
    probe = Image.frombytes("L", (3, 2), bytes(range(6)))

    def apply(im: Image.Image, op: T | None) -> Image.Image:
        return im if op is None else im.transpose(op)

    want = apply(apply(probe, first), then)
    for op in (None, *T):
        got = apply(probe, op)
        if got.size == want.size and got.tobytes() == want.tobytes():
            return op
    raise AssertionError(f"transposes are a group; {first} then {then} has no match")


def out_size(img: Image.Image, op: T | None) -> tuple[int, int]:
    return (img.height, img.width) if op in SWAPS_AXES else (img.width, img.height)
