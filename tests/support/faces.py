"""Shared by the face tests: where LFW is, and skipping clearly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sklearn.datasets

BUSH, POWELL = "George W Bush", "Colin Powell"
MAX_PIXELS = 150_000_000
# scikit-learn's sample photos: a landscape and a flower, no faces.
SAMPLES = Path(sklearn.datasets.__file__).parent / "images"


def lfw_root() -> Path:
    """$IMAGEBATCH_LFW or ../shared/data/lfw beside the checkout (its lfw-deepfunneled folder)."""
    env = os.environ.get("IMAGEBATCH_LFW")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/lfw"
    return root / "lfw-deepfunneled" if (root / "lfw-deepfunneled").is_dir() else root


needs_lfw = pytest.mark.skipif(
    not (lfw_root() / "George_W_Bush").is_dir(),
    reason=f"LFW photos not found at {lfw_root()} (set IMAGEBATCH_LFW to the lfw-deepfunneled folder)",
)
