"""Read a results folder tolerantly: the table (CSV journal or Parquet) and run.json.

A run that is still going (or was killed) leaves a CSV journal whose last line
may be half written, and a resumed run may have appended a newer row for an id
that failed before. Reading keeps what is complete, the newest row per id, and
says what it dropped instead of failing.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = (
    "id", "path", "op", "rotation", "status", "output", "width", "height", "label",
    "confidence", "faces", "error", "attempts", "latency_ms", "worker", "finished_at",
)
# Without these a report means nothing; the others only feed one section each.
REQUIRED = ("id", "path", "op", "status")
NUMERIC = ("rotation", "width", "height", "confidence", "attempts", "latency_ms")
TABLE_NAMES = ("results.csv", "results.parquet", "results.journal.csv")


class ReportError(Exception):
    """The results folder cannot be reported on; the message says why."""


@dataclass
class Results:
    """One results folder, read: the rows (one per id) and what run.json says."""

    folder: Path
    table_path: Path
    rows: pd.DataFrame
    run: dict
    warnings: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    # run.json is written when a run ends; a table newer than it belongs to a later (resumed) run still going.
    run_stale: bool = False


def find_tables(folder: Path) -> list[Path]:
    """The results files in ``folder``, oldest first.

    ``batch run`` keeps a CSV journal while it runs (``results.csv`` itself, or
    ``results.journal.csv`` beside ``results.parquet``) and rewrites the table
    when it ends; after a resume, rows in a newer file supersede older ones.
    """
    found = [folder / name for name in TABLE_NAMES if (folder / name).is_file()]
    if not found:
        raise ReportError(f"no results table in {folder}: expected one of {', '.join(TABLE_NAMES)}")
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def read_run_json(folder: Path) -> tuple[dict, list[str]]:
    """run.json as a dict ({} with a warning when absent or unreadable: the table alone still reports)."""
    path = folder / "run.json"
    if not path.is_file():
        return {}, [f"{path.name} not found: run details (command, start, workers) unknown"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        # run.json is rewritten while a run goes on; a torn write must not stop the report.
        return {}, [f"{path.name} unreadable ({err}): run details unknown"]
    if not isinstance(data, dict):
        return {}, [f"{path.name} is not a JSON object: run details unknown"]
    return data, []


def _read_csv(path: Path, notes: list[str]) -> pd.DataFrame:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data and not data.endswith(b"\n"):
        # A journal being appended to: the last line is not finished yet.
        cut = data.rfind(b"\n") + 1
        notes.append(f"{path.name}: ignored an unfinished last line ({len(data) - cut} bytes)")
        data = data[:cut]
    if not data.strip():
        raise ReportError(f"{path} is empty: no header, no rows yet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            # The C parser (4x the python one: a million rows in about 2 s); bad lines come back as warnings.
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[],
                                on_bad_lines="warn")
        except pd.errors.ParserError as err:
            raise ReportError(f"{path} is not a readable CSV table: {err}") from err
    bad = sum(str(w.message).count("Skipping line") for w in caught
              if issubclass(w.category, pd.errors.ParserWarning))
    # A short line leaves NaN in its missing fields: treat them as empty like the rest.
    frame = frame.fillna("")
    if bad:
        notes.append(f"{path.name}: skipped {bad} malformed line(s) with the wrong number of fields")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ReportError(f"{path} is not a readable Parquet file (a run still writing it?): {err}") from err
    frame = table.to_pandas()
    for col in frame.columns:
        if col not in NUMERIC and col != "finished_at":
            frame[col] = frame[col].map(lambda v: "" if v is None or v != v else str(v))
    return frame


def _normalise(frame: pd.DataFrame, name: str, notes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    missing_required = [c for c in REQUIRED if c not in frame.columns]
    if missing_required:
        raise ReportError(
            f"{name} has no column {', '.join(repr(c) for c in missing_required)} "
            f"(it has: {', '.join(map(str, frame.columns)) or 'none'}); "
            "it is not a results table of batch run, or one too old to report on"
        )
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        notes.append(
            f"{name} has no column {', '.join(repr(c) for c in missing)} "
            "(written by an older batch run?): the figures that need it are left out"
        )
    frame = frame.copy()
    for col in missing:
        frame[col] = pd.NA if col in NUMERIC else ""
    for col in NUMERIC:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["finished_at"] = pd.to_datetime(frame["finished_at"], utc=True, errors="coerce", format="ISO8601")
    for col in ("id", "path", "op", "status", "output", "label", "faces", "error", "worker"):
        frame[col] = frame[col].astype(str)
    return frame, missing


def read_results(folder: str | Path) -> Results:
    """Read ``folder``'s results table(s) and run.json; raise ReportError with a specific message if unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    tables = find_tables(folder)
    run, notes = read_run_json(folder)
    frames, missing = [], []
    for path in tables:
        frame = _read_csv(path, notes) if path.suffix == ".csv" else _read_parquet(path)
        frame, absent = _normalise(frame, path.name, notes)
        frames.append(frame)
        missing += [c for c in absent if c not in missing]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    before = len(rows)
    # A resumed run appends a new row for an id it retried: the newest one counts.
    rows = rows.drop_duplicates(subset="id", keep="last").reset_index(drop=True)
    if len(rows) < before and len(tables) == 1:
        notes.append(f"{tables[0].name}: {before - len(rows)} earlier row(s) for ids retried later "
                        "(a resumed run): the newest row per id counts")
    run_json = folder / "run.json"
    stale = bool(run) and tables[-1].stat().st_mtime_ns > run_json.stat().st_mtime_ns
    if stale:
        notes.append("run.json is older than the results table: it describes an earlier run, "
                     "and a resumed run is still going or was killed")
    return Results(folder, tables[-1], rows, run, notes, missing, stale)


def resolve_input(results: Results, path: str) -> Path:
    """Where an input ``path`` of the table is: relative paths are relative to the manifest's folder."""
    p = Path(path)
    if p.is_absolute():
        return p
    manifest = results.run.get("manifest")
    if isinstance(manifest, str) and manifest:
        return Path(manifest).parent / p
    return p


def resolve_output(results: Results, output: str) -> Path:
    """Where a rotated ``output`` of the table is: relative paths are relative to the results folder."""
    p = Path(output)
    if p.is_absolute():
        return p
    return results.folder / p
