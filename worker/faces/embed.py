"""Face embeddings: dlib's ResNet maps a chip to a 128-d vector (same person: distance < ~0.6)."""

from __future__ import annotations

import threading

import dlib
import numpy as np

EMBEDDING_DIM = 128


def embed_chips(
    chips: list[np.ndarray], net: dlib.face_recognition_model_v1, lock: threading.Lock | None = None
) -> np.ndarray:
    """(n, 128) float32 embeddings of 150x150x3 uint8 chips."""
    if not chips:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    with lock or threading.Lock():
        vectors = net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)
