"""The driver as a library: ``run`` a manifest through workers and get its results table back.

    import batch
    frame = batch.run("photos.csv", concurrency=8)                     # results/photos/, the CLI's default
    frame = batch.run(paths_frame, out="results/mine", workers=["10.0.0.5:50051"])
    figures = batch.report("results/mine")                              # what `batch report --json` prints

``run`` is ``batch run``: the same checks, results folder, resume and
durability, with the CLI's options as keyword arguments; problems of the run
raise ``BatchError`` subclasses (batch/errors.py) where the CLI exits 2.
``run_async`` is the same for async callers, cancellable with its task;
``run`` works from plain code, from a thread and inside a running event loop
(Jupyter), where it runs its own loop in a worker thread. Nothing here
installs signal handlers, prints unless asked (``progress``) or leaves
process-wide state behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.concurrency import BATCH_ROWS
from batch.errors import RunStopped, UsageError
from batch.progress import MODES, Tally
from batch.results import MANIFEST_NAME

if TYPE_CHECKING:
    import pandas as pd

    from batch.session import RunOptions, Summary
    from batch.shard import Shard

Manifest = str | os.PathLike | Iterable[Mapping[str, Any]]
Progress = str | Callable[[Tally], None] | None
MANIFEST_COLUMNS = ("path", "op", "rotation", "output", "id")
# The highest of every seconds option: gRPC turns a deadline of ~9e9 s or more (and inf, nan) into one already
# past, and asyncio.sleep overflows on huge values; a day is far beyond any call or interval that makes sense.
DAY = 86400.0
MAX_CONCURRENCY, MAX_RETRIES, MAX_CONNECTIONS, MAX_BATCH_ROWS = 100_000, 1_000, 1_024, 4_096


def configure(manifest: str | os.PathLike, *, out: str | os.PathLike | None = None,
              workers: str | Iterable[str] = (), progress: Progress = None, base: str | os.PathLike | None = None,
              concurrency: int | None = None, timeout: float = 60.0, retries: int = 6, restart: bool = False,
              tls_ca: str | os.PathLike | None = None, tls_cert: str | os.PathLike | None = None,
              tls_key: str | os.PathLike | None = None, tls_server_name: str | None = None,
              results_format: str = "csv", connections: int | None = None,
              name: str | None = None, format: str | None = None, quality: int | None = None,  # noqa: A002
              rotation: str | int | None = None, references: bool = False, resolve_every: float = 5.0,
              shard: str | Shard | None = None, checkpoint_every: float = 60.0, batch_rows: int = BATCH_ROWS,
              command: Iterable[str] = ()) -> RunOptions:
    """The run's configuration from the CLI's options, checked once: UsageError naming the option otherwise.

    ``workers`` are addresses (``HOST:PORT``, ``dns:///NAME:PORT``, comma-separated lists); none: an embedded
    worker. ``progress`` is "bar", "notebook" (tqdm's widget in Jupyter), "lines", "quiet" or None (nothing),
    or a callable given the run's ``Tally`` at each change. ``base`` is the folder relative input paths are
    relative to (default: the manifest's). ``shard`` is "K/N", or "N" with K from the environment as for
    ``--shard`` (batch/shard.py). ``out`` may be an object-store URI (``s3://bucket/prefix``), as for ``--out``.
    """
    from batch.extras import require_pyarrow
    from batch.manifest import AUTO, check_template, format_name, parse_rotation
    from batch.session import RunOptions
    from batch.settings import Settings
    from batch.shard import parse_shard
    from batch.store import is_uri, parse
    from batch.targets import worker_addresses

    # Upper bounds far past any use, so that a typo is an error rather than a run that cannot be held in memory.
    _check_int("concurrency", concurrency, 1, optional=True, maximum=MAX_CONCURRENCY)
    _check_int("retries", retries, 0, maximum=MAX_RETRIES)
    _check_int("connections", connections, 1, optional=True, maximum=MAX_CONNECTIONS)
    _check_int("quality", quality, 1, optional=True, maximum=100)
    _check_int("batch_rows", batch_rows, 1, maximum=MAX_BATCH_ROWS)
    for option, value, low in (("--timeout", timeout, 0.001), ("--resolve-every", resolve_every, 0.1),
                               ("--checkpoint-every", checkpoint_every, 0.1)):
        if problem := seconds_problem(option, value, low, DAY):
            raise UsageError(problem)
    if (tls_cert or tls_key) and not tls_ca:
        raise UsageError("--tls-cert/--tls-key need --tls-ca (the CA that signed the workers' certificates)")
    if tls_server_name and not tls_ca:
        raise UsageError("--tls-server-name needs --tls-ca (it names what the workers' certificates bear)")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    fmt = None
    if format is not None and (fmt := format_name(str(format))) is None:
        raise UsageError(f"--format {format!r}: not one of jpeg, png, webp, tiff, bmp, gif")
    if results_format not in ("csv", "parquet"):
        raise UsageError(f"--results-format {results_format!r}: not csv or parquet")
    if results_format == "parquet":
        require_pyarrow()  # before anything runs, not at the first results written
    if name is not None and (problem := check_template(name)):
        raise UsageError(problem)
    if rotation is not None:
        rotation = str(rotation)
        if rotation.lower() != AUTO and (problem := parse_rotation(rotation)[1]):
            raise UsageError(f"--rotation: {problem}")
    if not (progress is None or callable(progress) or progress in MODES):
        raise UsageError(f"progress {progress!r}: not one of {', '.join(MODES)}, None or a callable")
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if out is not None and is_uri(str(out)):  # the session takes it as it is: a Uri
        try:
            uri = parse(str(out))
        except ValueError as e:
            raise UsageError(f"--out {e}") from None
        if not uri.writable:
            raise UsageError(f"--out {out}: {uri.scheme}:// is read-only")
        out = uri
    addresses = [workers] if isinstance(workers, str) else list(workers)
    tls = None
    if tls_ca:
        from batch.channel import Tls  # grpc: not loaded for a run without TLS before its embedded worker starts

        tls = Tls(Path(tls_ca), _path(tls_cert), _path(tls_key), tls_server_name)
    return RunOptions(
        manifest=Path(manifest), out=out if out is None or is_uri(str(out)) else Path(out),
        workers=tuple(worker_addresses(addresses, environ={})), concurrency=concurrency,
        calls=Settings(timeout=float(timeout), retries=retries, quality=quality or 0, batch_rows=batch_rows),
        restart=bool(restart),
        tls=tls,
        results_format=results_format, connections=connections, name_template=name, output_format=fmt,
        rotation=rotation, references=bool(references), resolve_every=float(resolve_every),
        progress=progress if isinstance(progress, str) else "quiet",
        on_progress=progress if callable(progress) else None, command=tuple(command),
        base=Path(base) if base is not None else None, shard=shard, checkpoint_every=float(checkpoint_every),
    )


def run(manifest: Manifest, *, out: str | os.PathLike | None = None, workers: str | Iterable[str] = (),
        progress: Progress = None, **options: Any) -> pd.DataFrame:
    """Run every row of ``manifest`` through the workers; the results table, one row per manifest row.

    ``manifest`` is a CSV file, a pandas DataFrame or an iterable of dicts with the manifest's columns (path,
    op, rotation, output, id; relative paths are relative to the current folder, and ``out`` is required).
    ``options`` are ``batch run``'s options as keyword arguments (``concurrency=4``, ``timeout=30``,
    ``references=True``, ``name="{stem}_{rotation}{ext}"``, ``restart=True``, ...; see ``configure``).
    Resumable like the command: the same call again skips rows already ok. Raises UsageError, ManifestError,
    ResultsError, WorkerStartError or RunStopped (all BatchError); failed rows are rows of the table
    (``status`` "error", with ``error`` and ``reason``).
    """
    from batch.session import execute

    config = _configured(manifest, out, workers, progress, options)
    return _finished(_wait(lambda: execute(config)))


async def run_async(manifest: Manifest, *, out: str | os.PathLike | None = None, workers: str | Iterable[str] = (),
                    progress: Progress = None, **options: Any) -> pd.DataFrame:
    """``run`` for async callers, in the running loop. Cancelling the task stops the run: the rows finished
    are kept (the same call again finishes the rest) and CancelledError is raised once they are written."""
    from batch.session import execute

    config = _configured(manifest, out, workers, progress, options)
    return _finished(await execute(config))


def read_results(*outs: str | os.PathLike) -> pd.DataFrame:
    """The results table of ``outs`` (one results folder, or the shards of one manifest) as a DataFrame: one
    row per id, typed by the column specification (batch/results.py), in the manifest's order where it can
    be found (batch/report/api.py)."""
    from batch.report import api

    return api.read_results(*outs)


def report(*outs: str | os.PathLike, html: str | os.PathLike | None = None) -> dict:
    """The figures of `batch report --json` for ``outs`` (one results folder, or the shards of one manifest),
    as a dict; with ``html``, the HTML report is written there too (its path under "html")."""
    from batch.report import api

    return api.report(*outs, html=html)


def _configured(manifest: Manifest, out, workers, progress: Progress, options: dict[str, Any]) -> RunOptions:
    if isinstance(manifest, str | os.PathLike):
        return configure(manifest, out=out, workers=workers, progress=progress, **_known(options))
    if out is None:
        raise UsageError("out is required when the manifest is not a file: the folder for results and outputs")
    base = Path.cwd()
    config = configure(Path(out) / MANIFEST_NAME, out=out, workers=workers, progress=progress, base=base,
                       **_known(options))
    _write_manifest(manifest, config.out_dir)
    return config


def _known(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UsageError(f"unknown option {', '.join(unknown)}; the options are {', '.join(sorted(_OPTIONS))}")
    return options


_OPTIONS = ("concurrency", "timeout", "retries", "restart", "tls_ca", "tls_cert", "tls_key", "tls_server_name",
            "results_format", "connections", "name", "format", "quality", "rotation", "references", "resolve_every",
            "shard", "checkpoint_every", "batch_rows")


def _write_manifest(rows: Iterable[Mapping[str, Any]], out: Path) -> None:
    """``rows`` as the run's manifest, ``out/manifest.csv`` (replaced atomically: a run that holds the folder
    reads the one it started with)."""
    import csv

    from batch.durable import atomic_file

    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    columns = [c for c in MANIFEST_COLUMNS if any(c in r for r in records)] or ["path", "op"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / MANIFEST_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([_cell(r.get(c)) for c in columns] for r in records)
    except OSError as e:
        raise UsageError(f"cannot write the manifest in {out}: {e.strerror or e}") from None


def _cell(value: Any) -> str:
    """A manifest cell from a frame's value: missing as empty, 90.0 (a number column with gaps) as 90."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("<NA>", "NaT"):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _finished(summary: Summary) -> pd.DataFrame:
    if summary.stopped:
        raise RunStopped(summary.line(), summary.results.parent)
    return read_results(summary.results.parent).head(summary.tally.rows)


def _wait(start: Callable[[], Any]) -> Any:
    """Run the coroutine ``start()`` makes to its end on a loop of its own: in this thread, or in a worker
    thread when this one runs a loop already (Jupyter). An interrupt meanwhile cancels the run, which then
    finishes writing its results before the interrupt goes on."""
    loop = asyncio.new_event_loop()  # never set as a thread's loop: nothing of it outlives the call
    task = loop.create_task(start())
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _drive(loop, task)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch-run") as pool:
        future = pool.submit(_drive, loop, task)
        try:
            return future.result()
        except KeyboardInterrupt:
            loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                future.result()
            raise


def _drive(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> Any:
    """``task`` run on ``loop`` to its end in this thread, then the loop closed with its threads."""
    try:
        try:
            return loop.run_until_complete(task)
        except KeyboardInterrupt:  # Ctrl-C in plain code: in the loop's own thread
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                loop.run_until_complete(task)
            raise
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _path(value: str | os.PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


def _check_int(name: str, value: Any, minimum: int, *, optional: bool = False, maximum: int | None = None) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"--{_flag(name)} {value!r}: not a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"--{_flag(name)} must be {bound} (got {value})")


def seconds_problem(option: str, value: float, low: float, high: float) -> str | None:
    """Why ``value`` is no good for a seconds option (not a finite number from ``low`` to ``high``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        return f"{option} {value!r}: expected a number of seconds from {low:g} to {high:g}"
    return None


def _flag(name: str) -> str:
    return name.replace("_", "-")
