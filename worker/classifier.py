"""What the Classify RPCs need from a face model, independent of how it works.

The servicers depend only on this interface; ``worker.faces`` implements it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import numpy as np

NO_FACE = "no_face"
UNKNOWN = "unknown"


class Box(NamedTuple):
    """A face box in image pixels: left, top inclusive; right, bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


@dataclass(frozen=True)
class FaceResult:
    """One face: its box in upright-image pixels, its label and score 0..1."""

    box: Box
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The answer for one image: the largest face's label (or ``no_face``) and every face.

    ``orientation`` is the counter-clockwise quarter turn (0, 90, 180, 270) of the upright image
    under which its faces were found: 0 unless the upright image had none. Boxes, ``width`` and
    ``height`` are always those of the upright image (as sent, EXIF orientation applied).
    """

    label: str
    confidence: float
    width: int
    height: int
    faces: list[FaceResult] = field(default_factory=list)
    orientation: int = 0


class Classifier(Protocol):
    """A loaded face model. Implementations must be safe to call from several threads."""

    name: str
    version: str

    def classify(self, data: bytes, max_pixels: int) -> Classification:
        """Classify the faces in an encoded image file (bytes as read from disk)."""
        ...

    def upright_turn(self, data: bytes, max_pixels: int) -> int | None:
        """The counter-clockwise quarter turn under which an encoded image's faces are upright, None
        without a face (``rotate auto``)."""
        ...

    def classify_legacy(self, pixels: np.ndarray) -> str:
        """Label a legacy client's picture (HxW grey or HxWx3 RGB uint8, usually 50x37 grey)."""
        ...
