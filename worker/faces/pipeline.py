"""From image bytes to a label, in reading order: decode, to RGB, detect, align, embed, classify.

``FaceClassifier.classify`` chains the steps; each is also a function that can
be called, tested and timed alone (``bench/bench_classify.py`` does). The
legacy RecognizeFace path (a 37x50 grey thumbnail to a label) ends the module.
Implements ``worker.classifier.Classifier``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import dlib
import numpy as np
from PIL import Image

from worker.classifier import NO_FACE, UNKNOWN, Box, Classification, FaceResult
from worker.decode import upright
from worker.errors import InvalidArgument, Reason
from worker.faces.artifact import DETECTOR, EMBEDDING_FILE, LANDMARKS_FILE, model_file
from worker.faces.legacy import as_thumbnail, restored
from worker.faces.openset import UNKNOWN_INDEX, OpenSetModel

if TYPE_CHECKING:
    from worker.faces.artifact import FaceModel

NAME = "dlib-resnet-open-set"


# --- the dlib models ---------------------------------------------------------------------------

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
    """Load the three dlib models once per process (about 0.1 s of CPU)."""
    return DlibModels(
        detector=dlib.fhog_object_detector(str(DETECTOR)),
        predictor=dlib.shape_predictor(str(model_file(LANDMARKS_FILE))),
        net=dlib.face_recognition_model_v1(str(model_file(EMBEDDING_FILE))),
    )


# --- to RGB: any decoded Pillow image as the 8-bit RGB array the models take -------------------

# Modes with an alpha channel are flattened onto white: transparent pixels may
# hold anything, and what a viewer sees is what we should classify.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def to_rgb(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB, C-contiguous, from any Pillow mode (grey, palette, CMYK, alpha, 16-bit, float)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _grey_to_rgb(_to_8bit(np.asarray(img)))
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(flat, rgba)
    if img.mode == "RGB":  # no convert: its copy of a 6 MB frame costs as much as the array itself
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InvalidArgument(f"cannot convert a {img.mode} image to RGB: {e}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit integer or float grey to 0..255 by the range its type implies."""
    v = values.astype(np.float64)
    if v.size == 0:
        raise InvalidArgument("image has no pixels", Reason.EMPTY_IMAGE)
    top = float(np.nanmax(v)) if np.isfinite(v).any() else 0.0
    if values.dtype.kind == "f" and top <= 1.0:
        v = v * 255.0  # float images in 0..1
    elif top > 255.0:
        v = v * (255.0 / (65535.0 if top <= 65535.0 else top))
    return np.clip(np.nan_to_num(v), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


# --- detect: dlib's HOG detector on a copy sized for speed, boxes mapped back ------------------

# The HOG window is 80x80 px, so at scale 1 it finds faces from about 60 px up.
# Scanning costs time in proportion to pixels, so the detector sees at most
# DETECT_PIXELS (a 1920x1080 photo at full size: its 60 px faces are found);
# larger photos are scanned on a reduced copy, smaller ones get a second,
# 2x-upsampled pass when the first finds nothing and the 2x copy fits the same
# budget (a 250x250 portrait: faces down to about 40 px).
DETECT_PIXELS = 1920 * 1088
# dlib's boxes come from pyramid levels 1.2x apart (areas 1.44x), so two faces
# whose areas differ by less than this are equally large to the detector.
SAME_SIZE = 0.8


def detection_scale(width: int, height: int, budget: int = DETECT_PIXELS) -> float:
    """Factor (<= 1) to shrink an image by so the detector scans at most ``budget`` pixels."""
    return min(1.0, math.sqrt(budget / (width * height)))


def detect_faces(rgb: np.ndarray, models: DlibModels, budget: int = DETECT_PIXELS) -> list[Box]:
    """Boxes of the faces in an HxWx3 uint8 image, main face first (see ``main_face_first``), in its pixels."""
    return detect_scored(rgb, models, budget)[0]


def detect_scored(rgb: np.ndarray, models: DlibModels, budget: int = DETECT_PIXELS,
                  upsample: bool = True) -> tuple[list[Box], float]:
    """``detect_faces`` and the detector's best score (``-inf`` without a face): how face-like its
    most face-like window is (0 is the detector's own threshold). ``upsample``: whether an image that
    fits the budget twice over gets the 2x pass when the first finds nothing."""
    height, width = rgb.shape[:2]
    scale = detection_scale(width, height, budget)
    work = rgb if scale == 1.0 else _resized(rgb, scale)
    with models.detector_lock:
        rects, scores, _ = models.detector.run(work, 0, 0.0)
        if not rects and upsample and width * height * 4 <= budget:
            rects, scores, _ = models.detector.run(work, 1, 0.0)
    boxes = sorted({_to_box(r, scale, width, height) for r in rects}, key=lambda b: (-b.area, b.left, b.top))
    return main_face_first([b for b in boxes if b.area > 0], width, height), max(scores, default=-math.inf)


def main_face_first(boxes: list[Box], width: int, height: int) -> list[Box]:
    """Boxes sorted largest first, except that among faces about as large as the largest
    (two people side by side) the one nearest the centre comes first: the photo's subject."""
    if len(boxes) < 2:
        return boxes
    top = boxes[0].area
    rivals = [b for b in boxes if b.area >= SAME_SIZE * top]

    def off_centre(b: Box) -> int:
        return (b.left + b.right - width) ** 2 + (b.top + b.bottom - height) ** 2

    main = min(rivals, key=off_centre)
    return [main, *(b for b in boxes if b != main)]


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _to_box(rect: dlib.rectangle, scale: float, width: int, height: int) -> Box:
    """dlib's inclusive rectangle on the scanned copy -> exclusive Box on the original, clipped."""
    left = max(0, math.floor(rect.left() / scale))
    top = max(0, math.floor(rect.top() / scale))
    right = min(width, math.ceil((rect.right() + 1) / scale))
    bottom = min(height, math.ceil((rect.bottom() + 1) / scale))
    return Box(left, top, right, bottom)


# --- align: landmarks and the chip the embedding network expects -------------------------------

# What dlib's ResNet was trained on: 150x150 chips with 25% padding.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def face_chip(rgb: np.ndarray, box: Box, models: DlibModels) -> np.ndarray:
    """150x150x3 uint8 chip of the face in ``box``, rotated and scaled by its 5 landmarks.

    ``rgb`` is the full-resolution image, so a small face in a large photo
    keeps every pixel it has.
    """
    rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
    with models.predictor_lock:
        shape = models.predictor(rgb, rect)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING))


# --- embed: dlib's ResNet maps a chip to a 128-d vector (same person: distance < ~0.6) ---------

EMBEDDING_DIM = 128


def embed_chips(chips: list[np.ndarray], models: DlibModels) -> np.ndarray:
    """(n, 128) float32 embeddings of 150x150x3 uint8 chips."""
    if not chips:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    with models.net_lock:
        vectors = models.net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


def faces_in(rgb: np.ndarray, models: DlibModels, max_faces: int = 16) -> tuple[list[Box], np.ndarray]:
    """Boxes (main face first) and their (n, 128) embeddings; at most ``max_faces`` (the largest)."""
    boxes = detect_faces(rgb, models)[:max_faces]
    return boxes, embed_chips([face_chip(rgb, b, models) for b in boxes], models)


# --- turned photos: scans and cameras that write no orientation ---------------------------------

# Sideways (90, 270) is how portrait shots and scans usually arrive, upside down (180) is rare:
# the turns are tried in this order, and only while no sure face has been found.
QUARTER_TURNS = (90, 270, 180)
# The HOG detector also fires, weakly, on some faces upside down (76 of the 525 training photos,
# best score 0.72; never on a face turned sideways). A face scoring at least this ends the search;
# below it every turn is tried and the best-scoring one wins, so a false upside-down face never
# hides the true one (chosen on the training photos; docs/model-card.md, "Turned photos").
SURE_FACE = 1.0
# The turned copies of a larger image are scanned at most this size, in grey: a 1920x1080 photo reduced by
# 3 (its turned faces from about 180 px up, upright ones from 60 px at full size), each pass about a
# twelfth of the upright one (HOG on one channel instead of the strongest of three costs ~30 % less; the
# same turns found for faces of 180-260 px, 89 of 90, docs/model-card.md). Smaller images, a 250x250
# portrait among them, are searched in colour at full size, as upright.
TURNED_PIXELS = 640 * 360


def turned(rgb: np.ndarray, degrees: int) -> np.ndarray:
    """``rgb`` turned counter-clockwise by ``degrees`` (0, 90, 180, 270), a C-ordered copy for dlib
    (``ascontiguousarray`` may keep a 1-pixel-wide view's negative strides, which dlib refuses)."""
    return np.rot90(rgb, degrees // 90).copy() if degrees else rgb


def unturned_box(box: Box, degrees: int, width: int, height: int) -> Box:
    """A box found in the copy turned counter-clockwise by ``degrees``, in the pixels of the
    ``width`` x ``height`` image before the turn."""
    left, top, right, bottom = box
    if degrees == 90:  # original pixel (x, y) sits at (y, width - 1 - x) in the turned copy
        return Box(width - bottom, left, width - top, right)
    if degrees == 180:
        return Box(width - right, height - bottom, width - left, height - top)
    if degrees == 270:  # original (x, y) at (height - 1 - y, x)
        return Box(top, height - right, bottom, height - left)
    return box


def search_turns(rgb: np.ndarray, models: DlibModels) -> tuple[int, list[Box]] | None:
    """The quarter turn (counter-clockwise) under which ``rgb``'s faces are surest, and their boxes in the
    pixels of ``rgb`` turned by it (main face first); None without a face. Upright unless the upright image
    has no sure face (``SURE_FACE``).

    The turns are searched on one grey copy shrunk to ``TURNED_PIXELS`` (shrunk and made grey once, then
    turned: turning and shrinking a 1080p frame three times costs more than the three scans), so that a
    photo with no face costs about 1.3 upright scans, not four. Once the search holds a face (a weak upright
    one), the turns are scanned without the 2x retry of a small image, which looks only for faces under about
    60 px: in a portrait with a weak upright face the three retries cost about as much as its embedding."""
    height, width = rgb.shape[:2]
    boxes, score = detect_scored(rgb, models)
    best = (score, 0, boxes) if boxes else None
    if best is None or best[0] < SURE_FACE:
        small = _shrunk(rgb, TURNED_PIXELS)
        # An image that fits is searched exactly as upright (its 2x pass included); a shrunk one at its size.
        budget = DETECT_PIXELS if small is rgb else TURNED_PIXELS
        work = small if small is rgb else np.asarray(Image.fromarray(small).convert("L"))
        for degrees in QUARTER_TURNS:
            found, score = detect_scored(turned(work, degrees), models, budget, best is None)
            if found and (best is None or score > best[0]):
                best = (score, degrees, [_upscaled(b, small, rgb, degrees) for b in found])
            if best is not None and best[0] >= SURE_FACE:
                break
    return None if best is None else best[1:]


def faces_any_turn(rgb: np.ndarray, models: DlibModels, max_faces: int = 16) -> tuple[int, list[Box], np.ndarray]:
    """Like ``faces_in``, under the quarter turn of ``search_turns``. Returns that turn (0 without any
    face), the boxes in ``rgb``'s pixels (main face first) and their embeddings."""
    found = search_turns(rgb, models)
    if found is None:
        return 0, [], embed_chips([], models)
    degrees, boxes = found[0], found[1][:max_faces]
    # Chips come from the turned copy at full size, where the face is upright for the landmark model.
    work = turned(rgb, degrees)
    embeddings = embed_chips([face_chip(work, b, models) for b in boxes], models)
    height, width = rgb.shape[:2]
    return degrees, [unturned_box(b, degrees, width, height) for b in boxes], embeddings


def _shrunk(rgb: np.ndarray, budget: int) -> np.ndarray:
    """``rgb`` shrunk to at most ``budget`` pixels (itself when it fits): first by the largest whole factor
    that keeps it over the budget (Pillow's box-filter reduce, a few ms for a 1080p frame), then resampled
    the rest of the way on that smaller copy (resampling the whole frame costs several times more)."""
    height, width = rgb.shape[:2]
    if width * height <= budget:
        return rgb
    img = Image.fromarray(rgb)
    factor = math.floor(math.sqrt(width * height / budget))
    if factor > 1:
        img = img.reduce(factor)
    if img.width * img.height > budget:
        scale = math.sqrt(budget / (img.width * img.height))
        img = img.resize((max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img)


def _upscaled(box: Box, small: np.ndarray, rgb: np.ndarray, degrees: int) -> Box:
    """A box found in ``small`` turned by ``degrees``, in the pixels of ``rgb`` turned by ``degrees``."""
    if small is rgb:
        return box
    sy, sx = rgb.shape[0] / small.shape[0], rgb.shape[1] / small.shape[1]
    if degrees in (90, 270):  # the turned copies' axes are exchanged
        sx, sy = sy, sx
    full_w, full_h = (rgb.shape[0], rgb.shape[1]) if degrees in (90, 270) else (rgb.shape[1], rgb.shape[0])
    return Box(max(0, math.floor(box.left * sx)), max(0, math.floor(box.top * sy)),
               min(full_w, math.ceil(box.right * sx)), min(full_h, math.ceil(box.bottom * sy)))


# --- classify: the open-set model names each face, the image takes its main face's label -------

def name_of(model: OpenSetModel, index: int) -> str:
    return UNKNOWN if index == UNKNOWN_INDEX else model.labels[index]


class FaceClassifier:
    """A loaded face model; safe to share between threads (dlib calls are serialised per model)."""

    def __init__(self, model: FaceModel, dlib_models: DlibModels) -> None:
        self.model = model
        self.dlib = dlib_models
        self.name = NAME
        self.version = model.version

    def classify(self, data: bytes, max_pixels: int) -> Classification:
        """Classify an encoded image file (EXIF orientation applied)."""
        return self.classify_rgb(to_rgb(upright(data, max_pixels)))

    def upright_turn(self, data: bytes, max_pixels: int) -> int | None:
        """The counter-clockwise quarter turn under which an encoded image's faces are upright (EXIF
        orientation applied first), None without a face: ``rotate auto``'s question, which needs no
        embedding."""
        found = search_turns(to_rgb(upright(data, max_pixels)), self.dlib)
        return None if found is None else found[0]

    def classify_rgb(self, rgb: np.ndarray) -> Classification:
        """Classify every face in an HxWx3 uint8 array; the image's label is its main face's.

        Without a sure upright face, the faces of the quarter turn where they are surest
        (``orientation``, see ``faces_any_turn``); boxes are always in ``rgb``'s pixels.
        """
        height, width = rgb.shape[:2]
        orientation, boxes, embeddings = faces_any_turn(rgb, self.dlib)
        if not boxes:
            return Classification(NO_FACE, 1.0, width, height, [])
        classes, scores = self.model.main.predict(embeddings)
        faces = [
            FaceResult(b, name_of(self.model.main, int(c)), float(s))
            for b, c, s in zip(boxes, classes, scores, strict=True)
        ]
        return Classification(faces[0].label, faces[0].score, width, height, faces, orientation)

    def classify_legacy(self, pixels: np.ndarray) -> str:
        """A legacy client's 37x50 grey whole-photo thumbnail -> a person, ``unknown`` or ``no_face``."""
        thumb = as_thumbnail(pixels)
        if not has_face(restored(thumb), self.dlib):
            return NO_FACE
        classes, _ = self.model.legacy.predict(legacy_embeddings([thumb], self.model.legacy_box, self.dlib))
        return name_of(self.model.legacy, int(classes[0]))


# --- the legacy path's own detect and embed (see worker.faces.legacy) --------------------------

# Lenient detection on the blurred, upscaled thumbnail: misses 1.4% of LFW
# thumbnails while firing on 0.5% of random photo crops (measured at design time).
DETECT_ADJUST = -0.3


def has_face(big: np.ndarray, models: DlibModels) -> bool:
    """Whether the detector, run leniently, sees a face in a restored thumbnail."""
    with models.detector_lock:
        rects, _, _ = models.detector.run(big, 0, DETECT_ADJUST)
    return len(rects) > 0


def legacy_embeddings(thumbs: list[np.ndarray], box: Box, models: DlibModels) -> np.ndarray:
    """(n, 128) embeddings of thumbnails' faces at the fixed ``box`` (in 250x250 coordinates)."""
    return embed_chips([face_chip(restored(t), box, models) for t in thumbs], models)
