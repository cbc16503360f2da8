"""Face recognition: dlib detection, alignment and embeddings, an open-set classifier on top.

Serving reads one module from image bytes to a label, ``pipeline``
(``FaceClassifier``), beside the open-set math (``openset``), the model files
(``artifact``) and the legacy 37x50 thumbnail geometry (``legacy``).
Training and evaluation tools are in ``worker.faces.training``.
"""

from __future__ import annotations

import functools

from worker.classifier import Classification, Classifier
from worker.decode import DEFAULT_MAX_PIXELS


def load_classifier(path: str | None = None) -> Classifier:
    """Load a face model artifact (default: the shipped ``worker/models/faces.npz``) and the dlib models.

    Raises ``artifact.ModelError`` naming the problem when the artifact is
    missing, corrupt, of another format version or made for other embeddings,
    or when dlib's model files are missing.
    """
    from worker.faces.artifact import load
    from worker.faces.pipeline import FaceClassifier, load_dlib_models

    return FaceClassifier(load(path), load_dlib_models())


def classify(data: bytes, *, model: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Classification:
    """The faces in the encoded image ``data`` and the largest one's label, as the worker's Classify answers.

    ``model`` is a face model artifact (default: the shipped one), loaded at the first call and kept for the
    process's later calls with the same ``model``. Raises ``artifact.ModelError`` for a model that cannot be
    loaded, and the worker's ``InvalidArgument`` for images it cannot read (empty, corrupt, over ``max_pixels``).
    """
    return _loaded(model).classify(data, max_pixels)


@functools.cache
def _loaded(path: str | None) -> Classifier:
    return load_classifier(path)
