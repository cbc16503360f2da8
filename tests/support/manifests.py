"""Manifests for `batch run`, written as a user would: one writer for every test, and a batch of tiny JPEGs."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tests.support.images import jpeg

COLUMNS = ("id", "path", "op", "rotation", "output")


def write_manifest(path: Path, rows: Sequence[dict | None], columns: Sequence[str] = COLUMNS, *,
                   newline: str = "\n", bom: bool = False) -> Path:
    """A CSV of ``rows`` (dicts; a missing column is empty, None is a blank line) under a ``columns`` header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator=newline)
    writer.writeheader()
    for row in rows:
        if row is None:
            buf.write(newline)
        else:
            writer.writerow({c: row.get(c, "") for c in columns})
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    return path


def make_batch(folder: Path, n: int, *, classify_every: int = 0, size: int = 48) -> Path:
    """``n`` distinct tiny JPEGs under ``folder/img`` and a manifest over them (ids r0…): rotate by 90, 180, 270
    in turn, and classify every ``classify_every``-th row if given."""
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"img/{i:05d}.jpg"
        (folder / name).write_bytes(jpeg(size, size, seed=i))
        if classify_every and i % classify_every == 0:
            rows.append({"id": f"r{i}", "path": name, "op": "classify"})
        else:
            rows.append({"id": f"r{i}", "path": name, "op": "rotate", "rotation": (i % 3 + 1) * 90})
    return write_manifest(folder / "manifest.csv", rows, COLUMNS[:4])
