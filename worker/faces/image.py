"""Turning any decoded Pillow image into the 8-bit RGB array the face models take."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.errors import InvalidArgument

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
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InvalidArgument(f"cannot convert a {img.mode} image to RGB: {e}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit integer or float grey to 0..255 by the range its type implies."""
    v = values.astype(np.float64)
    if v.size == 0:
        raise InvalidArgument("image has no pixels")
    top = float(np.nanmax(v)) if np.isfinite(v).any() else 0.0
    if values.dtype.kind == "f" and top <= 1.0:
        v = v * 255.0  # float images in 0..1
    elif top > 255.0:
        v = v * (255.0 / (65535.0 if top <= 65535.0 else top))
    return np.clip(np.nan_to_num(v), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
