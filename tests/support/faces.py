"""Shared by the face tests: the LFW photos named by $IMAGEBATCH_LFW, and skipping clearly without them."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
from PIL import Image

from worker.faces import artifact
from worker.faces.training.dataset import lfw_from_env

BUSH, POWELL = "George W Bush", "Colin Powell"
# PIL transposes that turn an upright photo clockwise by 90, 180, 270 degrees, as a camera that
# writes no orientation stores it: Classify should find its faces under that counter-clockwise turn.
CLOCKWISE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
MAX_PIXELS = 150_000_000
# scikit-learn's sample photos: a landscape and a flower, no faces (located, not imported:
# importing sklearn.datasets costs about 2 s of CPU at every collection).
SAMPLES = Path(find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "images"


NO_LFW = "set IMAGEBATCH_LFW to an LFW folder (lfw-deepfunneled) to run this"
_LFW = lfw_from_env()
needs_lfw = pytest.mark.skipif(_LFW is None or not (_LFW / "George_W_Bush").is_dir(), reason=NO_LFW)


def lfw_root() -> Path:
    """The folder-per-person LFW folder $IMAGEBATCH_LFW names (the test skips when it is unset)."""
    if _LFW is None:
        pytest.skip(NO_LFW)
    return _LFW


def held_out_photo(person: str, index: int) -> Path:
    """A photo of ``person`` that the shipped model held out of its training."""
    return lfw_root() / artifact.load().meta["split"]["test_people"][person][index]
