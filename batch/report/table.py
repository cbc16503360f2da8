"""A results folder as the report sees it: the rows (typed, one per id) and run.json.

Reading the table is ``batch.results.TableReader``'s job, with the policy
resume uses too (what is dropped and why); this module only turns its rows
into a typed frame and keeps the newest row per id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from batch.errors import BatchError
from batch.results import COLUMNS, RUN_NAME, TABLE_NAMES, TableReader, read_run_info

NUMERIC = ("rotation", "turned", "width", "height", "confidence", "attempts", "latency_ms")


class ReportError(BatchError):
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


def load(folder: str | Path) -> Results:
    """Read ``folder``'s results table(s) and run.json; raise ReportError or ResultsError saying why not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    reader = TableReader(folder)
    if not reader.files:
        raise ReportError(f"no results table in {folder}: expected one of {', '.join(TABLE_NAMES)}")
    run, notes = read_run_info(folder)
    rows = pd.DataFrame.from_records(list(reader.rows()), columns=COLUMNS)
    notes += reader.notes
    before = len(rows)
    # A resumed run appends a new row for an id it retried: the newest one counts.
    rows = rows.drop_duplicates(subset="id", keep="last").reset_index(drop=True)
    if len(rows) < before and len(reader.files) == 1:
        notes.append(f"{reader.files[0].name}: {before - len(rows)} earlier row(s) for ids retried later "
                     "(a resumed run): the newest row per id counts")
    newest = reader.files[-1]
    stale = bool(run) and newest.stat().st_mtime_ns > (folder / RUN_NAME).stat().st_mtime_ns
    if stale:
        notes.append("run.json is older than the results table: it describes an earlier run, "
                     "and a resumed run is still going or was killed")
    return Results(folder, newest, _typed(rows, reader.missing), run, notes, reader.missing, stale)


def _typed(frame: pd.DataFrame, missing: list[str]) -> pd.DataFrame:
    for col in NUMERIC:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
        if col in missing:
            frame[col] = pd.NA
    frame["finished_at"] = pd.to_datetime(frame["finished_at"], utc=True, errors="coerce", format="ISO8601")
    return frame


def locate_input(results: Results, path: str) -> Path:
    """Where an input ``path`` of the table is: relative paths are relative to the manifest's folder."""
    p = Path(path)
    if p.is_absolute():
        return p
    manifest = results.run.get("manifest")
    if isinstance(manifest, str) and manifest:
        return Path(manifest).parent / p
    return p


def locate_output(results: Results, output: str) -> Path:
    """Where a rotated ``output`` of the table is: relative paths are relative to the results folder."""
    p = Path(output)
    if p.is_absolute():
        return p
    return results.folder / p
