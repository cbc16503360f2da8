"""An on-disk index of one run: manifest rows, previous results, this run's results.

A SQLite file beside the results keeps the driver's memory flat however many
rows the manifest has: duplicate ids, outputs that clash with inputs or with
each other, resume look-ups and the final one-row-per-manifest-row table are
all queries instead of Python sets and dicts. It is rebuilt by every run (the
results files are the durable record) and deleted when the run ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from batch.manifest import ManifestError, Row, resolved, rotation_name
from batch.results import COLUMNS, ERROR, Outcome, Reason, already_done
from batch.store import Uri, location

_ROW_FIELDS = ("line", "id", "path", "op", "rotation", "output", "input_path", "degrees", "output_path", "error",
               "format", "input_real")
_RESULT_COLUMNS = ", ".join(f'"{c}" TEXT' for c in COLUMNS if c != "id")
CHUNK = 1000


class RunIndex:
    """The SQLite index at ``path`` (created afresh; removed by ``close``) of a whole manifest, of which this run
    runs and tables the rows of share ``share`` (batch/shard.py; 0 when not sharded)."""

    def __init__(self, path: Path, share: int = 0) -> None:
        self.path = Path(path)
        self.share = share
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        try:
            # Scratch data, rebuilt every run: durability would only cost time.
            self.db.execute("PRAGMA journal_mode=OFF")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute("PRAGMA cache_size=-1000")  # KiB: bounds memory whatever the row count
            self.db.executescript(f"""
                CREATE TABLE rows (line INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, path TEXT, op TEXT,
                    rotation TEXT, output TEXT, input_path TEXT, degrees INTEGER, output_path TEXT, error TEXT,
                    format TEXT, input_real TEXT, output_real TEXT, share INTEGER NOT NULL);
                CREATE TABLE prev (id TEXT PRIMARY KEY, {_RESULT_COLUMNS});
                CREATE TABLE done (id TEXT PRIMARY KEY, {_RESULT_COLUMNS});
            """)
        except BaseException:  # a full disk, say: leave no half-made index behind
            self.close()
            raise

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    # --- manifest ---------------------------------------------------------------------------------

    def add_rows(self, rows: Iterable[Row], manifest: Path,
                 share_of: Callable[[Row, str | None], int] | None = None) -> int:
        """Store every row, with its share from ``share_of(row, resolved output)`` (all in share 0 without);
        raise ManifestError on a duplicate id, naming both lines. Returns the row count of the whole manifest."""
        count = 0
        self.db.execute("BEGIN")
        try:
            for row in rows:
                output_real = _real(row.output_path)
                try:
                    self.db.execute(
                        "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (row.line, row.id, row.path, row.op, row.rotation, row.output,
                         _str(row.input_path), row.degrees, _str(row.output_path), row.error, row.format,
                         _real(row.input_path), output_real, share_of(row, output_real) if share_of else 0),
                    )
                except sqlite3.IntegrityError:
                    (first,) = self.db.execute("SELECT line FROM rows WHERE id = ?", (row.id,)).fetchone()
                    hint = "ids must be unique"
                    if row.id in (str(row.line), str(first)):
                        hint = ("a row without an id takes its line number as its id, and here that number is "
                                "another row's id too: give every row an id, or none")
                    raise ManifestError(
                        manifest, row.line, f"duplicate id {row.id!r} (first used on line {first}); {hint}"
                    ) from None
                count += 1
        finally:
            self.db.execute("COMMIT")
        self.db.execute("CREATE INDEX rows_input ON rows (input_real)")
        self.db.execute("CREATE INDEX rows_output ON rows (output_real)")
        return count

    def count_share(self) -> int:
        """Rows in this run's share."""
        return self.db.execute("SELECT count(*) FROM rows WHERE share = ?", (self.share,)).fetchone()[0]

    def name_rotations(self) -> int:
        """Default outputs of an input that rows rotate in different ways carry their rotation
        (``manifest.rotation_name``), decided from the whole manifest so that no name depends on row order.
        Returns how many rows were renamed."""
        many = ("SELECT input_real FROM rows WHERE op = 'rotate' AND output = '' AND error IS NULL "
                f"GROUP BY input_real HAVING count(DISTINCT {_TURN}) > 1")
        renamed, after = 0, 0
        while chunk := self.db.execute(
            f"SELECT line, output_path, degrees FROM rows WHERE line > ? AND op = 'rotate' AND output = '' "
            f"AND error IS NULL AND input_real IN ({many}) ORDER BY line LIMIT ?", (after, CHUNK),
        ).fetchall():
            self.db.execute("BEGIN")
            try:
                for line, output_path, degrees in chunk:
                    named = rotation_name(location(output_path), degrees)
                    self.db.execute("UPDATE rows SET output_path = ?, output_real = ? WHERE line = ?",
                                    (str(named), _real(named), line))
            finally:
                self.db.execute("COMMIT")
            renamed += len(chunk)
            after = chunk[-1][0]
        return renamed

    def stores(self) -> set[str]:
        """The object stores (canonical schemes) the manifest's inputs and outputs are on."""
        found = self.db.execute(
            "SELECT DISTINCT substr(p, 1, instr(p, '://') - 1) FROM (SELECT input_path AS p FROM rows "
            "UNION SELECT output_path FROM rows) WHERE instr(p, '://') > 0").fetchall()
        return {scheme for (scheme,) in found}

    def earlier_outputs_on(self, scheme: str) -> int:
        """Rows an earlier run did whose outputs are on the store ``scheme``: what a resume checks there."""
        return self.db.execute("SELECT count(*) FROM rows r JOIN prev p ON p.id = r.id WHERE p.status = 'ok' "
                               "AND r.output_path LIKE ? || '://%'", (scheme,)).fetchone()[0]

    def scan(self, unchecked: frozenset[str] = frozenset()) -> Iterator[Step]:
        """Each row of this run's share in manifest order, once: ``Settled`` (invalid, its output would overwrite
        an input or another row's output, or an earlier run did it), ``Follows`` (an exact duplicate: same input,
        rotation and output as an earlier row, its leader) or ``Call``. ``Plan`` is its one reader.

        One query per chunk of rows (three look-ups per row cost more than the row's own SQL work), so a
        cursor never spans the writes of a run. Earlier outputs on a store in ``unchecked`` count as gone.
        """
        prev_cols = ", ".join(f'p."{c}"' for c in COLUMNS)
        fields = ", ".join(f"r.{f}" for f in _ROW_FIELDS)
        n = len(_ROW_FIELDS)
        after = 0
        while True:
            chunk = self.db.execute(
                f"SELECT {fields}, {_OUTPUT_FACTS}, p.id IS NOT NULL, {prev_cols} FROM rows r {_OUTPUT_JOINS} "
                "LEFT JOIN prev p ON p.id = r.id WHERE r.line > ? AND r.share = ? ORDER BY r.line LIMIT ?",
                (after, self.share, CHUNK),
            ).fetchall()
            if not chunk:
                return
            for values in chunk:
                row = _row(values[:n])
                facts = _OutputFacts(*values[n:n + 10])
                previous = dict(zip(COLUMNS, values[n + 11:], strict=True)) if values[n + 10] else None
                leader = facts.leader(row)
                followed = facts.first_writer_line == row.line and facts.writers > 1
                clash = facts.conflict(row) if row.output_path is not None and not leader and not row.error else None
                if row.error or clash:
                    reason = Reason.INVALID_ROW if row.error else Reason.OUTPUT_CLASH
                    yield Settled(row, Outcome(ERROR, error=row.error or clash, reason=reason), followed=followed)
                elif already_done(row, previous, unchecked):
                    yield Settled(row, Outcome.done_before(previous), followed=followed)
                elif leader is not None:
                    yield Follows(row, leader)
                else:
                    yield Call(row, followed=followed)
            after = chunk[-1][0]

    # --- results ----------------------------------------------------------------------------------

    def add_previous(self, results: Iterable[tuple[str, ...]]) -> None:
        """Load earlier results (values in ``COLUMNS`` order); a later row for the same id replaces an earlier one."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(f"INSERT OR REPLACE INTO prev VALUES ({', '.join('?' * len(COLUMNS))})", results)
        finally:
            self.db.execute("COMMIT")

    def record_many(self, results: list[dict[str, str]]) -> None:
        """This run's results, one transaction per group (a transaction per row costs ~20 lock calls)."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                f"INSERT OR REPLACE INTO done VALUES ({', '.join('?' * len(COLUMNS))})",
                ([result[c] for c in COLUMNS] for result in results),
            )
        finally:
            self.db.execute("COMMIT")

    def count_not_in_manifest(self) -> int:
        """Earlier results whose ids this run's rows (its share of the manifest) do not have."""
        return self.db.execute(f"SELECT count(*) FROM prev WHERE {_NOT_OURS}", (self.share,)).fetchone()[0]

    def table(self) -> Iterator[dict[str, str]]:
        """One result per manifest row in manifest order: this run's, else an earlier run's (rows not reached);
        then the earlier results whose ids this run's rows do not have, kept rather than silently dropped."""
        cols = ", ".join(f'coalesce(d."{c}", p."{c}")' for c in COLUMNS if c != "id")
        after = 0
        while True:
            chunk = self.db.execute(
                f"SELECT r.line, r.id, d.id IS NOT NULL OR p.id IS NOT NULL, {cols} FROM rows r "
                "LEFT JOIN done d ON d.id = r.id LEFT JOIN prev p ON p.id = r.id AND d.id IS NULL "
                "WHERE r.line > ? AND r.share = ? ORDER BY r.line LIMIT ?", (after, self.share, CHUNK),
            ).fetchall()
            if not chunk:
                break
            for _line, id_, found, *values in chunk:
                if found:
                    yield dict(zip(COLUMNS, [id_, *values], strict=True))
            after = chunk[-1][0]
        cursor = self.db.execute(f"SELECT * FROM prev WHERE {_NOT_OURS} ORDER BY rowid", (self.share,))
        while chunk := cursor.fetchmany(CHUNK):
            for values in chunk:
                yield dict(zip(COLUMNS, values, strict=True))


_NOT_OURS = "id NOT IN (SELECT id FROM rows WHERE share = ?)"


def _row(values) -> Row:
    row = dict(zip(_ROW_FIELDS, values, strict=True))
    for key in ("input_path", "output_path"):
        row[key] = location(row[key]) if row[key] is not None else None
    return Row(**row)


# What the output checks need about row ``r``, in one statement: the resolved paths were stored with the row (no
# second realpath); ``c``, the first row reading r's output as its input; ``w``, the first row writing r's output.
_OUTPUT_JOINS = (
    "LEFT JOIN rows c ON c.line = (SELECT line FROM rows WHERE input_real = r.output_real ORDER BY line LIMIT 1) "
    "LEFT JOIN rows w ON w.line = (SELECT line FROM rows WHERE output_real = r.output_real ORDER BY line LIMIT 1)"
)
_OUTPUT_FACTS = ("r.input_real, r.output_real, c.id, c.line, w.id, w.line, w.input_real, w.degrees, w.format, "
                 "(SELECT count(*) FROM rows WHERE output_real = r.output_real)")
_TURN = "coalesce(degrees, -1)"  # the quarter turn 0..270 (manifest.parse_rotation), -1 for auto (degrees NULL)


@dataclass(frozen=True)
class _OutputFacts:
    real_input: str | None
    real: str | None
    reader_id: str | None
    reader_line: int | None
    first_writer_id: str | None
    first_writer_line: int | None
    first_writer_input: str | None
    first_writer_degrees: int | None
    first_writer_format: str | None
    writers: int

    def leader(self, row: Row) -> str | None:
        """The earlier row this one duplicates exactly (same input, same rotation, so the same output)."""
        if self.first_writer_line is None or self.first_writer_line == row.line:
            return None
        same = (self.first_writer_input == self.real_input and self.first_writer_degrees == row.degrees
                and self.first_writer_format == row.format)
        return self.first_writer_id if same else None

    def conflict(self, row: Row) -> str | None:
        if self.real == self.real_input:
            return f"output {row.output_path} is the input itself: refusing to overwrite an input"
        if self.reader_id is not None:
            return (f"output {row.output_path} is the input of row {self.reader_id!r} (line {self.reader_line}): "
                    "refusing to overwrite an input")
        if self.first_writer_id is not None and self.first_writer_line != row.line:
            return (f"output {row.output_path} is also the output of row {self.first_writer_id!r} "
                    f"(line {self.first_writer_line})")
        return None


# The three kinds of step; each reads as the others do (``outcome`` None until known, ``leader`` None unless it
# shares another row's outcome, ``followed`` when later rows share its own).
@dataclass(frozen=True)
class Settled:
    """A row whose outcome is known without a call of its own: invalid, clashing, done by an earlier run, or an
    exact duplicate sharing the outcome of its leader (``leader``, an id)."""

    row: Row
    outcome: Outcome
    followed: bool = False  # later rows duplicate this one exactly
    leader: str | None = None


@dataclass(frozen=True)
class Call:
    """A row that needs a call."""

    row: Row
    followed: bool = False
    outcome: ClassVar[None] = None
    leader: ClassVar[None] = None


@dataclass(frozen=True)
class Follows:
    """An exact duplicate (same input, rotation and output) of the earlier row ``leader`` (its id), whose outcome
    is not known yet: it is settled with it (``Plan.finished``), without a call of its own."""

    row: Row
    leader: str
    outcome: ClassVar[None] = None
    followed: ClassVar[bool] = False


Step = Settled | Call | Follows


class Plan:
    """The one owner of exact duplicates: the index's rows of this run, each once as a ``Step``, and the rows
    settled by a leader's outcome (``finished``). A follower whose leader is settled already comes as ``Settled``.

    Memory is bounded by the manifest's duplicate groups, not its length.
    """

    def __init__(self, index: RunIndex, unchecked: frozenset[str] = frozenset()) -> None:
        self.index = index
        self._unchecked = unchecked
        self._leaders: set[str] = set()  # rows that later rows follow, outcome not known yet
        self._waiting: dict[str, list[Row]] = {}  # their followers met so far
        self._led: dict[str, Outcome] = {}  # the outcomes of those that are settled

    def __iter__(self) -> Iterator[Step]:
        for step in self.index.scan(self._unchecked):
            if isinstance(step, Follows):
                if (outcome := self._led.get(step.leader)) is not None:
                    step = Settled(step.row, Outcome.shared(outcome), leader=step.leader)
                else:
                    self._waiting.setdefault(step.leader, []).append(step.row)
            elif step.followed:
                self._leaders.add(step.row.id)
            yield step

    def finished(self, row: Row, outcome: Outcome) -> list[Settled]:
        """``row``'s outcome is known: the rows that follow it, settled with it."""
        if row.id not in self._leaders:
            return []
        self._leaders.discard(row.id)
        self._led[row.id] = outcome
        return [Settled(f, Outcome.shared(outcome), leader=row.id) for f in self._waiting.pop(row.id, ())]


def _str(path: Path | Uri | None) -> str | None:
    return str(path) if path is not None else None


def _real(path: Path | Uri | None) -> str | None:
    # Symlinks resolved so that two spellings of one file compare equal; a URI is normalised already (and a path
    # never equals one).
    if path is None:
        return None
    return path if isinstance(path, Uri) else resolved(path)
