"""The model files: our artifact, and the dlib model files it was made with.

Our artifact is arrays in an ``.npz`` (loaded without pickle) and metadata in
a ``.json`` beside it. The JSON records the ``.npz``'s SHA-256 and that of the
embedding network it was trained on; a mismatch, a missing key, a different
format version or a different embedding network is refused with a message
saying which, never half-loaded.

dlib's model files come from the ``face-recognition-models`` package. We
locate them through the import system without importing that package, whose
``__init__`` needs ``pkg_resources`` (gone from recent setuptools).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from worker.classifier import Box
from worker.faces.openset import OpenSetModel

FORMAT = "imagebatch-face-model"
FORMAT_VERSION = 1
MAIN, LEGACY = "main_", "legacy_"
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "faces.npz"
# dlib's frontal face detector as dlib itself saves it (``get_frontal_face_detector().save(...)``): read
# from this file in 1 ms, where ``get_frontal_face_detector()`` decodes it from text compiled into dlib
# in 0.7 s of CPU, each worker process's largest start-up cost for Classify. tests/worker/faces/test_faces.py checks
# that it is still the installed dlib's detector, byte for byte.
DETECTOR = SHIPPED.parent / "frontal_face_detector.svm"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class ModelError(RuntimeError):
    """The model artifact is missing, corrupt or made for something else."""


class ModelFilesMissing(ModelError):
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
    """Path of one dlib model file, checked to exist."""
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


@dataclass(frozen=True)
class FaceModel:
    """A loaded artifact: the photo model, the legacy 37x50 model and their metadata."""

    main: OpenSetModel
    legacy: OpenSetModel
    legacy_box: Box
    meta: dict
    sha256: str

    @property
    def version(self) -> str:
        return self.sha256[:12]


def paths(path: str | Path) -> tuple[Path, Path]:
    """(npz, json) for a path naming either of them."""
    p = Path(path)
    return p.with_suffix(".npz"), p.with_suffix(".json")


def save(path: str | Path, main: OpenSetModel, legacy: OpenSetModel, legacy_box: Box, meta: dict) -> FaceModel:
    """Write ``PATH.npz`` and ``PATH.json``; returns the model as it would load."""
    npz_path, json_path = paths(path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {**main.arrays(MAIN), **legacy.arrays(LEGACY), "legacy_box": np.array(legacy_box, dtype=np.int32)}
    np.savez_compressed(npz_path, **arrays)
    digest = hashlib.sha256(npz_path.read_bytes()).hexdigest()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "npz_sha256": digest,
        "labels": main.labels,
        "legacy_labels": legacy.labels,
        "embedding_model": {"name": EMBEDDING_FILE, "sha256": sha256_file(model_file(EMBEDDING_FILE))},
        **meta,
    }
    json_path.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    return FaceModel(main, legacy, legacy_box, meta, digest)


def load(path: str | Path | None = None, check_embedding_model: bool = True) -> FaceModel:
    """Load and verify an artifact (default: the shipped one). Raises ModelError saying what is wrong."""
    npz_path, json_path = paths(path or SHIPPED)
    for p in (npz_path, json_path):
        if not p.is_file():
            raise ModelError(f"face model file {p} is missing (train one with `worker train`)")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"face model metadata {json_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{json_path} is not an imagebatch face model (format {FORMAT!r} expected)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{json_path} has format version {meta.get('format_version')!r}; this worker reads "
            f"version {FORMAT_VERSION}: retrain with this version's `worker train`"
        )
    blob = npz_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("npz_sha256"):
        raise ModelError(
            f"{npz_path} has SHA-256 {digest[:12]}..., its metadata records "
            f"{str(meta.get('npz_sha256'))[:12]}...: the file is corrupt or does not belong to {json_path.name}"
        )
    if check_embedding_model:
        wanted = meta.get("embedding_model", {}).get("sha256")
        have = sha256_file(model_file(EMBEDDING_FILE))
        if wanted != have:
            raise ModelError(
                f"{npz_path} was trained on embeddings of a different {EMBEDDING_FILE} "
                f"(SHA-256 {str(wanted)[:12]}..., installed {have[:12]}...): retrain it"
            )
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        main = OpenSetModel.from_arrays(list(meta["labels"]), arrays, MAIN)
        legacy = OpenSetModel.from_arrays(list(meta["legacy_labels"]), arrays, LEGACY)
        box = Box(*(int(v) for v in arrays["legacy_box"]))
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise ModelError(f"face model {npz_path} is incomplete or inconsistent: {type(e).__name__}: {e}") from None
    return FaceModel(main, legacy, box, meta, digest)
