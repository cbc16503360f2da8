"""From image bytes to a label: decode, detect, align, embed, classify. Implements worker.classifier.Classifier."""

from __future__ import annotations

import numpy as np

from worker.classifier import NO_FACE, UNKNOWN, Classification, FaceResult
from worker.decode import upright
from worker.faces.artifact import FaceModel
from worker.faces.dlib_models import DlibModels
from worker.faces.faces_in import faces_in
from worker.faces.image import to_rgb
from worker.faces.legacy import as_thumbnail, has_face, legacy_embeddings, restored
from worker.faces.openset import UNKNOWN_INDEX, OpenSetModel

NAME = "dlib-resnet-open-set"


def name_of(model: OpenSetModel, index: int) -> str:
    return UNKNOWN if index == UNKNOWN_INDEX else model.labels[index]


class FaceClassifier:
    """A loaded face model; safe to share between threads (dlib calls are serialised per model)."""

    def __init__(self, model: FaceModel, dlib_models: DlibModels) -> None:
        self.model = model
        self.dlib = dlib_models
        self.name = NAME
        self.version = model.version

    def classify_rgb(self, rgb: np.ndarray) -> Classification:
        """Classify every face in an HxWx3 uint8 array; the image's label is the largest face's."""
        height, width = rgb.shape[:2]
        boxes, embeddings = faces_in(rgb, self.dlib)
        if not boxes:
            return Classification(NO_FACE, 1.0, width, height, [])
        classes, scores = self.model.main.predict(embeddings)
        faces = [
            FaceResult(tuple(b), name_of(self.model.main, int(c)), float(s))
            for b, c, s in zip(boxes, classes, scores, strict=True)
        ]
        return Classification(faces[0].label, faces[0].score, width, height, faces)

    def classify(self, data: bytes, max_pixels: int) -> Classification:
        """Classify an encoded image file (EXIF orientation applied)."""
        return self.classify_rgb(to_rgb(upright(data, max_pixels)))

    def classify_legacy(self, pixels: np.ndarray) -> str:
        """A legacy client's 37x50 grey whole-photo thumbnail -> a person, ``unknown`` or ``no_face``."""
        thumb = as_thumbnail(pixels)
        if not has_face(restored(thumb), self.dlib):
            return NO_FACE
        classes, _ = self.model.legacy.predict(legacy_embeddings([thumb], self.model.legacy_box, self.dlib))
        return name_of(self.model.legacy, int(classes[0]))
