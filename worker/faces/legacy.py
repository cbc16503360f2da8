"""The legacy RecognizeFace input: a whole photo shrunk to 37x50 grey, and what can be read from it.

Old clients shrank the *whole* photo (not a face crop) to 37 wide by 50 high,
grey, squashing a square photo. The face in it is about 16x20 pixels. We
undo the squash (back to a 250x250 square, bicubic), look for a face there to
tell ``no_face`` apart, and embed the face at the place where LFW-style
portraits have it (the median face box of the training photos): on such
blurred faces a fixed, well-placed box aligns better than the detector's own
box. The legacy model is trained on embeddings made this same way from
thumbnails of the training photos.

This module holds the thumbnail geometry (pure Pillow and numpy); detecting
and embedding on it are the last steps of ``worker.faces.pipeline``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.errors import InvalidArgument, Reason

WIDTH, HEIGHT = 37, 50
RESTORED = 250

# How old clients may have shrunk: Pillow's resize default (bicubic) and nearest
# neighbour (Pillow < 7's default); training sees both.
CLIENT_RESAMPLING = (Image.Resampling.BICUBIC, Image.Resampling.NEAREST)


def old_client_thumbnail(img: Image.Image, resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """What an old client sent for a photo: the whole of it, grey, resized to 37x50 (50 rows)."""
    return np.asarray(img.convert("L").resize((WIDTH, HEIGHT), resample), dtype=np.uint8)


def as_thumbnail(pixels: np.ndarray) -> np.ndarray:
    """A client's pixels (HxW grey or HxWx3 RGB uint8) as the 50x37 grey the model knows."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise InvalidArgument(f"legacy pixels must be HxW grey or HxWx3 RGB uint8, got {pixels.shape} {pixels.dtype}",
                              Reason.INVALID_PIXELS)
    if 0 in pixels.shape:
        raise InvalidArgument(f"legacy image is empty ({pixels.shape[1]}x{pixels.shape[0]})", Reason.EMPTY_IMAGE)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if pixels.ndim == 3:
        img = img.convert("L")
    if img.size != (WIDTH, HEIGHT):
        img = img.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def restored(thumb: np.ndarray) -> np.ndarray:
    """The 37x50 thumbnail stretched back to a 250x250 RGB square."""
    img = Image.fromarray(thumb).resize((RESTORED, RESTORED), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))

