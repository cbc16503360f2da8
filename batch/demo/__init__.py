"""The shipped demo: `batch run manifests/demo.csv` works offline, in a checkout or installed from a wheel.

The manifest ships in this package (``demo.csv``; ``manifests/demo.csv`` in
the repository is the same file). Its images are written beside it on first
use: scikit-learn's two sample photos (a dependency anyway) and the portrait
of Grace Hopper shipped here for a face (a U.S. Navy photograph, public
domain), so nothing is downloaded.

A manifest is the demo when its bytes are the shipped manifest's, wherever it
lies; ``batch run manifests/demo.csv`` where no such file exists writes the
demo there first (``batch demo DIR`` writes it anywhere).
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from pathlib import Path

MANIFEST_NAME = "demo.csv"
DEFAULT_MANIFEST = Path("manifests") / MANIFEST_NAME  # the spelling the README uses
IMAGES_DIR = "demo-images"
NAMES = ("china.jpg", "flower.jpg", "grace_hopper.jpg")


def _shipped(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def sources() -> dict[str, bytes]:
    """Demo image name -> its bytes (scikit-learn's photos found without importing it: that is slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("two demo images come from the scikit-learn package, which is not installed")
    sklearn_images = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
    return {
        "china.jpg": (sklearn_images / "china.jpg").read_bytes(),
        "flower.jpg": (sklearn_images / "flower.jpg").read_bytes(),
        "grace_hopper.jpg": _shipped("grace_hopper.jpg"),
    }


def is_demo(manifest: Path) -> bool:
    """Whether ``manifest`` is the shipped demo manifest (by content, wherever it is)."""
    try:
        return Path(manifest).read_bytes() == _shipped(MANIFEST_NAME)
    except OSError:
        return False


def is_missing_default(manifest: Path) -> bool:
    """Whether ``manifest`` is the README's ``manifests/demo.csv`` and does not exist here yet."""
    return Path(os.path.abspath(manifest)) == Path.cwd() / DEFAULT_MANIFEST and not Path(manifest).exists()


def ensure_demo_images(folder: Path) -> list[Path]:
    """Write the demo images missing from ``folder/demo-images``; returns the ones written."""
    target = Path(folder) / IMAGES_DIR
    if all((target / name).is_file() for name in NAMES):
        return []
    target.mkdir(parents=True, exist_ok=True)
    return [path for name, data in sources().items() if _write_new(path := target / name, data)]


def write_demo(folder: Path) -> Path:
    """Write the demo manifest and its images into ``folder`` (what is there already is kept); returns the
    manifest's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST_NAME
    _write_new(manifest, _shipped(MANIFEST_NAME))
    ensure_demo_images(folder)
    return manifest


def _write_new(path: Path, data: bytes) -> bool:
    """Write ``path`` atomically unless it exists; whether it was written."""
    if path.is_file():
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True
