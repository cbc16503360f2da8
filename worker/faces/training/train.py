"""Training: galleries of photos -> embeddings -> calibrated open-set models -> artifact."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
from PIL import Image

from worker.classifier import Box
from worker.faces import artifact, legacy, openset
from worker.faces.artifact import EMBEDDING_FILE, model_file, sha256_file
from worker.faces.pipeline import NAME, DlibModels, faces_in, legacy_embeddings, load_dlib_models, to_rgb

log = logging.getLogger(__name__)
CACHE_DIR = Path(os.environ.get("IMAGEBATCH_CACHE", Path.home() / ".cache" / "imagebatch"))
# Part of every cache key: bump when detection, alignment or thumbnails change what a photo embeds to.
PIPELINE_VERSION = 2


def photo_faces(path: Path, models: DlibModels) -> tuple[Box | None, np.ndarray | None, tuple[int, int]]:
    """Largest face box and embedding of one photo file (None, None if no face), and its size."""
    with Image.open(path) as img:
        rgb = to_rgb(img)
    boxes, emb = faces_in(rgb, models, max_faces=1)
    size = (rgb.shape[1], rgb.shape[0])
    return (boxes[0], emb[0], size) if boxes else (None, None, size)


def _cached(fn: Callable) -> Callable:
    """joblib cache outside the repository (training only: nothing cached ships)."""
    return joblib.Memory(CACHE_DIR / "joblib", verbose=0).cache(fn)


def _photo_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


# The _embed_* functions' arguments are joblib's cache key: the photo (path, size,
# mtime), the embedding network's SHA-256 and PIPELINE_VERSION, read or not.
def _embed_photo(
    key: tuple[str, int, int], net_sha: str, pipeline: int
) -> tuple[tuple | None, np.ndarray | None, tuple]:
    box, emb, size = photo_faces(Path(key[0]), load_dlib_models())
    return (tuple(box) if box else None, emb, size)


def _embed_thumb(key: tuple[str, int, int], resample: int, box: tuple, net_sha: str, pipeline: int) -> np.ndarray:
    with Image.open(key[0]) as img:
        thumb = legacy.old_client_thumbnail(img, Image.Resampling(resample))
    return legacy_embeddings([thumb], Box(*box), load_dlib_models())[0]


def train(
    people: dict[str, list[Path]],
    negatives: dict[str, list[Path]],
    out: Path,
    seed: int = 0,
    resampling: tuple[Image.Resampling, ...] = legacy.CLIENT_RESAMPLING,
    extra_meta: dict | None = None,
    cache: bool = True,
    progress: Callable[[str], None] = log.info,
) -> artifact.FaceModel:
    """Train the photo model and the legacy 37x50 model on these galleries and save the artifact."""
    if not people:
        raise ValueError("no people to train on: give at least one folder of photos")
    net_sha = sha256_file(model_file(EMBEDDING_FILE))
    embed_photo = _cached(_embed_photo) if cache else _embed_photo
    embed_thumb = _cached(_embed_thumb) if cache else _embed_thumb
    labels = list(people)
    skipped: list[str] = []

    def embed_group(files: list[Path]) -> tuple[np.ndarray, list[Path], list[tuple]]:
        rows, kept, boxes = [], [], []
        for f in files:
            box, emb, size = embed_photo(_photo_key(f), net_sha, PIPELINE_VERSION)
            if emb is None:
                skipped.append(str(f))
                continue
            rows.append(emb)
            kept.append(f)
            boxes.append((box, size))
        return np.array(rows, dtype=np.float32).reshape(-1, 128), kept, boxes

    progress(f"embedding {sum(map(len, people.values()))} photos of {len(labels)} people "
             f"and {sum(map(len, negatives.values()))} of {len(negatives)} negative people")
    known = [embed_group(people[name]) for name in labels]
    for name, (x, _, _) in zip(labels, known, strict=True):
        if len(x) == 0:
            raise ValueError(f"no face found in any photo of {name}")
    x = np.vstack([k[0] for k in known])
    y = np.concatenate([np.full(len(k[0]), i) for i, k in enumerate(known)])
    neg = [embed_group(files)[0] for files in negatives.values()]
    neg = [n for n in neg if len(n)]

    main, main_val = _fit_open_set(x, y, labels, neg, seed)
    progress(f"photo model: validation {main_val}")

    # Where the face sits in the training photos, in 250x250 coordinates.
    scaled = [_scale_box(b, s) for k in known for b, s in k[2]]
    box = Box(*(int(v) for v in np.median(np.array(scaled), axis=0)))
    progress(f"legacy model: embedding thumbnails ({len(resampling)} ways of shrinking) at {tuple(box)}")

    def thumbs(files: list[Path]) -> np.ndarray:
        rows = [embed_thumb(_photo_key(f), int(r), tuple(box), net_sha, PIPELINE_VERSION)
                for f in files for r in resampling]
        return np.array(rows, dtype=np.float32).reshape(-1, 128)

    # Legacy thumbnails of every photo: the old client sent whatever it had.
    lx = np.vstack([thumbs(people[name]) for name in labels])
    ly = np.concatenate([np.full(len(people[name]) * len(resampling), i) for i, name in enumerate(labels)])
    lneg = [thumbs(files) for files in negatives.values()]
    lneg = [n for n in lneg if len(n)]
    legacy_model, legacy_val = _fit_open_set(lx, ly, labels, lneg, seed, group=len(resampling))
    progress(f"legacy model: validation {legacy_val}")

    import dlib
    import sklearn

    meta = {
        "name": NAME,
        "training": {
            "people": {n: len(k[1]) for n, k in zip(labels, known, strict=True)},
            "negatives": {n: len(v) for n, v in negatives.items()},
            "photos_without_a_face": skipped,
            "legacy_resampling": [Image.Resampling(r).name for r in resampling],
            "legacy_box": list(box),
            "seed": seed,
        },
        "validation": {"photo": main_val, "legacy": legacy_val},
        "libraries": {
            "python": platform.python_version(),
            "dlib": dlib.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "Pillow": Image.__version__,
        },
        **(extra_meta or {}),
    }
    return artifact.save(out, main, legacy_model, box, meta)


def _scale_box(box: tuple, size: tuple[int, int]) -> tuple[float, ...]:
    sx, sy = legacy.RESTORED / size[0], legacy.RESTORED / size[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _fit_open_set(
    x: np.ndarray, y: np.ndarray, labels: list[str], neg: list[np.ndarray], seed: int, group: int = 1
) -> tuple[openset.OpenSetModel, dict]:
    """Calibrate on cross-validated distances (training data only), then fit on all of it."""
    if not neg:
        model = openset.fit(x, y, labels)
        return model, {"calibrated": False, "threshold": openset.DEFAULT_THRESHOLD}
    # Copies of one photo (legacy: several ways of shrinking) stay in one fold.
    same, other, truth, guess = openset.cross_validated_distances(x, y, labels, neg, seed, group=group)
    slope, offset = openset.calibrate(same, other)
    threshold = -offset / slope
    val = {
        "calibrated": True,
        "threshold": round(threshold, 4),
        "known_accuracy": round(float(np.mean((truth == guess) & (same <= threshold))), 4),
        "negatives_unknown_rate": round(float(np.mean(other > threshold)), 4),
        "known_photos": int(len(same)),
        "negative_photos": int(len(other)),
    }
    return openset.fit(x, y, labels, np.vstack(neg), (slope, offset)), val
