"""Folder-per-person galleries (LFW's layout) and the held-out evaluation split."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Names LFW's folder-per-person folder (lfw-deepfunneled), which this repository never holds.
LFW_ENV = "IMAGEBATCH_LFW"


def lfw_from_env() -> Path | None:
    """The folder ``$IMAGEBATCH_LFW`` names, or None when it is unset or empty."""
    value = os.environ.get(LFW_ENV)
    return Path(value) if value else None


def display_name(folder: str) -> str:
    """``George_W_Bush`` -> ``George W Bush``."""
    return " ".join(folder.replace("_", " ").split())


def gallery(root: Path) -> dict[str, list[Path]]:
    """``{display name: sorted image paths}`` for each non-empty sub-folder of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"gallery folder {root} does not exist")
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if files:
            people[display_name(folder.name)] = files
    return people


def people_folders(root: Path, names: list[str]) -> dict[str, list[Path]]:
    """The galleries of the named folders only (folder or display names), in the order given."""
    everyone = gallery(root)
    chosen = {}
    for name in names:
        key = display_name(name)
        if key not in everyone:
            raise FileNotFoundError(f"no folder for {name!r} in {root} (has: {', '.join(everyone)})")
        chosen[key] = everyone[key]
    return chosen


@dataclass(frozen=True)
class Split:
    """Which photos train (and tune) the model and which are held out for evaluation."""

    train_people: dict[str, list[Path]]
    test_people: dict[str, list[Path]]
    train_negatives: dict[str, list[Path]]
    test_negatives: dict[str, list[Path]]  # whole people never seen in training

    def summary(self, root: Path) -> dict:
        """JSON-able record of the split: file names relative to ``root``."""
        def rel(groups: dict[str, list[Path]]) -> dict[str, list[str]]:
            return {k: [str(Path(p).relative_to(root)) for p in v] for k, v in groups.items()}
        return {
            "root": str(root),
            "train_people": rel(self.train_people),
            "test_people": rel(self.test_people),
            "train_negatives": sorted(self.train_negatives),
            "test_negatives": sorted(self.test_negatives),
        }


def split(
    people: dict[str, list[Path]],
    negatives: dict[str, list[Path]],
    test_fraction: float,
    negative_test_people: int,
    seed: int,
) -> Split:
    """Stratified split: ``test_fraction`` of each known person's photos, and whole negative people.

    Deterministic for a given seed and set of files (sorted before shuffling).
    """
    rng = random.Random(seed)
    train_p, test_p = {}, {}
    for name, files in people.items():
        files = sorted(files)
        rng.shuffle(files)
        n_test = round(len(files) * test_fraction)
        test_p[name], train_p[name] = sorted(files[:n_test]), sorted(files[n_test:])
    names = sorted(negatives)
    rng.shuffle(names)
    held = set(names[:negative_test_people])
    return Split(
        train_people=train_p,
        test_people=test_p,
        train_negatives={k: v for k, v in negatives.items() if k not in held},
        test_negatives={k: v for k, v in negatives.items() if k in held},
    )
