"""Shared by the face tests: the LFW photos named by $IMAGEBATCH_LFW, and skipping clearly without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import sklearn.datasets

from worker.faces.training.dataset import lfw_from_env

BUSH, POWELL = "George W Bush", "Colin Powell"
MAX_PIXELS = 150_000_000
# scikit-learn's sample photos: a landscape and a flower, no faces.
SAMPLES = Path(sklearn.datasets.__file__).parent / "images"


NO_LFW = "set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled) to run this"
_LFW = lfw_from_env()
needs_lfw = pytest.mark.skipif(_LFW is None or not (_LFW / "George_W_Bush").is_dir(), reason=NO_LFW)


def lfw_root() -> Path:
    """The folder-per-person LFW folder $IMAGEBATCH_LFW names (the test skips when it is unset)."""
    if _LFW is None:
        pytest.skip(NO_LFW)
    return _LFW
