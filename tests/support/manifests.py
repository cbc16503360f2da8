"""Manifests for `batch run`, written as a user would: one writer for every test, and a batch of tiny JPEGs."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from batch.index import RunIndex
from batch.manifest import read_rows
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


@contextmanager
def indexed(manifest: Path, out: Path) -> Iterator[RunIndex]:
    """A run index (beside ``manifest``) holding its rows as `batch run --out OUT` reads them; closed after, also
    when reading the rows fails."""
    index = RunIndex(manifest.parent / "index.sqlite")
    try:
        index.add_rows(read_rows(manifest, out), manifest)
        yield index
    finally:
        index.close()


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


def make_entangled(folder: Path, n: int) -> Path:
    """A manifest whose rows depend on each other, for running it in shares (batch/shard.py), with ``n`` plain
    rows over distinct tiny JPEGs among them: one input rotated three ways (default names ``.r90`` …), exact
    duplicates of an ok row and of a failing one, two rows writing one output, a row writing another's default
    output, and rows wrong in themselves."""
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i in range(n):
        name = f"img/{i:05d}.jpg"
        (folder / name).write_bytes(jpeg(48, 40, seed=i))
        rows.append({"id": f"r{i}", "path": name, "op": "rotate", "rotation": (i % 3 + 1) * 90})
    for name, seed in (("many.jpg", 1001), ("dup.jpg", 1002), ("a.jpg", 1003), ("b.jpg", 1004)):
        (folder / name).write_bytes(jpeg(56, 32, seed=seed))
    special = [
        *({"id": f"many{d}", "path": "many.jpg", "op": "rotate", "rotation": d} for d in (90, 180, 270)),
        *({"id": f"dup{k}", "path": "dup.jpg", "op": "rotate", "rotation": 90} for k in range(3)),
        *({"id": f"gone{k}", "path": "missing.jpg", "op": "rotate", "rotation": 180} for k in range(2)),
        {"id": "clash-a", "path": "a.jpg", "op": "rotate", "rotation": 90, "output": "clash.jpg"},
        {"id": "clash-b", "path": "b.jpg", "op": "rotate", "rotation": 90, "output": "clash.jpg"},
        {"id": "over-default", "path": "b.jpg", "op": "rotate", "rotation": 180, "output": "rotated/img/00000.jpg"},
        {"id": "bad-rotation", "path": "a.jpg", "op": "rotate", "rotation": 45},
        {"id": "bad-op", "path": "a.jpg", "op": "sharpen"},
        {"id": "no-path", "path": "", "op": "rotate", "rotation": 90},
    ]
    # Spread among the plain rows, so that manifest order interleaves them.
    step = max(1, n // len(special))
    for k, row in enumerate(special):
        rows.insert(min(len(rows), k * (step + 1)), row)
    return write_manifest(folder / "manifest.csv", rows)
