"""Results folders: reading what `batch run` wrote, and writing synthetic ones in its exact format for report
tests of edge cases (a half-written journal, an older table, 10,000 rows) that a real run cannot produce on demand."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from PIL import Image

from batch.results import COLUMNS
from tests.support.images import jpeg

LABELS = ("George W Bush", "Colin Powell", "unknown", "no_face")


def results(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/results.csv`` (empty when it does not exist yet)."""
    path = out / "results.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in rows}


def files_under(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stray_temporaries(folder: Path) -> list[str]:
    """Files that look like an interrupted atomic write (anything not an image, results or run record)."""
    keep = {".jpg", ".jpeg", ".png", ".csv", ".json", ".parquet", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and (p.suffix.lower() not in keep or ".tmp" in p.name or p.name.startswith("."))]


# --- synthetic results folders ----------------------------------------------------------------------------


def make_images(folder: Path, n: int = 4) -> list[Path]:
    """``n`` small distinct JPEGs (landscape, so a rotation shows)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{i}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_bytes(jpeg(120 + 10 * i, 80, seed=i))
    return paths


def synthetic_rows(root: Path, out: Path, n: int, seed: int = 1) -> list[dict]:
    """``n`` result rows over real files under ``root``: rotate ok/error and classify rows, two workers."""
    images = make_images(root / "imgs")
    (out / "rotated" / "imgs").mkdir(parents=True, exist_ok=True)
    for img in images:
        Image.open(img).rotate(90, expand=True).save(out / "rotated" / "imgs" / img.name)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rel = f"imgs/{images[i % len(images)].name}"
        base = {c: "" for c in COLUMNS}
        base.update(id=str(i + 1), path=rel, finished_at=f"2024-05-01T10:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                    attempts="1", worker=f"127.0.0.1:5{i % 2}/4{i % 2}")
        if i % 9 == 4:
            missing = f"imgs/missing-{i}.jpg"
            base.update(path=missing, op="rotate", rotation="90", status="error", worker="", attempts="0",
                        error=f"file not found: {root / missing}", reason="INPUT_NOT_FOUND")
        elif i % 9 == 7:
            base.update(op="classify", status="error", attempts="3", latency_ms=f"{rng.uniform(900, 1000):.3f}",
                        error="DEADLINE_EXCEEDED: no answer within 1.0 s", reason="TIMED_OUT")
        elif i % 2:
            base.update(op="rotate", rotation="90", status="ok", output=f"rotated/{rel}",
                        width="80", height=str(120 + 10 * (i % len(images))),
                        latency_ms=f"{rng.uniform(5, 60):.3f}")
        else:
            label = rng.choice(LABELS)
            faces = [] if label == "no_face" else [{"box": [10, 10, 40, 40], "label": label, "score": 0.8}]
            base.update(op="classify", status="ok", label=label, confidence=f"{rng.random():.4f}",
                        faces=json.dumps(faces), width="120", height="80",
                        latency_ms=f"{rng.uniform(20, 300):.3f}", attempts=str(1 + (i % 5 == 0)))
        rows.append(base)
    return rows


def write_results(out: Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS, run: dict | None = None,
                  tail: str = "") -> Path:
    """Write ``results.csv`` (plus ``tail``, e.g. half a line) and ``run.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.write(tail)
    if run is not None:
        (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return out


def synthetic_run(root: Path, n: int, complete: bool = True, **kwargs) -> Path:
    """A whole results folder of ``n`` synthetic rows under ``root/out``."""
    out = root / "out"
    rows = synthetic_rows(root, out, n)
    # As batch run writes it (batch/session.py), when the run ends.
    run = {"command": ["batch", "run", "manifest.csv"], "manifest": str(root / "manifest.csv"),
           "workers": {"targets": ["127.0.0.1:50", "127.0.0.1:51"], "embedded": False},
           "versions": {"imagebatch": "0.1.0", "python": "3.11", "face_models": ["dlib-resnet"]},
           "started_at": "2024-05-01T09:59:59+00:00", "counts": {"rows": n}, "interrupted": not complete}
    if complete:
        run["finished_at"] = rows[-1]["finished_at"]
    return write_results(out, rows, run=run, **kwargs)
