"""Face recognition: dlib detection, alignment and embeddings, an open-set classifier on top.

Steps, each usable alone: ``image.to_rgb`` -> ``detect.detect_faces`` ->
``align.face_chip`` -> ``embed.embed_chips`` -> ``openset.OpenSetModel.predict``;
``pipeline.FaceClassifier`` chains them from image bytes to a label.
"""

from __future__ import annotations

from worker.classifier import Classifier


def load_classifier(path: str | None = None) -> Classifier:
    """Load a face model artifact (default: the shipped ``worker/models/faces.npz``) and the dlib models.

    Raises ``artifact.ModelError`` naming the problem when the artifact is
    missing, corrupt, of another format version or made for other embeddings.
    """
    from worker.faces.artifact import load
    from worker.faces.dlib_models import load_dlib_models
    from worker.faces.pipeline import FaceClassifier

    return FaceClassifier(load(path), load_dlib_models())
