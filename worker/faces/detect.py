"""Finding faces: dlib's HOG detector on a copy sized for speed, boxes mapped back.

The HOG window is 80x80 px, so at scale 1 it finds faces from about 60 px up.
Scanning costs time in proportion to pixels, so the detector sees at most
``DETECT_PIXELS`` (a 1920x1080 photo at full size: its 60 px faces are found);
larger photos are scanned on a reduced copy, smaller ones get a second,
2x-upsampled pass when the first finds nothing and the 2x copy fits the same
budget (a 250x250 portrait: faces down to about 40 px).
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import dlib
import numpy as np
from PIL import Image

DETECT_PIXELS = 1920 * 1088


class Box(NamedTuple):
    """A face box in image pixels: left, top inclusive; right, bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


def detection_scale(width: int, height: int, budget: int = DETECT_PIXELS) -> float:
    """Factor (<= 1) to shrink an image by so the detector scans at most ``budget`` pixels."""
    return min(1.0, math.sqrt(budget / (width * height)))


def detect_faces(
    rgb: np.ndarray,
    detector: dlib.fhog_object_detector,
    lock: threading.Lock | None = None,
    budget: int = DETECT_PIXELS,
) -> list[Box]:
    """Boxes of the faces in an HxWx3 uint8 image, main face first (see ``main_face_first``), in its pixels."""
    height, width = rgb.shape[:2]
    scale = detection_scale(width, height, budget)
    work = rgb if scale == 1.0 else _resized(rgb, scale)
    lock = lock or threading.Lock()
    with lock:
        rects = detector(work, 0)
        if not rects and width * height * 4 <= budget:
            rects = detector(work, 1)
    boxes = sorted({_to_box(r, scale, width, height) for r in rects}, key=lambda b: (-b.area, b.left, b.top))
    return main_face_first([b for b in boxes if b.area > 0], width, height)


# dlib's boxes come from pyramid levels 1.2x apart (areas 1.44x), so two faces
# whose areas differ by less than this are equally large to the detector.
SAME_SIZE = 0.8


def main_face_first(boxes: list[Box], width: int, height: int) -> list[Box]:
    """Boxes sorted largest first, except that among faces about as large as the largest
    (two people side by side) the one nearest the centre comes first: the photo's subject."""
    if len(boxes) < 2:
        return boxes
    top = boxes[0].area
    rivals = [b for b in boxes if b.area >= SAME_SIZE * top]

    def off_centre(b: Box) -> int:
        return (b.left + b.right - width) ** 2 + (b.top + b.bottom - height) ** 2

    main = min(rivals, key=off_centre)
    return [main, *(b for b in boxes if b != main)]


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _to_box(rect: dlib.rectangle, scale: float, width: int, height: int) -> Box:
    """dlib's inclusive rectangle on the scanned copy -> exclusive Box on the original, clipped."""
    left = max(0, math.floor(rect.left() / scale))
    top = max(0, math.floor(rect.top() / scale))
    right = min(width, math.ceil((rect.right() + 1) / scale))
    bottom = min(height, math.ceil((rect.bottom() + 1) / scale))
    return Box(left, top, right, bottom)
