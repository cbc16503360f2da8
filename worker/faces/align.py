"""Landmarks and the aligned face chip the embedding network expects."""

from __future__ import annotations

import threading

import dlib
import numpy as np

from worker.faces.detect import Box

# What dlib's ResNet was trained on: 150x150 chips with 25% padding.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def face_chip(
    rgb: np.ndarray, box: Box, predictor: dlib.shape_predictor, lock: threading.Lock | None = None
) -> np.ndarray:
    """150x150x3 uint8 chip of the face in ``box``, rotated and scaled by its 5 landmarks.

    ``rgb`` is the full-resolution image, so a small face in a large photo
    keeps every pixel it has.
    """
    rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
    with lock or threading.Lock():
        shape = predictor(rgb, rect)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
