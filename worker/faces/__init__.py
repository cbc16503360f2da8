"""Face recognition: dlib detection, alignment and embeddings, an open-set classifier on top.

Serving reads one module from image bytes to a label, ``pipeline``
(``FaceClassifier``), beside the open-set math (``openset``), the model files
(``artifact``) and the legacy 37x50 thumbnail geometry (``legacy``).
Training and evaluation tools are in ``worker.faces.training``.
"""

from __future__ import annotations

from worker.classifier import Classifier


def load_classifier(path: str | None = None) -> Classifier:
    """Load a face model artifact (default: the shipped ``worker/models/faces.npz``) and the dlib models.

    Raises ``artifact.ModelError`` naming the problem when the artifact is
    missing, corrupt, of another format version or made for other embeddings,
    or when dlib's model files are missing.
    """
    from worker.faces.artifact import load
    from worker.faces.pipeline import FaceClassifier, load_dlib_models

    return FaceClassifier(load(path), load_dlib_models())
