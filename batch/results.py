"""The results table, its only owner: the columns, a row's result, the journal, the reader, the finished file.

During a run finished rows are appended to a CSV journal in groups, each
flushed once its outputs are durable (batch/durable.py), so a crash or
Ctrl-C loses at most the last ~0.1 s of rows, which then run again. With ``--results-format csv`` the
journal *is* ``results.csv`` (``tail -f`` works); with ``parquet`` it is
``results.journal.csv``. When the run ends (or is interrupted) the table is
rewritten atomically with exactly one row per manifest row, in manifest order.

Reading has one policy, for resume and for ``batch report`` alike
(``TableReader``): every results file of a folder, oldest first, a later row
for an id superseding an earlier one; a last line cut short by a crash is
dropped, and so is any other damaged line (wrong field count, bytes that are
not UTF-8, a status that is neither ``ok`` nor ``error``), each named with its
line number in ``notes``. A dropped row simply runs again on resume.
"""

from __future__ import annotations

import csv
import datetime
import enum
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batch.durable import TEMP_SUFFIX, atomic_file
from batch.errors import BatchError
from batch.extras import require_pyarrow
from batch.store import Uri
from batch.store import size as object_size

# The one column specification: each column's name and kind, in the table's order. Every file holds text
# (CSV) or the kind's own type (Parquet, ``arrow_type``); readers type a frame by it (``typed_frame``).
# ``rotation`` is text: "auto" as well as degrees.
TEXT, INT32, INT64, FLOAT, BOOL, TIME = "text", "int32", "int64", "float", "bool", "time"
SCHEMA: dict[str, str] = {
    "id": TEXT, "path": TEXT, "op": TEXT, "rotation": TEXT, "status": TEXT, "output": TEXT,
    "output_bytes": INT64, "output_sha256": TEXT, "format": TEXT,
    "turned": INT32, "decided_by": TEXT, "lossless": BOOL, "width": INT32, "height": INT32, "label": TEXT,
    "confidence": FLOAT, "faces": TEXT, "error": TEXT, "reason": TEXT, "note": TEXT, "attempts": INT32,
    "latency_ms": FLOAT, "worker": TEXT, "finished_at": TIME,
}
COLUMNS = tuple(SCHEMA)
# Without these a file is not a results table; a missing other column (an older batch run) reads as empty.
REQUIRED = ("id", "path", "op", "status")
OK, ERROR = "ok", "error"
CSV_NAME, PARQUET_NAME, JOURNAL_NAME, RUN_NAME = "results.csv", "results.parquet", "results.journal.csv", "run.json"
TABLE_NAMES = (PARQUET_NAME, CSV_NAME, JOURNAL_NAME)
# The results folder's own files beside the tables: no row may write over one of them.
LOCK_NAME, INDEX_NAME, WORKER_LOG_NAME, REPORT_NAME = ".lock", ".batch-index.sqlite", "worker.log", "report.html"
MANIFEST_NAME = "manifest.csv"  # the manifest batch.run writes for rows given as a DataFrame or dicts
BOOKKEEPING = (*TABLE_NAMES, RUN_NAME, LOCK_NAME, INDEX_NAME, WORKER_LOG_NAME, REPORT_NAME, MANIFEST_NAME)


def is_bookkeeping(name: str) -> bool:
    """Whether a file name in the results folder is one of the run's own (or SQLite's and temporary files of
    them)."""
    return name in BOOKKEEPING or name.startswith(INDEX_NAME) or (
        name.startswith(".") and name.endswith(TEMP_SUFFIX) and name[1:-len(TEMP_SUFFIX)] in BOOKKEEPING)
# An error message may quote its input (a 40,000-character rotation cell): bounded, so that every cell stays
# within the csv module's field limit, the one the reader has. Manifest cells are within it already (the
# manifest is read with the same csv module).
ERROR_MAX = 2000
_STATUS = COLUMNS.index("status")


class ResultsError(BatchError):
    """An existing results file that cannot be read or resumed from; the message says which and why."""


class Reason(enum.StrEnum):
    """Why a row failed, as its ``reason`` column says: the driver's own reasons. The worker's ErrorReason names
    (proto/imageworker_v1.proto) pass through as they are, and a gRPC status without one is its code's name;
    ``error`` keeps the message for people. Nothing decides by the message."""

    INVALID_ROW = "INVALID_ROW"  # the manifest row itself (batch/manifest.py says how)
    OUTPUT_CLASH = "OUTPUT_CLASH"  # its output would overwrite an input or another row's output
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
    INPUT_UNREADABLE = "INPUT_UNREADABLE"  # permission denied, a link loop, an I/O error
    NOT_A_REGULAR_FILE = "NOT_A_REGULAR_FILE"  # a directory, FIFO, device or socket
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"  # over what one call can carry
    INPUT_CHANGED = "INPUT_CHANGED"  # it grew or shrank while it was read
    OUTPUT_UNWRITABLE = "OUTPUT_UNWRITABLE"
    OUTPUT_OUTSIDE_OUT = "OUTPUT_OUTSIDE_OUT"  # its folder leads outside --out
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"  # over the worker's gRPC message limit (gRPC's refusal, no reason)
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"  # no worker reachable within --retries
    TIMED_OUT = "TIMED_OUT"  # no answer within --timeout, --retries times
    WORKER_OVERLOADED = "WORKER_OVERLOADED"  # refused as busy for longer than the busy budget
    FORMAT_MISMATCH = "FORMAT_MISMATCH"  # the worker wrote another format than asked (an older worker)
    BAD_ANSWER = "BAD_ANSWER"  # a streamed answer that broke its own declared shape


class RowFailed(Exception):
    """A row-level failure on the driver's side: its message (the ``error`` column) and ``reason``."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Outcome:
    """What happened to one row, as the runner saw it; ``result_row`` turns it into a table row."""

    status: str
    error: str = ""
    reason: str = ""  # why it failed: a Reason, or the worker's ErrorReason name
    output: str = ""
    format: str = ""  # of the file written (rotate): Pillow's name, e.g. "JPEG"
    turned: int | None = None  # rotate: the quarter turn applied; classify: the one its faces were found under
    decided_by: str = ""  # rotation auto: "exif", "faces" or "none"
    # A JPEG output: True when turned in the DCT domain (or kept as it was), False when decoded and re-encoded
    # (a new generation of loss); None for other formats and ops.
    lossless: bool | None = None
    note: str = ""  # what a conversion lost, when it lost something
    # What was written (rotate): its size and SHA-256 (hex), so that resume can tell it is still there intact.
    output_bytes: int | None = None
    output_sha256: str = ""
    by_reference: bool = False  # the worker read the input (and wrote the output, durably) itself
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
    earlier: dict[str, str] | None = None  # an earlier run's ok result for this row: kept as it is

    @classmethod
    def failed(cls, problem: RowFailed, **details) -> Outcome:
        return cls(ERROR, error=str(problem), reason=problem.reason, **details)

    @classmethod
    def done_before(cls, earlier: dict[str, str]) -> Outcome:
        return cls(OK, output=earlier["output"], earlier=earlier)

    @classmethod
    def shared(cls, leader: Outcome) -> Outcome:
        """The outcome of a row that exactly duplicates ``leader`` (same input, rotation and output): the same
        result, written once, without a call of its own."""
        if leader.earlier is not None:  # the leader was done by an earlier run
            e = leader.earlier
            return cls(OK, output=e["output"], width=_int(e["width"]), height=_int(e["height"]), format=e["format"],
                       turned=_int(e["turned"]), decided_by=e["decided_by"], note=e["note"],
                       lossless=_BOOLS.get(e["lossless"]), output_bytes=_size(e["output_bytes"]),
                       output_sha256=e["output_sha256"])
        return cls(leader.status, error=leader.error, reason=leader.reason, output=leader.output, width=leader.width,
                   height=leader.height, format=leader.format, turned=leader.turned, decided_by=leader.decided_by,
                   note=leader.note, lossless=leader.lossless, output_bytes=leader.output_bytes,
                   output_sha256=leader.output_sha256)

    @property
    def skipped(self) -> bool:
        return self.earlier is not None


def result_row(row, outcome: Outcome) -> dict[str, str]:
    """The one place a manifest row and its outcome become a results row (all values as text)."""
    if outcome.earlier is not None:
        return dict(outcome.earlier)
    error = outcome.error if len(outcome.error) <= ERROR_MAX else outcome.error[:ERROR_MAX - 1] + "…"
    return {
        "id": row.id,
        "path": row.path,
        "op": row.op,
        "rotation": row.rotation if row.op == "rotate" else "",
        "status": outcome.status,
        "output": outcome.output,
        "output_bytes": _text(outcome.output_bytes),
        "output_sha256": outcome.output_sha256,
        "format": outcome.format,
        "turned": _text(outcome.turned),
        "decided_by": outcome.decided_by,
        "lossless": "" if outcome.lossless is None else str(outcome.lossless).lower(),
        "width": _text(outcome.width),
        "height": _text(outcome.height),
        "label": outcome.label,
        "confidence": f"{outcome.confidence:.4f}" if outcome.confidence is not None else "",
        "faces": json.dumps(outcome.faces, separators=(",", ":")) if row.op == "classify" and outcome.status == OK
        else "",
        "error": error,
        "reason": outcome.reason,
        "note": outcome.note,
        "attempts": str(outcome.attempts),
        "latency_ms": f"{outcome.latency_ms:.1f}" if outcome.latency_ms is not None else "",
        "worker": outcome.worker,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
    }


def _text(value) -> str:
    return "" if value is None else str(value)


def _int(text: str) -> int | None:
    return int(text) if text else None


def _size(text: str) -> int | None:
    """A recorded size, None when there is none (a row of an older batch run) or it is no size (edited)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None


_BOOLS = {"true": True, "false": False}  # the text of a boolean column, as result_row writes it


def already_done(row, previous: dict[str, str] | None, unchecked: frozenset[str] = frozenset()) -> bool:
    """Resume: an earlier ``ok`` result for the same id, path, op and rotation whose output still exists
    (for a URI: the object, asked of its store; never done for a store in ``unchecked``, which the driver
    cannot ask)."""
    if not previous or previous["status"] != OK or row.error:
        return False
    if (previous["path"], previous["op"]) != (row.path, row.op):
        return False
    if row.op == "classify":
        return True
    return (
        previous["rotation"] == row.rotation
        and previous["output"] == str(row.output_path)
        and (row.output_path.scheme not in unchecked and _object_intact(row.output_path, previous)
             if isinstance(row.output_path, Uri) else _file_intact(previous))
    )


# Resume checks an output against what was recorded when it was written: the size always (a stat, or the HEAD
# a store answers); the SHA-256 of local files too (a read at disk speed, ~0.75 ms a MiB, far less than
# re-running the row it may save, and the only check that catches content replaced at the same size); not of
# objects, whose digest would cost downloading each (the upload of re-running it). A row of an older batch run
# recorded neither: its output only has to exist, as then.


def _file_intact(previous: dict[str, str]) -> bool:
    from batch.files import open_input  # the one safe opener (a regular file, never held in open()); it imports us

    try:
        fd, size = open_input(Path(previous["output"]))
        with open(fd, "rb") as f:
            if not previous["output_bytes"]:
                return True
            if size != _size(previous["output_bytes"]):
                return False
            return not previous["output_sha256"] or hashlib.file_digest(f, "sha256").hexdigest() == \
                previous["output_sha256"]
    except (RowFailed, OSError):
        return False


def _object_intact(uri: Uri, previous: dict[str, str]) -> bool:
    size = object_size(uri)
    return size is not None and (not previous["output_bytes"] or size == _size(previous["output_bytes"]))


def faces_json(faces) -> list[dict]:
    """ClassifyResponse faces as plain dicts for the ``faces`` column."""
    return [
        {"box": [f.box.left, f.box.top, f.box.right, f.box.bottom], "label": f.label, "score": round(f.score, 4)}
        for f in faces
    ]


# --- writing ------------------------------------------------------------------------------------


class Journal:
    """Append-only CSV of results, flushed after each group of finished rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Never through a link planted in the results folder: appending would write wherever it points.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        new = os.fstat(fd).st_size == 0
        self._file = open(fd, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        # "ignore": rows come from result_row with exactly COLUMNS; "raise" would scan every row's keys again.
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
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


def write_table(rows: Iterable[dict[str, str]], path: Path) -> int:
    """Write the finished table atomically and durably; returns the row count."""
    if path.suffix == ".parquet":
        with atomic_file(path, "wb") as f:
            return _write_parquet(rows, f)
    count = 0
    with atomic_file(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")  # as the journal's
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
            count += 1
    return count


def _pyarrow():
    require_pyarrow()  # a clear error naming the extra, not an ImportError
    import pyarrow

    return pyarrow


def arrow_type(kind: str):
    """The Parquet (Arrow) type of a column ``kind``."""
    pa = _pyarrow()
    return {TEXT: pa.string(), INT32: pa.int32(), INT64: pa.int64(), FLOAT: pa.float64(), BOOL: pa.bool_(),
            TIME: pa.timestamp("ms", tz="UTC")}[kind]


def parquet_schema():
    pa = _pyarrow()
    return pa.schema([(name, arrow_type(kind)) for name, kind in SCHEMA.items()])


def _write_parquet(rows: Iterable[dict[str, str]], sink) -> int:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = parquet_schema()
    count = 0
    with pq.ParquetWriter(sink, schema) as writer:
        batch: list[dict] = []
        for r in rows:
            batch.append({name: _value(r.get(name, ""), kind) for name, kind in SCHEMA.items()})
            count += 1
            if len(batch) == 10_000:  # row groups of bounded size keep memory flat
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return count


def _value(text: str, kind: str):
    """A cell's text as its kind's Python value (None when empty)."""
    if kind == TEXT:
        return text
    if not text:
        return None
    if kind in (INT32, INT64):
        return int(text)
    if kind == FLOAT:
        return float(text)
    if kind == BOOL:
        return _BOOLS.get(text)
    return datetime.datetime.fromisoformat(text)


def typed_frame(rows: Iterable[tuple[str, ...]], missing: Iterable[str] = ()):
    """A pandas DataFrame of text rows in ``COLUMNS`` order, each column typed by its kind: text as str,
    int32 as pandas' nullable Int64, float as float64 and time as UTC datetimes, an empty cell as missing;
    ``missing`` columns (absent from an older file) are all missing."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(rows), columns=COLUMNS)
    for name, kind in SCHEMA.items():
        if kind == TEXT:
            continue
        if name in missing:
            frame[name] = pd.Series(pd.NA, index=frame.index, dtype=_PANDAS[kind])
        elif kind == TIME:
            frame[name] = pd.to_datetime(frame[name], utc=True, errors="coerce", format="ISO8601")
        elif kind == BOOL:
            frame[name] = frame[name].map(_BOOLS).astype(_PANDAS[kind])
        else:
            values = pd.to_numeric(frame[name], errors="coerce")
            if kind in (INT32, INT64):
                values = values.where(values == values.round())  # a damaged cell reads as missing, not an error
            frame[name] = values.astype(_PANDAS[kind])
    return frame


_PANDAS = {INT32: "Int64", INT64: "Int64", FLOAT: "float64", BOOL: "boolean", TIME: "datetime64[ns, UTC]"}


def write_run_info(out_dir: Path, leg: dict) -> None:
    """Add ``leg`` (one `batch run` into ``out_dir``) to run.json, replaced atomically (a report reading it while
    a run ends sees the old or the new one).

    run.json keeps every leg, oldest first, under ``legs``: a resumed run, or one with nothing left to do, must
    not erase what the earlier ones recorded. Its top level repeats the newest leg, the shape run.json had
    before it kept legs, for scripts that read ``counts`` or ``exit_code``.
    """
    earlier, _ = read_run_info(out_dir)
    with atomic_file(out_dir / RUN_NAME, "w", encoding="utf-8") as f:
        json.dump({**leg, "legs": [*run_legs(earlier), leg]}, f, indent=2)
        f.write("\n")


# --- reading ------------------------------------------------------------------------------------


def table_files(folder: Path) -> list[Path]:
    """The results files in ``folder``, oldest first: a later file's row for an id supersedes an earlier one.

    ``batch run`` keeps a CSV journal while it runs (``results.csv`` itself, or
    ``results.journal.csv`` beside ``results.parquet``) and rewrites the table
    when it ends; a resumed run's journal is newer than the table it resumed.
    """
    found = []
    for path in (folder / name for name in TABLE_NAMES):
        if path.is_symlink():  # planted, perhaps: the run would append to wherever it points
            raise ResultsError(f"{path} is a symbolic link: refusing to follow it (remove it, or use another --out)")
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


class TableReader:
    """Reads every results file of a folder with one policy (module docstring); see ``notes`` afterwards."""

    def __init__(self, folder: Path) -> None:
        self.files = table_files(Path(folder))
        self.notes: list[str] = []  # what was dropped or is missing, and why
        self.missing: list[str] = []  # columns some file lacks (written by an older batch run)

    def rows(self) -> Iterator[tuple[str, ...]]:
        """Each valid row as text values in ``COLUMNS`` order, file by file, oldest first."""
        for path in self.files:
            yield from (_read_parquet(path) if path.suffix == ".parquet" else self._read_csv(path))

    def _columns(self, path: Path, header: list[str]) -> list[int | None]:
        absent = [c for c in REQUIRED if c not in header]
        if absent:
            raise ResultsError(
                f"{path} has no column {', '.join(repr(c) for c in absent)} (it has: {', '.join(header) or 'none'}): "
                "it is not a results table of batch run, or one too old to read; use another --out or --restart"
            )
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            self.notes.append(f"{path.name} has no column {', '.join(repr(c) for c in missing)} "
                              "(written by an older batch run?): read as empty")
            self.missing += [c for c in missing if c not in self.missing]
        return [header.index(c) if c in header else None for c in COLUMNS]

    def _read_csv(self, path: Path) -> Iterator[tuple[str, ...]]:
        dropped: dict[str, list[int]] = {}
        # surrogateescape: a byte that is not UTF-8 costs its line, not the whole read
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise ResultsError(f"{path}: the header line is not valid CSV ({e})") from None
            positions = self._columns(path, header)
            width = len(header)
            pending: tuple[int, list[str]] | None = None
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:  # e.g. a field over the size limit: that line only
                    dropped.setdefault(f"not valid CSV ({e})", []).append(reader.line_num)
                    continue
                if pending is not None:
                    yield from self._valid(*pending, width, positions, dropped)
                pending = (reader.line_num, record)
            if pending is not None:
                if _ends_with_newline(path):
                    yield from self._valid(*pending, width, positions, dropped)
                else:
                    self.notes.append(f"{path.name}: ignored an unfinished last line (line {pending[0]}): "
                                      "a run still writing it, or one that was killed; that row runs again")
        for why, lines in dropped.items():
            shown = ", ".join(map(str, lines[:5])) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
            self.notes.append(f"{path.name}: dropped {len(lines)} damaged line(s) ({why}): line {shown}; "
                              "those rows run again on resume")

    @staticmethod
    def _valid(line: int, record: list[str], width: int, positions: list[int | None],
               dropped: dict[str, list[int]]) -> Iterator[tuple[str, ...]]:
        if len(record) != width:
            if any(record):  # a blank line is no damage
                dropped.setdefault("wrong number of fields", []).append(line)
            return
        values = tuple(record[i] if i is not None else "" for i in positions)
        if values[_STATUS] not in (OK, ERROR):
            dropped.setdefault("status is neither ok nor error", []).append(line)
            return
        try:
            "".join(values).encode("utf-8")
        except UnicodeEncodeError:  # a surrogate: undecodable bytes in the file
            dropped.setdefault("not UTF-8 text", []).append(line)
            return
        yield values


def _read_parquet(path: Path) -> Iterator[tuple[str, ...]]:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ResultsError(f"{path} cannot be read as Parquet ({e}); use another --out or --restart") from None
    absent = [c for c in REQUIRED if c not in parquet.schema_arrow.names]
    if absent:
        raise ResultsError(f"{path} has no column {', '.join(repr(c) for c in absent)}: it is not a results "
                           "table of batch run; use another --out or --restart")
    for batch in parquet.iter_batches(batch_size=10_000):
        for r in batch.to_pylist():
            yield tuple(_parquet_text(r.get(c)) for c in COLUMNS)


def _parquet_text(value) -> str:
    if isinstance(value, datetime.datetime):  # the same text the CSV journal holds
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, bool):
        return str(value).lower()
    return _text(value)


def read_run_info(folder: Path) -> tuple[dict, list[str]]:
    """run.json as a dict ({} with a note when absent or unreadable: the table alone still says a lot)."""
    path = Path(folder) / RUN_NAME
    if not path.is_file():
        return {}, [f"{path.name} not found: run details (command, start, workers) unknown"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return {}, [f"{path.name} unreadable ({err}): run details unknown"]
    if not isinstance(data, dict):
        return {}, [f"{path.name} is not a JSON object: run details unknown"]
    return data, []


def run_legs(info: dict) -> list[dict]:
    """Every leg run.json records, oldest first; a run.json written before legs were kept is one leg."""
    legs = info.get("legs")
    if isinstance(legs, list):
        return [leg for leg in legs if isinstance(leg, dict)]
    return [info] if info else []
