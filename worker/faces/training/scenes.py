"""Test photos with a small face: a portrait shrunk so its face is 60-120 px, pasted into a 1920x1080 scene."""

from __future__ import annotations

import io
import random
from functools import cache
from pathlib import Path

from PIL import Image

from worker.classifier import Box

SCENE = (1920, 1080)
# Width of the face in a 250x250 LFW deep-funneled portrait (median detector box).
LFW_FACE_PX = 105


@cache
def backgrounds() -> tuple[Image.Image, ...]:
    """Two face-free 1920x1080 backgrounds from scikit-learn's sample photos."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return tuple(Image.open(folder / n).convert("RGB").resize(SCENE, Image.Resampling.BICUBIC)
                 for n in ("china.jpg", "flower.jpg"))


def pasted(portrait: Image.Image, face_px: int, rng: random.Random, quality: int = 90) -> tuple[bytes, Box]:
    """JPEG bytes of a scene with ``portrait`` scaled so its face is about ``face_px`` wide, and where
    the portrait went (its box in the scene)."""
    side = round(portrait.width * face_px / LFW_FACE_PX)
    small = portrait.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    scene = rng.choice(backgrounds()).copy()
    left, top = rng.randrange(SCENE[0] - side), rng.randrange(SCENE[1] - side)
    scene.paste(small, (left, top))
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), Box(left, top, left + side, top + side)
