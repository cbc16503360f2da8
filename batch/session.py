"""One `batch run`: lock the results folder, index the manifest, reach the workers, fan out, finish the table.

Order matters for the promises the command makes: the whole manifest is
checked (exit 2) before any worker is started or called; every row, whether
it made a call or was settled without one (invalid, conflicting, already
done), goes the same way: ``Run.settle``, then made durable with its group
(batch/durable.py: group commit), then ``Run.commit`` journals it and only
then counts it in the tally; the finished table and run.json are written
however the run ends (done, stopped, cancelled, error). ``execute`` is the
whole run as one coroutine; batch/api.py runs it for callers and the CLI maps
its signals to ``Stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import importlib
import itertools
import logging
import os
import platform
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from batch import demo, remote
from batch.concurrency import AdaptiveLimit
from batch.durable import Entry, GroupCommit
from batch.errors import BatchError, UsageError, WorkerStartError
from batch.files import forget_folders
from batch.index import Call, Plan, RunIndex, Settled
from batch.manifest import ManifestError, Row, read_rows
from batch.progress import Progress, Tally
from batch.results import (
    ERROR,
    INDEX_NAME,
    LOCK_NAME,
    RUN_NAME,
    WORKER_LOG_NAME,
    Journal,
    Outcome,
    ResultsError,
    TableReader,
    journal_path,
    result_row,
    table_path,
    write_run_info,
    write_table,
)
from batch.settings import Settings
from batch.shard import Shard, file_sha256, sharer
from batch.store import Uri, credentials_problem, is_uri
from batch.targets import DEFAULT_CONNECTIONS, address_count, grpc_targets
from worker.local import LocalWorker, LocalWorkerError, cpu_count

if TYPE_CHECKING:
    from batch.channel import Pool, Tls

log = logging.getLogger("batch.session")
EXIT_OK, EXIT_FAILED = 0, 1
T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    manifest: Path
    out: Path | Uri | None = None  # a folder, or an object-store URI (batch/remote.py)
    workers: tuple[str, ...] = ()  # addresses; empty: the embedded worker
    concurrency: int | None = None
    # --timeout, --retries, --quality: what every row's calls go by, passed to them as it is (with the run's
    # folders filled in once they are known).
    calls: Settings = Settings(timeout=60.0, retries=6)
    restart: bool = False
    tls: Tls | None = None
    results_format: str = "csv"
    name_template: str | None = None  # --name: default output names
    output_format: str | None = None  # --format (Pillow's name): convert every rotated output
    rotation: str | None = None  # --rotation: for rows that leave theirs empty ("auto" or degrees)
    references: bool = False  # --references: named workers read and write the files themselves
    resolve_every: float = 5.0  # --resolve-every: seconds between lookups of the workers' DNS names
    connections: int | None = None
    progress: str = "quiet"  # "bar", "notebook", "lines" or "quiet" (batch/progress.py)
    on_progress: Callable[[Tally], None] | None = None  # called with the tally each time it changes
    command: tuple[str, ...] = ()
    shard: Shard | None = None  # --shard: run only this share of the manifest (batch/shard.py)
    checkpoint_every: float = 60.0  # --checkpoint-every: seconds between uploads of the journal to a URI --out

    @property
    def out_store(self) -> Uri | None:
        """--out as a URI (parsed and checked by ``batch.api.configure``), or None for a folder."""
        return self.out if isinstance(self.out, Uri) else None
    # The folder relative input paths are relative to: the manifest's own, unless the manifest was written for
    # the run (batch.run with a DataFrame: the caller's working folder).
    base: Path | None = None

    @property
    def inputs_base(self) -> Path:
        return Path(os.path.abspath(self.base or Path(self.manifest).parent))

    @property
    def out_dir(self) -> Path:
        """Where the run's files are on local disk: --out, or the local cache of a URI --out."""
        if (store := self.out_store) is not None:
            return remote.cache_folder(store)
        default = Path("results") / Path(self.manifest).stem
        if self.shard is not None:
            default /= self.shard.folder
        return Path(os.path.abspath(self.out or default))


@dataclass
class Summary:
    """How a run ended: its tally and why it stopped, for the last line, the exit code and run.json."""

    tally: Tally
    results: Path
    published: str | None = None  # where the results table goes when --out is a URI
    elapsed: float = 0.0
    signal: int | None = None  # the signal that interrupted the run
    stopped: str | None = None  # why the run stopped early without a signal
    limit: AdaptiveLimit | None = None  # the calls in flight
    connections: int | None = None
    warnings: list[str] = field(default_factory=list)  # what the run could not do as asked: shown, and in run.json
    crashed: int | None = None  # the exit code of an error that ended the run (2: a BatchError)

    @property
    def exit_code(self) -> int:
        if self.crashed is not None:
            return self.crashed
        if self.signal is not None:
            return 128 + self.signal  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        return EXIT_FAILED if self.tally.failed or self.stopped else EXIT_OK

    def line(self) -> str:
        t = self.tally
        text = (f"{t.rows:,} rows: {t.counts()} in {self.elapsed:.1f} s ({t.rate(self.elapsed):.1f} rows/s)")
        if self.signal is not None:
            text = (f"interrupted ({signal.Signals(self.signal).name}): {text}, {t.not_run:,} not run; "
                    "run the same command again to finish (rows already ok are skipped)")
        elif self.stopped:
            text = (f"stopped: {self.stopped}: {text}, {t.not_run:,} not run; "
                    "run the same command again once workers are up")
        elif t.failed:
            text += f"; failed: {t.failures()}; see the error column of {self.published or _shown(self.results)}"
        return f"{text}. Results: {self.published or _shown(self.results)}"


class Run:
    """The rows of one run on their way to the journal: ``start``, ``settle`` each row, ``commit`` each
    durable group (called by the group commit), ``close``."""

    def __init__(self, plan: Plan, journal: Journal, progress: Progress) -> None:
        self.plan = plan
        self.index = plan.index
        self.journal = journal
        self.progress = progress
        self.tally = progress.tally
        self.stopped: str | None = None
        # When no worker answers for this many rows in a row, stop instead of failing the whole manifest slowly;
        # set from the concurrency once it is known.
        self.give_up_after = 10
        self._unanswered = 0
        self.unrunnable = 0  # rows settled as errors without a call (invalid, clashing): for the start line
        self._group = GroupCommit(self.commit)
        self._committer: asyncio.Task | None = None

    def start(self, on_failure) -> None:
        """Commit groups in the background; ``on_failure`` is called if that stops (a failed sync)."""
        self._committer = asyncio.create_task(self._group.run())
        self._committer.add_done_callback(lambda t: t.cancelled() or on_failure())

    @property
    def commit_failed(self) -> bool:
        return self._committer is not None and self._committer.done() and not self._committer.cancelled()

    def settle(self, row: Row, outcome: Outcome) -> None:
        """A row's outcome is known: it waits for its output to be durable, then is committed."""
        self._unanswered = self._unanswered + 1 if outcome.gave_up else 0 if outcome.worker else self._unanswered
        if self._unanswered >= self.give_up_after and not self.stopped:
            self.stopped = f"no worker answered for {self._unanswered} rows in a row ({outcome.error})"
        # An object in a store is durable once its PUT is answered: only files wait for a syncfs.
        written = (outcome.output if outcome.output and not (outcome.skipped or outcome.by_reference
                                                              or is_uri(outcome.output)) else None)
        self._group.add((row, outcome, result_row(row, outcome)), written)
        for follower in self.plan.finished(row, outcome):
            self.settle(follower.row, follower.outcome)

    def commit(self, entries: list[Entry]) -> None:
        """A group whose outputs are durable: journal it (one flush), then count and show it."""
        results = [result for _row, _outcome, result in entries]
        self.journal.append_many(results)  # first: a crash right after still keeps these rows
        self.index.record_many(results)
        for _row, outcome, _result in entries:
            self.tally.add(outcome)
        self.progress.update()

    def calls(self) -> Iterator[Row]:
        """The rows of the plan that need a call; the settled ones are settled on the way, and a follower with
        its leader (``settle``). Ends early once stopped."""
        for step in self.plan:
            if self.stopped:
                return
            if isinstance(step, Call):
                yield step.row
            elif isinstance(step, Settled):
                self.unrunnable += step.outcome.status == ERROR and step.leader is None
                self.settle(step.row, step.outcome)

    async def stop(self) -> None:
        """Stop the background commits (raises the error of a sync that failed)."""
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer

    def close(self) -> None:
        """Commit every row settled so far: durable, then journaled. Safe to call again."""
        try:
            self._group.flush()
        finally:
            self._group.close()


class Stop:
    """Stops a run from outside it, as the CLI does on SIGINT or SIGTERM: call it with the signal's number.

    The run keeps what it finished and ``execute`` returns its Summary naming the signal (cancelling the
    run's task instead raises CancelledError once the results are written). Only the first call counts,
    and none once the calls are over: the last group is flushed whatever happens.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    def __call__(self, signum: int) -> None:
        if self._task is not None and not self._closing and self.signum is None:
            self.signum = signum
            self._task.cancel()


async def execute(options: RunOptions, stop: Stop | None = None) -> Summary:
    """Run ``options.manifest`` to the end, or until ``stop`` is called or the task is cancelled.

    Raises a BatchError before any row is run when the run cannot start. Touches no signal handler and no
    other process-wide state; the results folder's lock is released however the run ends.
    """
    stop = stop or Stop()
    stop._task = asyncio.current_task()
    out = options.out_dir
    started_at = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    targets = grpc_targets(list(options.workers))  # checks the addresses before anything is written
    if demo.is_demo(options.manifest):
        demo.ensure_demo_images(Path(options.manifest).resolve().parent)
    _check_readable(Path(options.manifest))  # before --out exists: a typo leaves no empty results folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror}") from None
    shard, store = options.shard, options.out_store
    with _locked(out), contextlib.closing(_index(out, shard)) as index, _launched(options, targets, out) as early:
        if store is not None:
            _fetch(store, out, options.restart)
        rows = read_rows(Path(options.manifest), out, options.name_template, options.output_format, options.rotation,
                         store, base=options.inputs_base)
        # Every shard indexes the whole manifest: duplicates, clashes and default names are decided from all of it.
        manifest_rows = index.add_rows(rows, Path(options.manifest), sharer(shard, out, store) if shard else None)
        total = index.count_share()
        if options.name_template is None:
            index.name_rotations()
        reader = TableReader(out)
        if options.restart:
            for path in reader.files:
                path.unlink()
            (out / RUN_NAME).unlink(missing_ok=True)  # its legs describe the rows just dropped
        else:
            index.add_previous(reader.rows())
        progress = Progress(Tally(rows=total), options.progress, callback=options.on_progress)
        for note in reader.notes if not options.restart else ():
            progress.note(f"batch: {note}")
        if kept := index.count_not_in_manifest():
            progress.note(f"batch: {kept:,} rows of earlier runs have ids this manifest does not have"
                          f"{' in share ' + str(shard) if shard else ''}: kept at the end of the results table "
                          "(--restart drops them)")
        summary = Summary(progress.tally, table_path(out, options.results_format))
        if store is not None:
            summary.published = str(remote.object_of(store, summary.results.name))
        unchecked, summary.warnings = _store_access(options, targets, index)
        for warning in summary.warnings:
            progress.note(f"batch: warning: {warning}")
        try:
            journal = Journal(journal_path(out, options.results_format))
        except OSError as e:
            raise UsageError(f"cannot write the results journal in --out {out}: {e.strerror}") from None
        run = Run(Plan(index, unchecked), journal, progress)
        embedded = None
        try:
            calls = run.calls()
            first = next(calls, None)
            read_roots, write_roots = _reference_roots(options, targets, out)
            if first is not None and early is not None:
                embedded = early
                os.replace(embedded.log, out / WORKER_LOG_NAME)  # its stderr follows: the log is now this run's
                embedded.log = out / WORKER_LOG_NAME
                # grpc (~40 ms of imports) is loaded while the worker finishes starting: not with this module,
                # which the run's options need before the worker is launched (tests/worker/test_embedded_start.py).
                importlib.import_module("batch.runner")
                try:
                    await _to_the_end(embedded.wait_serving)
                    targets = grpc_targets(embedded.addresses)
                except LocalWorkerError as e:
                    raise WorkerStartError(str(e)) from e  # its message already says what failed
            limit, connections = _defaults(options, targets, embedded)
            summary.limit, summary.connections = limit, connections
            fleet = Fleet(targets, connections, limit, replace(options.calls, out_root=os.path.realpath(out),
                                                               read_roots=read_roots, write_roots=write_roots))
            where = (f"an embedded worker ({embedded.processes} processes on private Unix sockets in "
                     f"{embedded.socket_dir})" if embedded
                     else ", ".join(targets))
            in_flight = (f"{limit.current} calls in flight, adapting up to {limit.cap}" if limit.adaptive
                         else f"{limit.current} calls in flight")
            share = f" (share {shard} of {manifest_rows:,} rows)" if shard else ""
            results_in = f"{store or _shown(out)}" + (f" (kept in {_shown(out)} while running)" if store else "")
            if first is None:
                progress.note(f"batch: nothing to run{share}: {_settled(total, run.unrunnable)}; results in "
                              f"{results_in}")
            else:
                progress.note(f"batch: running {total:,} rows{share} on {where}, {in_flight}; results in "
                              f"{results_in}")
            run.give_up_after = max(2 * limit.current, 10)
            await _go(run, None if first is None else itertools.chain([first], calls), fleet, options, stop)
        except asyncio.CancelledError:
            if stop.signum is None and not run.commit_failed:
                raise
            summary.signal = stop.signum
        except BatchError:
            summary.crashed = 2
            raise
        except Exception:
            summary.crashed = 1  # Python's own exit code for what escapes
            raise
        finally:
            stop._closing = True
            try:
                progress.close()
                if embedded is not None:  # it drains while the table and run.json are written, then is waited for
                    embedded.terminate()
            finally:
                forget_folders()
                summary.stopped = run.stopped
                try:
                    _finish(run, journal, index, summary,
                            lambda: _run_info(options, summary, targets, embedded, started_at, manifest_rows), clock,
                            store)
                finally:
                    if embedded is not None:
                        await _to_the_end(embedded.stop)
    return summary


@dataclass(frozen=True)
class Fleet:
    """Where a run's calls go and how, decided once its workers are known."""

    targets: list[str]
    connections: int  # per target
    limit: AdaptiveLimit  # calls in flight
    settings: Settings  # ``RunOptions.calls`` with the run's folders


async def _go(run: Run, rows: Iterator[Row] | None, fleet: Fleet, options: RunOptions, stop: Stop) -> None:
    """The calls for every row of ``rows`` (None: no row needs one), with the group commit running beside them."""
    from batch.channel import Pool  # grpc: see execute
    from batch.runner import fan_out

    # The pool first: its TLS files may be refused (UsageError), and nothing has been started then.
    pool = Pool(fleet.targets, fleet.connections, options.tls) if rows is not None else None
    run.start(on_failure=stop._task.cancel)  # a failed sync stops the run; close() raises its error
    background: list[asyncio.Task] = []
    try:
        if pool is not None:
            await pool.connect()
            fleet.limit.fleet(pool.addresses)  # a name's addresses count now that they are resolved
            background.append(asyncio.create_task(_watch_fleet(pool, fleet.limit, options.resolve_every)))
            if (store := options.out_store) is not None:
                background.append(asyncio.create_task(_checkpoints(run.journal.path, store,
                                                                   options.checkpoint_every)))
            await fan_out(rows, pool, fleet.settings, run.settle, fleet.limit)
    finally:
        stop._closing = True
        try:
            await run.stop()
            run.close()
        finally:
            for task_ in background:
                task_.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if pool is not None:
                await pool.close()


async def _to_the_end(action: Callable[[], T]) -> T:
    """``action()`` in a thread, waited for to the end even when the run is cancelled meanwhile (a child
    worker half started or half stopped cannot be abandoned); the cancellation is raised afterwards."""
    future = asyncio.ensure_future(asyncio.to_thread(action))
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        future.exception()  # retrieved: its own error is not what the caller asked about
        raise asyncio.CancelledError
    return future.result()


async def _watch_fleet(pool: Pool, limit: AdaptiveLimit, every: float) -> None:
    """Resolve the workers' names again every ``every`` seconds: a worker that joins gets calls (and a share
    of the limit) within that, one that leaves gets none."""
    while True:
        await asyncio.sleep(every)
        if await pool.refresh():
            limit.fleet(pool.addresses)


async def _checkpoints(journal: Path, store: Uri, every: float) -> None:
    """Upload the journal to a URI --out every ``every`` seconds, so that a pod that dies loses no more; a store
    that fails is logged, and the run goes on (the upload at its end says so if it fails too)."""
    while True:
        await asyncio.sleep(every)
        size = journal.stat().st_size  # read between groups: whole lines only
        upload = asyncio.ensure_future(asyncio.to_thread(remote.put, journal.parent, journal.name, store, size))
        try:
            await asyncio.shield(upload)
        except asyncio.CancelledError:
            # The run's end uploads the finished table under the same name: this one must not land after it.
            await asyncio.gather(upload, return_exceptions=True)
            raise
        except OSError as e:
            log.warning("cannot upload the journal to %s (the run goes on; next try in %g s): %s", store, every, e)


def _store_access(options: RunOptions, targets: list[str], index: RunIndex) -> tuple[frozenset[str], list[str]]:
    """The object stores whose earlier outputs a resume cannot check, and a warning for each that has some.

    The driver reads and writes a store's objects itself unless named workers take references (--references):
    then a store it has no credentials for is a UsageError, before any call; with references, the workers
    have their own, and only the resume's check that earlier outputs still exist is lost.
    """
    unchecked: set[str] = set()
    warnings: list[str] = []
    for scheme in sorted(index.stores()):
        if (problem := credentials_problem(scheme)) is None:
            continue
        if not (targets and options.references):
            raise UsageError(f"{problem}: the driver reads and writes the manifest's {scheme}:// objects itself "
                             "(or use --references with workers that have credentials of their own)")
        unchecked.add(scheme)
        if earlier := index.earlier_outputs_on(scheme):
            warnings.append(f"cannot check that the {earlier:,} outputs on {scheme}:// of earlier runs still exist "
                            f"({problem}): those rows run again")
    return frozenset(unchecked), warnings


def _settled(total: int, unrunnable: int) -> str:
    """What became of the rows of a run that had no call to make."""
    if total == 0:
        return "the manifest has no rows"
    said = [f"{total - unrunnable:,} of {total:,} rows already done (--restart does them again)"]
    if unrunnable:
        said.append(f"{unrunnable:,} cannot run as written (the error column says why)")
    return ", ".join(said)


def _reference_roots(options: RunOptions, targets: list[str], out: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where the worker reads inputs and writes outputs itself (reference mode), as (read, write) roots.

    The embedded worker shares our file system: rooted at the inputs' folder (the manifest's) and --out (a row
    outside them goes by bytes). Named workers only with --references, under roots of their own that we cannot
    see: every row goes by reference, and a worker's refusal is that row's error.
    """
    if not targets:
        return (os.path.realpath(options.inputs_base),), (os.path.realpath(out),)
    if options.references:
        return ("/",), ("/",)
    return (), ()


@contextlib.contextmanager
def _launched(options: RunOptions, targets: list[str], out: Path) -> Iterator[LocalWorker | None]:
    """The embedded worker when no worker is named, launched before the manifest is read and indexed so that
    both start-ups overlap; stopped at the end (at once when it was not needed or the run could not start).
    Its log takes the place of an earlier run's only once it is used (nothing to run, or a manifest problem,
    leaves that one as it was)."""
    if targets:
        yield None
        return
    read_roots, write_roots = _reference_roots(options, targets, out)
    # On private Unix sockets: it reads and writes files as we do, for us alone.
    worker = LocalWorker(cpu_count(), out / f".{WORKER_LOG_NAME}.starting", private=True,
                         args=("--data-root", *read_roots, "--output-root", *write_roots))
    worker.launch()
    try:
        yield worker
    finally:
        worker.stop()
        if worker.log.name != WORKER_LOG_NAME:
            worker.log.unlink(missing_ok=True)


def _defaults(options: RunOptions, targets: list[str], embedded: LocalWorker | None) -> tuple[AdaptiveLimit, int]:
    """Calls in flight and connections per target when not given.

    Four calls per embedded worker process, on four connections to its socket: with two, a process sometimes
    waited while the single-threaded driver was busy between calls (4 gave
    +6 % on 1920x1080 photos, docs/benchmarks.md); a quarter of the worker's own
    in-flight limit (4 x its 4 threads). For named workers the fleet's size and
    distance are unknown: `PER_ADDRESS` (8) per address to start with, then adapted to what
    they answer (batch/concurrency.py). An explicit --concurrency is kept as given.
    """
    connections = options.connections or (4 if embedded else DEFAULT_CONNECTIONS)
    if options.concurrency:
        return AdaptiveLimit(options.concurrency, options.concurrency, adaptive=False), connections
    if embedded is not None:
        return AdaptiveLimit(4 * embedded.processes, 4 * embedded.processes, adaptive=False), connections
    return AdaptiveLimit.for_addresses(address_count(targets)), connections


def _finish(run: Run, journal: Journal, index: RunIndex, summary: Summary, info, clock: float,
            store: Uri | None = None) -> None:
    """Commit what is settled, write the finished table and run.json (and upload both to a URI --out): each step
    tried whatever the one before did (a full disk must not cost run.json), then one ResultsError naming every
    step that failed."""
    failed: list[str] = []

    def step(what: str, action) -> None:
        try:
            action()
        except OSError as e:
            failed.append(f"{what}: {e.strerror or e}")

    step("cannot journal the last finished rows", run.close)
    step("cannot close the journal", journal.close)
    step(f"cannot write {summary.results.name}", lambda: write_table(index.table(), summary.results))
    if journal.path != summary.results and not failed:
        journal.path.unlink(missing_ok=True)  # the table holds every row now
    summary.elapsed = time.monotonic() - clock
    step("cannot write run.json", lambda: write_run_info(summary.results.parent, info()))
    if store is not None:
        step(f"cannot write the results to {store}",
             lambda: remote.publish(summary.results.parent, store, [summary.results.name, RUN_NAME]))
    if failed:
        raise ResultsError("; ".join(failed) + " (rows already journaled are kept: free the space or fix the "
                           "folder, then run the same command again)")


def _fetch(store: Uri, out: Path, restart: bool) -> None:
    """The results a URI --out holds, into its local cache (resume), or dropped (--restart)."""
    if (problem := credentials_problem(store.scheme)) is not None:
        raise UsageError(f"{problem}: --out is {store}")
    try:
        if restart:
            remote.forget(store)
        else:
            remote.fetch(store, out)
    except OSError as e:
        raise UsageError(f"cannot read the earlier results in --out {store}: {e}") from None


def _check_readable(manifest: Path) -> None:
    try:
        with open(manifest, "rb"):
            pass
    except OSError as e:
        raise ManifestError(manifest, None, f"cannot read the manifest: {e.strerror}") from None


def _index(out: Path, shard: Shard | None) -> RunIndex:
    try:
        return RunIndex(out / INDEX_NAME, shard.index if shard else 0)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"cannot write in --out {out}: {e}") from None


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One run per results folder at a time: two would interleave their journals. The lock file goes when the
    run ends, however it ends."""
    path = out / LOCK_NAME
    while True:
        try:
            # Never through a link planted there: it would lock (and could create) a file anywhere.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"{path} is a symbolic link: refusing to follow it (remove it)") from None
            raise UsageError(f"cannot write in --out {out}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another `batch run` is using {out}; wait for it or choose another --out") from None
            if not _same_file(path, fd):
                continue  # the run before removed it after we opened it: lock the one there now
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while still locked: a run that opened it meanwhile sees it gone, retries
            return


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        return False


def _run_info(options: RunOptions, summary: Summary, targets: list[str], embedded: LocalWorker | None,
              started_at: datetime.datetime, manifest_rows: int) -> dict:
    t = summary.tally
    return {
        "command": list(options.command) or sys.argv,
        "manifest": str(Path(options.manifest).resolve()),
        "shard": options.shard.info() if options.shard else None,
        "manifest_sha256": _fingerprint(Path(options.manifest)),
        "manifest_rows": manifest_rows,
        "shard_rows": t.rows,
        "out": str(options.out_store or options.out_dir),
        "base": str(options.inputs_base),
        "workers": {
            "targets": targets,
            "embedded": embedded is not None,
            "embedded_processes": embedded.processes if embedded else None,
            "answered": dict(sorted(t.workers.items())),
            "rows_by_reference": t.by_reference,
        },
        "settings": {
            "timeout_s": options.calls.timeout, "retries": options.calls.retries,
            "concurrency": summary.limit.current if summary.limit else None,
            "concurrency_peak": round(summary.limit.peak) if summary.limit else None,
            "concurrency_adaptive": summary.limit.adaptive if summary.limit else None,
            "connections_per_target": summary.connections, "results_format": options.results_format,
            "restart": options.restart, "tls": options.tls is not None,
        },
        "versions": {
            "imagebatch": _version("imagebatch"), "grpcio": _version("grpcio"),
            "protobuf": _version("protobuf"), "python": platform.python_version(),
            "face_models": sorted(t.models),
        },
        "started_at": started_at.isoformat(timespec="milliseconds"),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "elapsed_s": round(summary.elapsed, 3),
        "counts": {"rows": t.rows, "ok": t.ok, "failed": t.failed, "skipped_already_done": t.skipped,
                   "not_run": t.not_run},
        "failed_by_reason": dict(t.reasons.most_common()),
        "throughput_rows_per_s": round(t.rate(summary.elapsed), 2) if summary.elapsed > 0 else None,
        "interrupted": summary.signal is not None,
        "signal": signal.Signals(summary.signal).name if summary.signal is not None else None,
        "stopped": summary.stopped,
        "warnings": summary.warnings,
        "exit_code": summary.exit_code,
        "results": summary.published or str(summary.results),
    }


def _fingerprint(manifest: Path) -> str | None:
    try:
        return file_sha256(manifest)
    except OSError:  # gone since it was read: run.json is still worth writing
        return None


def _version(package: str) -> str | None:
    from importlib import metadata  # ~7 ms, for run.json only

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _shown(path: Path | None) -> str:
    if path is None:
        return "-"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
