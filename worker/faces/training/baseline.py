"""The eigenfaces baseline (PCA + RBF SVM), made the way scikit-learn's face-recognition example does.

Preprocessing is ``fetch_lfw_people``'s, done in-process on the same files:
grey as the mean of R, G, B, the crop ``slice_=(slice(70, 195), slice(78, 172))``
and ``resize=0.4`` (a 50x37 face crop). Training and tuning use the same
training split as our model, the negatives as one class ``unknown``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CROP = (slice(70, 195), slice(78, 172))
RESIZE = 0.4


def lfw_crop(path: Path) -> np.ndarray:
    """The example's input: flattened 50x37 grey crop, values 0..1."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("RGB"), dtype=np.float32).mean(axis=2)
    face = grey[CROP]
    h, w = (int(RESIZE * (s.stop - s.start)) for s in CROP)
    small = np.asarray(Image.fromarray(face).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return (small / 255.0).ravel()


def train_eigenfaces(x: np.ndarray, y: list[str], seed: int = 0):
    """PCA(150, whitened) + SVC(rbf, balanced) with the example's randomised search of C and gamma."""
    from collections import Counter

    from scipy.stats import loguniform
    from sklearn.decomposition import PCA
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    folds = max(2, min(5, min(Counter(y).values())))  # the example's 5-fold search, fewer for tiny sets
    pca = PCA(n_components=min(150, len(x) - 1), svd_solver="randomized", whiten=True, random_state=seed)
    search = RandomizedSearchCV(
        SVC(kernel="rbf", class_weight="balanced"),
        {"C": loguniform(1e3, 1e5), "gamma": loguniform(1e-4, 1e-1)},
        n_iter=10, cv=folds, random_state=seed,
    )
    return make_pipeline(pca, search).fit(x, y)
