"""Image array -> the faces in it, each with its box and embedding (detect, align, embed)."""

from __future__ import annotations

import numpy as np

from worker.faces.align import face_chip
from worker.faces.detect import Box, detect_faces
from worker.faces.dlib_models import DlibModels
from worker.faces.embed import embed_chips


def faces_in(rgb: np.ndarray, models: DlibModels, max_faces: int = 16) -> tuple[list[Box], np.ndarray]:
    """Boxes (largest first) and their (n, 128) embeddings; at most ``max_faces`` (the largest)."""
    boxes = detect_faces(rgb, models.detector, models.detector_lock)[:max_faces]
    chips = [face_chip(rgb, b, models.predictor, models.predictor_lock) for b in boxes]
    return boxes, embed_chips(chips, models.net, models.net_lock)
