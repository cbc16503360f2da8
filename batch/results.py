"""The results table: what a row's result is, the append-only journal, resume, the finished file.

During a run finished rows are appended to a CSV journal in groups, each
flushed once its outputs are durable (batch/durable.py), so a crash or
Ctrl-C loses at most the last ~0.1 s of rows, which then run again. With ``--results-format csv`` the
journal *is* ``results.csv`` (``tail -f`` works); with ``parquet`` it is
``results.journal.csv``. When the run ends (or is interrupted) the table is
rewritten atomically with exactly one row per manifest row, in manifest order.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batch.errors import BatchError

COLUMNS = (
    "id", "path", "op", "rotation", "status", "output", "width", "height", "label", "confidence",
    "faces", "error", "attempts", "latency_ms", "worker", "finished_at",
)
OK, ERROR = "ok", "error"
CSV_NAME, PARQUET_NAME, JOURNAL_NAME = "results.csv", "results.parquet", "results.journal.csv"


class ResultsError(BatchError):
    """An existing results file that cannot be resumed from (usage error: exit code 2)."""


@dataclass
class Outcome:
    """What happened to one row, as the runner saw it; ``result_row`` turns it into a table row."""

    status: str
    error: str = ""
    output: str = ""
    width: int | None = None
    height: int | None = None
    label: str = ""
    confidence: float | None = None
    faces: list[dict] = field(default_factory=list)
    attempts: int = 0
    latency_ms: float | None = None
    worker: str = ""
    model: str = ""  # "name version" of the face model (classify); for run.json, not a results column
    gave_up: bool = False  # retries exhausted on a transient error (no worker answered in time)


def result_row(row, outcome: Outcome) -> dict[str, str]:
    """The one place a manifest row and its outcome become a results row (all values as text)."""
    return {
        "id": row.id,
        "path": row.path,
        "op": row.op,
        "rotation": row.rotation if row.op == "rotate" else "",
        "status": outcome.status,
        "output": outcome.output,
        "width": _text(outcome.width),
        "height": _text(outcome.height),
        "label": outcome.label,
        "confidence": f"{outcome.confidence:.4f}" if outcome.confidence is not None else "",
        "faces": json.dumps(outcome.faces, separators=(",", ":")) if row.op == "classify" and outcome.status == OK
        else "",
        "error": outcome.error,
        "attempts": str(outcome.attempts),
        "latency_ms": f"{outcome.latency_ms:.1f}" if outcome.latency_ms is not None else "",
        "worker": outcome.worker,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
    }


def _text(value) -> str:
    return "" if value is None else str(value)


def already_done(row, previous: dict[str, str] | None) -> bool:
    """Resume: an earlier ``ok`` result for the same id, path, op and rotation whose output still exists."""
    if not previous or previous["status"] != OK or row.error:
        return False
    if (previous["path"], previous["op"]) != (row.path, row.op):
        return False
    if row.op == "classify":
        return True
    return (
        previous["rotation"] == row.rotation
        and previous["output"] == str(row.output_path)
        and os.path.isfile(previous["output"])
    )


class Journal:
    """Append-only CSV of results, flushed after each group of finished rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new:
            self._writer.writeheader()
        elif not _ends_with_newline(self.path):
            self._file.write("\r\n")  # a crash cut the last line short; start a fresh one
        self._file.flush()

    def append_many(self, results: list[dict[str, str]]) -> None:
        """Append a group of rows with one flush (the group's outputs are already durable)."""
        self._writer.writerows(results)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def journal_path(out_dir: Path, fmt: str) -> Path:
    return out_dir / (CSV_NAME if fmt == "csv" else JOURNAL_NAME)


def table_path(out_dir: Path, fmt: str) -> Path:
    return out_dir / (CSV_NAME if fmt == "csv" else PARQUET_NAME)


def result_files(out_dir: Path) -> list[Path]:
    """Existing results of earlier runs, oldest first (a later file's row for an id wins)."""
    found = [out_dir / n for n in (PARQUET_NAME, CSV_NAME, JOURNAL_NAME) if (out_dir / n).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def read_results(path: Path) -> Iterator[dict[str, str]]:
    """Stream the rows of an earlier results file (CSV or Parquet) as text dicts."""
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        missing = [c for c in ("id", "path", "op", "status", "output") if c not in reader.fieldnames]
        if missing:
            raise ResultsError(
                f"{path} is not a batch results table (no {', '.join(missing)} column); "
                "use another --out or --restart"
            )
        try:
            for r in reader:
                if r.get("status") in (OK, ERROR):  # a line cut short by a crash has no valid status
                    yield {c: r.get(c) or "" for c in COLUMNS}
        except csv.Error:
            return  # the tail a crash left half-written: those rows simply run again


def _read_parquet(path: Path) -> Iterator[dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ResultsError(f"{path} cannot be read as Parquet ({e}); use another --out or --restart") from None
    for batch in parquet.iter_batches(batch_size=1000):
        for r in batch.to_pylist():
            yield {c: _text(r.get(c)) for c in COLUMNS}


def write_table(rows: Iterable[dict[str, str]], path: Path) -> int:
    """Write the finished table atomically (temp file + rename); returns the row count."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    if path.suffix == ".parquet":
        count = _write_parquet(rows, tmp)
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow(r)
                count += 1
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def parquet_schema():
    import pyarrow as pa

    types = {"width": pa.int32(), "height": pa.int32(), "confidence": pa.float64(), "attempts": pa.int32(),
             "latency_ms": pa.float64(), "finished_at": pa.timestamp("ms", tz="UTC")}
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def _write_parquet(rows: Iterable[dict[str, str]], tmp: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    count = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        batch: list[dict] = []
        for r in rows:
            batch.append(_typed(r))
            count += 1
            if len(batch) == 10_000:  # row groups of bounded size keep memory flat
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return count


def _typed(r: dict[str, str]) -> dict:
    def num(key, kind):
        return kind(r[key]) if r.get(key) else None

    typed = dict(r)
    typed.update(width=num("width", int), height=num("height", int), attempts=num("attempts", int),
                 confidence=num("confidence", float), latency_ms=num("latency_ms", float),
                 finished_at=datetime.datetime.fromisoformat(r["finished_at"]) if r.get("finished_at") else None)
    return typed


def faces_json(faces) -> list[dict]:
    """ClassifyResponse faces as plain dicts for the ``faces`` column."""
    return [
        {"box": [f.box.left, f.box.top, f.box.right, f.box.bottom], "label": f.label, "score": round(f.score, 4)}
        for f in faces
    ]


def write_run_json(path: Path, info: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
