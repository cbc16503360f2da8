"""Shared by the face tests: the LFW photos named by $IMAGEBATCH_LFW, and skipping clearly without them."""

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
    """The folder-per-person LFW folder named by $IMAGEBATCH_LFW (empty path when unset)."""
    return Path(os.environ.get("IMAGEBATCH_LFW", ""))


needs_lfw = pytest.mark.skipif(
    not os.environ.get("IMAGEBATCH_LFW") or not (lfw_root() / "George_W_Bush").is_dir(),
    reason="set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled) to run this",
)
