"""The dlib models: where their files are, their checksums, and loading them once.

The model files come from the ``face-recognition-models`` package. We locate
them through the import system without importing that package, whose
``__init__`` needs ``pkg_resources`` (gone from recent setuptools).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dlib

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class ModelFilesMissing(RuntimeError):
    """The dlib model files cannot be found (``face-recognition-models`` not installed?)."""


def models_dir() -> Path:
    """Folder holding face-recognition-models' ``.dat`` files."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(
            "the package face-recognition-models is not installed (pip install face-recognition-models)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_file(name: str) -> Path:
    """Path of one model file, checked to exist."""
    path = models_dir() / name
    if not path.is_file():
        raise ModelFilesMissing(f"dlib model file {path} is missing; reinstall face-recognition-models")
    return path


@cache
def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (cached: the 22 MB embedding model is hashed once per process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class DlibModels:
    """The HOG detector, 5-point landmark model and ResNet embedding network, with a lock each.

    dlib's objects keep scratch buffers between calls (the network its layer
    outputs), so each is used by one thread at a time; separate locks let one
    thread detect while another embeds.
    """

    detector: dlib.fhog_object_detector
    predictor: dlib.shape_predictor
    net: dlib.face_recognition_model_v1
    detector_lock: threading.Lock = field(default_factory=threading.Lock)
    predictor_lock: threading.Lock = field(default_factory=threading.Lock)
    net_lock: threading.Lock = field(default_factory=threading.Lock)


@cache
def load_dlib_models() -> DlibModels:
    """Load the three dlib models once per process (about 0.1 s)."""
    return DlibModels(
        detector=dlib.get_frontal_face_detector(),
        predictor=dlib.shape_predictor(str(model_file(LANDMARKS_FILE))),
        net=dlib.face_recognition_model_v1(str(model_file(EMBEDDING_FILE))),
    )
