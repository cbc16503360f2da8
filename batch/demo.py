"""The shipped demo: `batch run manifests/demo.csv` works offline on a fresh machine.

Its images are not in the repository: they are written on first use from
sample photos that installed packages ship (scikit-learn's two sample photos,
matplotlib's portrait of Grace Hopper for a face), so nothing is downloaded
and no dataset is copied into the repo.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "demo.csv"
IMAGES_DIR = "demo-images"
NAMES = ("china.jpg", "flower.jpg", "grace_hopper.jpg")


def sources() -> dict[str, Path]:
    """Demo image name -> the installed file it is copied from (found without importing the packages: slow)."""
    sklearn_images = _package_dir("sklearn") / "datasets" / "images"
    return {
        "china.jpg": sklearn_images / "china.jpg",
        "flower.jpg": sklearn_images / "flower.jpg",
        "grace_hopper.jpg": _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    }


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the demo images come from the {name} package, which is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def is_demo(manifest: Path) -> bool:
    """Whether ``manifest`` is the shipped demo (however it was spelled on the command line)."""
    return DEMO_MANIFEST.is_file() and Path(manifest).resolve() == DEMO_MANIFEST


def ensure_demo_images(folder: Path) -> list[Path]:
    """Write the demo images missing from ``folder/demo-images``; returns the ones written."""
    target = Path(folder) / IMAGES_DIR
    written = []
    if all((target / name).is_file() for name in NAMES):
        return written
    for name, source in sources().items():
        path = target / name
        if path.is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
        written.append(path)
    return written
