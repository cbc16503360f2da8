"""Results folders as the report sees them: the rows (typed, one per id) and each folder's run.json legs.

Reading a table is ``batch.results.TableReader``'s job, with the policy
resume uses too (what is dropped and why); this module only turns its rows
into a typed frame and keeps the newest row per id. Several folders (the
shards of one manifest) read as one table, each row remembering its folder
(the ``part`` column) so that its relative paths resolve where they belong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from batch.errors import BatchError
from batch.results import RUN_NAME, TABLE_NAMES, TableReader, read_run_info, run_legs, typed_frame
from batch.store import Uri, credentials_problem, is_uri, parse

PART = "part"  # which folder of the report a row is from: its index in Results.parts


class ReportError(BatchError):
    """The results folder cannot be reported on; the message says why."""


@dataclass
class Part:
    """One results folder: its newest table file and what its run.json says."""

    folder: Path  # where its files are read: the folder, or a scratch copy of a store's (``uri``)
    table_path: Path
    run: dict  # run.json as read: its top level is the newest leg
    legs: list[dict]
    rows: int = 0  # in the table, one per id
    # run.json is written when a leg ends; a table newer than it belongs to a later leg still going (or killed).
    run_stale: bool = False
    uri: Uri | None = None  # a results folder in an object store (batch run --out s3://…)

    @property
    def name(self) -> str:
        """The folder as the user named it."""
        return self.uri or str(self.folder)


@dataclass
class Results:
    """One or several results folders, read: the rows (one per id, ``part`` naming the folder) and the parts."""

    parts: list[Part]
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.parts[0].folder


def load(*folders: str | Path, scratch: Path | None = None) -> Results:
    """Read each folder's results table(s) and run.json; raise ReportError or ResultsError saying why not.

    A folder may be an object-store URI (``batch run --out s3://…``): its tables and run.json are copied into
    ``scratch`` (required then, and kept by the caller as long as the Results are used).
    """
    if not folders:
        raise ReportError("no results folder given")
    parts, frames, notes, missing = [], [], [], []
    seen: dict[str, str] = {}
    for number, given in enumerate(folders):
        uri = _uri(str(given))
        key = uri or str(Path(given).resolve())
        if key in seen:
            raise ReportError(f"{given} is given twice (as {seen[key]} too)")
        seen[key] = str(given)
        folder = _fetched(uri, scratch / str(number)) if uri else Path(given)
        part, frame, part_notes, part_missing = _load_one(folder, uri)
        frame[PART] = number
        parts.append(part)
        frames.append(frame)
        prefix = f"{folder}: " if len(folders) > 1 else ""
        notes += [prefix + note for note in part_notes]
        missing += [c for c in part_missing if c not in missing]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(parts) > 1:
        twice = rows["id"].duplicated(keep="last")
        if twice.any():
            ids = rows.loc[twice, "id"].unique()
            shown = ", ".join(map(repr, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            notes.append(f"{len(ids)} id(s) are in more than one folder ({shown}): the last folder's row counts; "
                         "are these the shards of one manifest?")
            rows = rows[~twice].reset_index(drop=True)
    return Results(parts, rows, notes, missing)


def _uri(text: str) -> Uri | None:
    if not is_uri(text):
        return None
    try:
        return parse(text)
    except ValueError as err:
        raise ReportError(str(err)) from None


def _fetched(uri: Uri, scratch: Path | None) -> Path:
    """A local copy of the results files a store's folder holds."""
    from batch import remote

    if scratch is None:
        raise ReportError(f"{uri}: a results folder in an object store needs a scratch folder to be read into")
    if (problem := credentials_problem(uri.scheme)) is not None:
        raise ReportError(f"{problem}: {uri}")
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        remote.fetch(uri, scratch)
    except OSError as err:
        raise ReportError(f"cannot read {uri}: {err}") from None
    return scratch


def _load_one(folder: Path, uri: Uri | None = None) -> tuple[Part, pd.DataFrame, list[str], list[str]]:
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    reader = TableReader(folder)
    if not reader.files:
        raise ReportError(f"no results table in {uri or folder}: expected one of {', '.join(TABLE_NAMES)}")
    run, notes = read_run_info(folder)
    rows = typed_frame(reader.rows(), reader.missing)  # the column specification's types (batch/results.py)
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
        notes.append("run.json is older than the results table: a later run into this folder is still going "
                     "or was killed (its rows are counted, its details are not recorded yet)")
    return Part(folder, newest, run, run_legs(run), len(rows), stale, uri), rows, notes, reader.missing


def locate_input(part: Part, path: str) -> Path | Uri:
    """Where an input ``path`` of ``part``'s table is: relative paths are relative to the manifest's folder."""
    if is_uri(path):
        return parse(path)
    p = Path(path)
    if p.is_absolute():
        return p
    manifest = part.run.get("manifest")
    if isinstance(manifest, str) and manifest:
        return Path(manifest).parent / p
    return p


def locate_output(part: Part, output: str) -> Path | Uri:
    """Where a rotated ``output`` of ``part``'s table is: relative paths are relative to its results folder."""
    if is_uri(output):
        return parse(output)
    p = Path(output)
    if p.is_absolute():
        return p
    return parse(f"{part.uri.rstrip('/')}/{output}") if part.uri else part.folder / p
