"""Open-set classification of face embeddings, stored as plain arrays and applied with numpy.

A face is named when two things agree: a softmax (multinomial logistic
regression) over the known people plus an "other" class learnt from the
negatives picks a known person, and the face is close enough to that person's
training faces. "Close enough" is a calibrated probability that the nearest
training face is the same person, ``q = sigmoid(a * distance + b)``, fitted
on cross-validated distances from the training data only: known people's
held-out photos against negative people held out whole. The face is named
when ``q >= 0.5``; otherwise, or when "other" wins, it is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN_INDEX = -1
# Without negatives to calibrate on: dlib's own same-person distance (0.6).
DEFAULT_SLOPE, DEFAULT_THRESHOLD = -20.0, 0.6


@dataclass(frozen=True)
class OpenSetModel:
    """Everything needed to predict: no estimator objects, only arrays."""

    labels: list[str]  # the known people, index = class number
    coef: np.ndarray  # (C, D) softmax weights; C = len(labels) (+1 for "other" when trained with negatives)
    intercept: np.ndarray  # (C,)
    gallery: np.ndarray  # (N, D) training embeddings of the known people
    gallery_labels: np.ndarray  # (N,) class number of each gallery row
    slope: float  # a in sigmoid(a * distance + b); negative
    offset: float  # b

    @property
    def threshold(self) -> float:
        """Nearest-face distance at which q = 0.5."""
        return -self.offset / self.slope

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The model as named arrays for an ``.npz``."""
        return {
            f"{prefix}coef": self.coef.astype(np.float64),
            f"{prefix}intercept": self.intercept.astype(np.float64),
            f"{prefix}gallery": self.gallery.astype(np.float32),
            f"{prefix}gallery_labels": self.gallery_labels.astype(np.int32),
            f"{prefix}calibration": np.array([self.slope, self.offset], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, labels: list[str], arrays: dict[str, np.ndarray], prefix: str) -> OpenSetModel:
        """Rebuild from ``arrays()``; raises ValueError if shapes disagree."""
        coef, intercept = arrays[f"{prefix}coef"], arrays[f"{prefix}intercept"]
        gallery, gallery_labels = arrays[f"{prefix}gallery"], arrays[f"{prefix}gallery_labels"]
        slope, offset = (float(v) for v in arrays[f"{prefix}calibration"])
        k = len(labels)
        if coef.ndim != 2 or coef.shape[0] not in (k, k + 1) or intercept.shape != (coef.shape[0],):
            raise ValueError(f"{prefix} classifier has shape {coef.shape} for {k} labels")
        if gallery.ndim != 2 or gallery.shape[1] != coef.shape[1] or gallery_labels.shape != (len(gallery),):
            raise ValueError(f"{prefix} gallery has shape {gallery.shape}, classifier {coef.shape}")
        if len(gallery_labels) and (gallery_labels.min() < 0 or gallery_labels.max() >= k):
            raise ValueError(f"{prefix} gallery labels outside 0..{k - 1}")
        if not slope < 0:
            raise ValueError(f"{prefix} calibration slope must be negative, got {slope}")
        return cls(labels, coef, intercept, gallery, gallery_labels, slope, offset)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, C) softmax probabilities over known people (+ other)."""
        z = x.astype(np.float64) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def nearest(self, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """Distance from each row of x to the closest gallery face of class ``cls[i]``."""
        d = np.linalg.norm(x[:, None, :].astype(np.float32) - self.gallery[None, :, :], axis=2)
        d = np.where(self.gallery_labels[None, :] == cls[:, None], d, np.inf)
        return d.min(axis=1)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class numbers (``UNKNOWN_INDEX`` for unknown) and scores 0..1 for (n, D) embeddings.

        A named face scores q (>= 0.5), the calibrated probability that its
        nearest training face is the same person; an unknown one scores
        1 - q, or the "other" class's probability when that is higher.
        """
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        p = self.probabilities(x)
        best = p.argmax(axis=1)
        k = len(self.labels)
        known_best = p[:, :k].argmax(axis=1)
        q = _sigmoid(self.slope * self.nearest(x, known_best) + self.offset)
        named = (best < k) & (q >= 0.5)
        other = p[:, k] if p.shape[1] > k else np.zeros(len(x))
        return np.where(named, known_best, UNKNOWN_INDEX), np.where(named, q, np.maximum(1.0 - q, other))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn) as (coef, intercept) in softmax form."""
    if n_classes == 1:
        return np.zeros((1, x.shape[1])), np.zeros(1)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=5000).fit(x, y)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([-z/2, z/2])
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept


def fit(
    x: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    negatives: np.ndarray | None = None,
    slope_offset: tuple[float, float] | None = None,
) -> OpenSetModel:
    """Fit on known embeddings ``x`` with class numbers ``y`` and optional negative embeddings.

    ``slope_offset`` is the distance calibration (see ``calibrate``); without
    it dlib's 0.6 rule is used.
    """
    k = len(labels)
    xs, ys = [x], [y]
    if negatives is not None and len(negatives):
        xs.append(negatives)
        ys.append(np.full(len(negatives), k))
    n_classes = k + (len(xs) > 1)
    coef, intercept = fit_softmax(np.vstack(xs), np.concatenate(ys), n_classes)
    slope, offset = slope_offset or (DEFAULT_SLOPE, -DEFAULT_SLOPE * DEFAULT_THRESHOLD)
    return OpenSetModel(list(labels), coef, intercept, x.astype(np.float32), y.astype(np.int32), slope, offset)


def calibrate(same: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Platt scaling of nearest-face distance: (slope, offset) with P(same person) = sigmoid(a d + b).

    Classes are weighted equally, so q = 0.5 falls where both kinds of error
    are balanced.
    """
    from sklearn.linear_model import LogisticRegression

    d = np.concatenate([same, other])[:, None]
    t = np.concatenate([np.ones(len(same)), np.zeros(len(other))])
    lr = LogisticRegression(C=100.0, class_weight="balanced").fit(d, t)
    slope, offset = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not slope < 0:
        raise ValueError("distance calibration failed: known faces are not closer than negatives")
    return slope, offset


def cross_validated_distances(
    x: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    negatives: list[np.ndarray],
    seed: int,
    folds: int = 5,
    group: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distances as unseen data would give them, from the training data only.

    Each fold holds out a share of every known person's photos and one whole
    negative person (people are what the model will meet unseen). Returns
    (same, other, y_true, y_pred): nearest same-person distances of held-out
    known photos, nearest known-person distances of held-out negatives, and
    the held-out known photos' classes as truth and as predicted. Rows come
    in runs of ``group`` copies of one photo that must share a fold.
    """
    rng = np.random.default_rng(seed)
    folds = max(2, min(folds, len(negatives) or folds))
    fold_of = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        photos = rng.permutation(np.flatnonzero(y == c)[::group])
        for copy in range(group):
            fold_of[photos + copy] = np.arange(len(photos)) % folds
    same, other, truth, guess = [], [], [], []
    for f in range(folds):
        held_neg = [n for i, n in enumerate(negatives) if i % folds == f]
        kept_neg = [n for i, n in enumerate(negatives) if i % folds != f]
        train = fold_of != f
        model = fit(x[train], y[train], labels, np.vstack(kept_neg) if kept_neg else None)
        test = ~train
        same.append(model.nearest(x[test], y[test]))
        truth.append(y[test])
        guess.append(model.probabilities(x[test])[:, : len(labels)].argmax(axis=1))
        for n in held_neg:
            p = model.probabilities(n)[:, : len(labels)].argmax(axis=1)
            other.append(model.nearest(n, p))
    other_d = np.concatenate(other) if other else np.zeros(0)
    return np.concatenate(same), other_d, np.concatenate(truth), np.concatenate(guess)
