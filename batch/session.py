"""One `batch run`: lock the results folder, index the manifest, reach the workers, fan out, finish the table.

Order matters for the promises the command makes: the whole manifest is
checked (exit 2) before any worker is started or called; a finished row is
journaled only once its output is durable (batch/durable.py: group commit),
and reported only once journaled; the finished table and
run.json are written however the run ends (done, Ctrl-C, error).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from batch import demo
from batch.channel import DEFAULT_CONNECTIONS, Pool, Tls, address_count, connect_failure, grpc_targets
from batch.durable import Entry, GroupCommit
from batch.errors import BatchError, UsageError
from batch.index import RunIndex
from batch.manifest import Row, read_rows
from batch.progress import Progress
from batch.results import (
    ERROR,
    OK,
    Journal,
    Outcome,
    already_done,
    journal_path,
    read_results,
    result_files,
    result_row,
    table_path,
    write_run_json,
    write_table,
)
from batch.runner import Settings, fan_out
from worker.local import LocalWorker, LocalWorkerError, cpu_count

CONNECT_TIMEOUT = 30.0  # seconds to wait for a named worker to answer health checks before giving up
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class RunOptions:
    manifest: Path
    out: Path | None = None
    workers: tuple[str, ...] = ()  # addresses; empty: the embedded worker
    concurrency: int | None = None
    timeout: float = 60.0
    retries: int = 6
    restart: bool = False
    tls: Tls | None = None
    results_format: str = "csv"
    connections: int | None = None
    progress: str = "lines"  # "bar", "lines" or "quiet"
    command: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        return Path(os.path.abspath(self.out or Path("results") / Path(self.manifest).stem))


@dataclass
class Summary:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # ok from an earlier run, not run again
    interrupted: bool = False
    elapsed: float = 0.0
    results: Path | None = None
    workers: dict[str, int] = field(default_factory=dict)  # "host:port/pid" -> calls answered
    models: set[str] = field(default_factory=set)  # "name version" of the face models that answered
    concurrency: int | None = None
    connections: int | None = None
    stopped: str | None = None  # why the run stopped early without an interrupt

    @property
    def not_reached(self) -> int:
        return self.rows - self.ok - self.failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.stopped else EXIT_OK

    def line(self) -> str:
        worked = self.ok + self.failed - self.skipped
        rate = worked / self.elapsed if self.elapsed > 0 else 0.0
        skipped = f" ({self.skipped:,} already done)" if self.skipped else ""
        text = (f"{self.rows:,} rows: {self.ok:,} ok{skipped}, {self.failed:,} failed in {self.elapsed:.1f} s "
                f"({rate:.1f} rows/s)")
        if self.interrupted:
            text = (f"interrupted: {text}, {self.not_reached:,} not run; "
                    "run the same command again to finish (rows already ok are skipped)")
        elif self.stopped:
            text = (f"stopped: {self.stopped}: {text}, {self.not_reached:,} not run; "
                    "run the same command again once workers are up")
        elif self.failed:
            text += f"; see the error column of {_shown(self.results)}"
        return f"{text}. Results: {_shown(self.results)}"


def run_batch(options: RunOptions) -> Summary:
    """Run ``options.manifest`` to the end (or Ctrl-C). Raises ManifestError, UsageError, ResultsError or
    LocalWorkerError, all before any row is run."""
    out = options.out_dir
    started_at = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    if options.concurrency is not None and options.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    targets = grpc_targets(list(options.workers))  # checks the addresses before anything is written
    if demo.is_demo(options.manifest):
        demo.ensure_demo_images(Path(options.manifest).resolve().parent)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out), contextlib.closing(RunIndex(out / ".batch-index.sqlite")) as index:
        total = index.add_rows(read_rows(Path(options.manifest), out), Path(options.manifest))
        if options.restart:
            for path in result_files(out):
                path.unlink()
        else:
            for path in result_files(out):
                index.add_previous(read_results(path))
        summary = Summary(rows=total, results=table_path(out, options.results_format))
        journal = Journal(journal_path(out, options.results_format))
        progress = Progress(total, options.progress)
        embedded = None
        try:
            if not targets and _needs_a_worker(index):
                processes = cpu_count()
                embedded = LocalWorker(processes, out / "worker.log")
                try:
                    targets = grpc_targets([embedded.start()])
                except LocalWorkerError as e:
                    raise BatchError(str(e)) from e  # its message already says what failed
            concurrency, connections = _defaults(options, targets, embedded)
            summary.concurrency, summary.connections = concurrency, connections
            where = (f"an embedded worker ({embedded.processes} processes at {embedded.address})" if embedded
                     else ", ".join(targets) or "no worker (nothing to run)")
            progress.note(f"batch: running {total:,} rows on {where}, {concurrency} calls in flight; "
                          f"results in {_shown(out)}")
            settings = Settings(concurrency=concurrency, timeout=options.timeout, retries=options.retries)
            summary.interrupted = _run_rows(index, journal, progress, summary, targets, connections, settings,
                                            options.tls)
        except KeyboardInterrupt:  # Ctrl-C while the embedded worker was starting
            summary.interrupted = True
        finally:
            progress.close()
            if embedded is not None:
                embedded.stop()
            journal.close()
            write_table(index.table(), summary.results)
            if journal.path != summary.results:
                journal.path.unlink(missing_ok=True)
            summary.elapsed = time.monotonic() - clock
            write_run_json(out / "run.json", _run_info(options, summary, targets, embedded, started_at))
    return summary


def _needs_a_worker(index: RunIndex) -> bool:
    return any(not row.error and not already_done(row, previous) for row, _problem, previous in index.rows_checked())


def _defaults(options: RunOptions, targets: list[str], embedded: LocalWorker | None) -> tuple[int, int]:
    """Calls in flight and connections per target when not given.

    Four calls per embedded worker process: with two, a process sometimes
    waited while the single-threaded driver was busy between calls (4 gave
    +6 % on 1920x1080 photos, docs/benchmarks.md); a quarter of the worker's own
    in-flight limit (4 x its 4 threads). For named workers the process count
    is unknown: 8 per address.
    """
    if embedded is not None:
        concurrency = 4 * embedded.processes
        connections = max(DEFAULT_CONNECTIONS, 4 * embedded.processes)
    else:
        concurrency = 8 * max(1, address_count(targets))
        connections = DEFAULT_CONNECTIONS
    return options.concurrency or concurrency, options.connections or connections


async def _connect(pool: Pool, targets: list[str], tls: Tls | None) -> None:
    """Wait for a worker to answer; fail at once when gRPC's error shows waiting cannot help (TLS mismatch)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    reason = "no answer"
    while True:
        if await pool.wait_ready(min(2.0, max(deadline - time.monotonic(), 0.1))):
            return
        answers = await pool.probe()
        if None in answers:
            return
        # A diagnosis that waiting cannot fix (a TLS mismatch) wins over "connection refused" from another address.
        reason, final = max((connect_failure(details, tls) for details in answers), key=lambda rf: rf[1])
        if final or time.monotonic() >= deadline:
            break
    raise UsageError(
        f"no worker answered at {', '.join(targets)}"
        + ("" if final else f" within {CONNECT_TIMEOUT:.0f} s")
        + f": {reason}"
    )


def _run_rows(index: RunIndex, journal: Journal, progress: Progress, summary: Summary, targets: list[str],
              connections: int, settings: Settings, tls: Tls | None) -> bool:
    """The asynchronous part; returns True when interrupted by SIGINT/SIGTERM."""
    # When no worker answers for this many rows in a row, stop instead of failing the whole manifest slowly.
    give_up_after = max(2 * settings.concurrency, 10)
    unanswered = 0

    def finished(row: Row, outcome: Outcome) -> None:
        nonlocal unanswered
        unanswered = unanswered + 1 if outcome.gave_up else 0 if outcome.worker else unanswered
        if unanswered >= give_up_after and not summary.stopped:
            summary.stopped = f"no worker answered for {unanswered} rows in a row ({outcome.error})"
        group.add((row, outcome, result_row(row, outcome)), outcome.output or None)

    def commit(entries: list[Entry]) -> None:
        """A group whose outputs are durable: journal it (one flush), then count and report it."""
        results = [result for _row, _outcome, result in entries]
        journal.append_many(results)  # first: a crash right after still keeps these rows
        index.record_many(results)
        for _row, outcome, _result in entries:
            if outcome.status == OK:
                summary.ok += 1
            else:
                summary.failed += 1
            if outcome.model:
                summary.models.add(outcome.model)
            if outcome.worker:
                summary.workers[outcome.worker] = summary.workers.get(outcome.worker, 0) + 1
            progress.update(outcome.status == OK)

    group = GroupCommit(commit)

    def to_run() -> Iterator[Row]:
        """Rows that need a call; the others are settled here without one."""
        for row, problem, previous in index.rows_checked():
            if summary.stopped:
                return
            if row.error is not None or problem:
                finished(row, Outcome(ERROR, error=row.error or problem))
                continue
            if already_done(row, previous):
                summary.ok += 1
                summary.skipped += 1
                progress.update(True, skipped=True)
                continue
            yield row

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        interrupted = closing = False

        def on_signal() -> None:
            nonlocal interrupted
            if not closing:  # once the calls are over, the last group is flushed whatever happens
                interrupted = True
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        pool = Pool(targets, connections, tls) if targets else None
        committer = asyncio.create_task(group.run())
        committer.add_done_callback(lambda t: t.cancelled() or task.cancel())  # a failed sync stops the run
        try:
            rows = to_run()
            first = next(rows, None)
            if first is not None:
                await _connect(pool, targets, tls)
                await fan_out(_chain(first, rows), pool, settings, finished)
        except asyncio.CancelledError:
            if not interrupted and not committer.done():
                raise
        finally:
            closing = True
            try:
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committer  # raises the SyncError that stopped the run, if one did
            finally:
                try:
                    group.flush()  # every row finished so far: durable, then journaled
                finally:
                    group.close()
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(sig)
                    if pool is not None:
                        await pool.close()
        return interrupted

    return asyncio.run(main())


def _chain(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One run per results folder at a time: two would interleave their journals."""
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `batch run` is using {out}; wait for it or choose another --out") from None
        yield


def _run_info(options: RunOptions, summary: Summary, targets: list[str], embedded: LocalWorker | None,
              started_at: datetime.datetime) -> dict:
    worked = summary.ok + summary.failed - summary.skipped
    return {
        "command": list(options.command) or sys.argv,
        "manifest": str(Path(options.manifest).resolve()),
        "out": str(options.out_dir),
        "workers": {
            "targets": targets,
            "embedded": embedded is not None,
            "embedded_processes": embedded.processes if embedded else None,
            "answered": dict(sorted(summary.workers.items())),
        },
        "settings": {
            "timeout_s": options.timeout, "retries": options.retries, "concurrency": summary.concurrency,
            "connections_per_target": summary.connections, "results_format": options.results_format,
            "restart": options.restart, "tls": options.tls is not None,
        },
        "versions": {
            "imagebatch": _version("imagebatch"), "grpcio": _version("grpcio"),
            "protobuf": _version("protobuf"), "python": platform.python_version(),
            "face_models": sorted(summary.models),
        },
        "started_at": started_at.isoformat(timespec="milliseconds"),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "elapsed_s": round(summary.elapsed, 3),
        "counts": {"rows": summary.rows, "ok": summary.ok, "failed": summary.failed,
                   "skipped_already_done": summary.skipped, "not_run": summary.not_reached},
        "throughput_rows_per_s": round(worked / summary.elapsed, 2) if summary.elapsed > 0 else None,
        "interrupted": summary.interrupted,
        "stopped": summary.stopped,
        "exit_code": summary.exit_code,
        "results": str(summary.results),
    }


def _version(package: str) -> str | None:
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
