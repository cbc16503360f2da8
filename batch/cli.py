"""`batch` command line: run a manifest, report on its results."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from batch.concurrency import BATCH_ROWS, DEFAULT_CAP, PER_ADDRESS
from batch.errors import BatchError, UsageError
from batch.report.command import report
from worker.grpc_logging import quiet_grpc

_file = click.Path(exists=True, dir_okay=False, path_type=Path)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Commands(click.Group):
    """Every subcommand's BatchError (a run that cannot start or go on) is one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BatchError as e:
            click.echo(f"batch {ctx.invoked_subcommand}: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imagebatch")
def main() -> None:
    """Run a CSV manifest of images through imagebatch workers."""


class _AboveTheBar(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # at the first record: a run that logs nothing never imports it (~50 ms)

        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging(verbose: int, log_level: str | None) -> None:
    """The driver's log (retries, reconnects, busy refusals, slow rows) on stderr, printed above a
    progress bar rather than through it."""
    level = log_level.upper() if log_level else ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    handler = _AboveTheBar()
    handler.setFormatter(logging.Formatter("%(asctime)s batch %(levelname)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("batch")
    for earlier in [h for h in logger.handlers if isinstance(h, _AboveTheBar)]:
        logger.removeHandler(earlier)  # an earlier `batch run` in this process: each line once, not once a run
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class _ShardType(click.ParamType):
    """--shard as batch.shard.Shard (the index from the environment for "N" alone), parsed where click parses."""

    name = "shard"

    def convert(self, value, param, ctx):
        from batch.shard import Shard, parse_shard

        if isinstance(value, Shard):
            return value
        try:
            return parse_shard(value)
        except UsageError as e:
            self.fail(str(e), param, ctx)


_SHARD = _ShardType()


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--worker", "workers", multiple=True, metavar="HOST:PORT",
              help="A worker to use (repeatable, or comma-separated; also dns:///NAME:PORT for every address a "
                   "name resolves to). Default: $BATCH_WORKER, else an embedded worker with one process per CPU.")
@click.option("--out", metavar="DIR|URI", default=None,
              show_default="results/<manifest name>, results/<manifest name>/shard-K-of-N with --shard",
              help="Folder for results, run.json and rotated images; or an object-store URI (s3://bucket/prefix) "
                   "that gets them, the journal kept in a local cache meanwhile (docs/batch.md).")
@click.option("--checkpoint-every", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="With a URI --out: how often the journal is uploaded while the run goes (what a new machine "
                   "resumes from; 0.1 to 86400).")
@click.option("--shard", type=_SHARD, metavar="K/N|N", envvar="BATCH_SHARD", default=None,
              help="Run only share K (0 <= K < N) of the manifest's rows, one of N drivers sharing it; with N alone, "
                   "K is $JOB_COMPLETION_INDEX (Kubernetes Indexed Job), else $SLURM_ARRAY_TASK_ID (minus "
                   "$SLURM_ARRAY_TASK_MIN). Also $BATCH_SHARD. See docs/batch.md, Scaling past one driver.")
@click.option("--concurrency", type=click.IntRange(1), default=None,
              show_default=f"4 per embedded worker process; for named workers {PER_ADDRESS} per address, adapted to "
                           f"their latency and busy refusals up to {DEFAULT_CAP}",
              help="Calls in flight, fixed at this number.")
@click.option("--batch-rows", type=click.IntRange(1), default=BATCH_ROWS, show_default=True, metavar="N",
              help="Rows per call for rows by reference and images of at most 64 KiB (RotateBatch, ClassifyBatch): "
                   "fewer calls for the same rows, each row still answered, retried and counted alone; 1: one "
                   "row per call; rows whose calls take long go fewer to a call. A worker without the batch calls "
                   "gets one row per call.")
@click.option("--timeout", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="Seconds each call may take (0.001 to 86400).")
@click.option("--retries", type=click.IntRange(0), default=6, show_default=True,
              help="Retries of a call that failed with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED "
                   "(exponential backoff with jitter: the default rides out ~30-50 s of a worker being away).")
@click.option("--restart", is_flag=True, help="Start over: forget earlier results in --out (default: resume).")
@click.option("--quiet", is_flag=True, help="Print only the final summary line.")
@click.option("--tls-ca", type=_file, help="PEM CA bundle to verify the workers' certificates; enables TLS.")
@click.option("--tls-cert", type=_file, help="PEM client certificate, for workers that require one (mTLS).")
@click.option("--tls-key", type=_file, help="PEM private key of --tls-cert.")
@click.option("--tls-server-name", metavar="NAME",
              help="The name the workers' certificates must bear, whatever address --worker gives (an IP, say); "
                   "default: the host of --worker.")
@click.option("--results-format", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
              help="results.csv, or results.parquet (then results.journal.csv while running).")
@click.option("--connections", type=click.IntRange(1), default=None,
              show_default="8 per worker address; 4 per process for the embedded worker",
              help="HTTP/2 connections per worker address: keep it above a worker's process count so that each "
                   "of its processes gets calls.")
@click.option("--name", metavar="TEMPLATE", default=None,
              help="Names of the default outputs (rows without an output), under --out/rotated: fields {folder} "
                   "(the input's folder relative to the manifest's), {stem}, {ext} (with its dot), {rotation} "
                   "(0, 90, 180 or 270) and {id}, e.g. '{folder}/{stem}_{rotation}{ext}'. Default: the input's "
                   "own path, with .r<rotation> before the extension when rows rotate one input several ways.")
@click.option("--format", metavar="FORMAT", default=None,
              help="Convert every rotated output to FORMAT (jpeg, png, webp, tiff, bmp, gif); default outputs take "
                   "its extension. An output cell's own extension names its format in any case.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              show_default="the input's own when the format stays, else 90",
              help="Quality of lossy outputs (JPEG, WebP).")
@click.option("--rotation", metavar="DEGREES|auto", default=None,
              help="Rotation of rows whose rotation cell is empty: degrees, or auto (upright: the EXIF orientation "
                   "applied and reset, else the largest face upright, else unchanged).")
@click.option("--references", is_flag=True,
              help="Reference mode for named workers on shared storage: send each row's input and output path "
                   "instead of the image's bytes; the workers read and write the files themselves (worker serve "
                   "--data-root/--output-root). The embedded worker always does so for files under the manifest's "
                   "folder and --out.")
@click.option("--resolve-every", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="How often to look the workers' DNS names up again, so that workers joining a name get calls "
                   "and leaving ones none (0.1 to 86400).")
@click.option("-v", "--verbose", count=True,
              help="Log retries, reconnects, busy refusals and slow rows as they happen (-vv: debug).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              show_default="WARNING, INFO with -v", help="The driver's log level (overrides -v).")
def run(manifest: Path, workers: tuple[str, ...], quiet: bool, verbose: int, log_level: str | None,
        **options) -> None:
    """Run every row of MANIFEST (CSV: path, op, rotation, output, id) through the workers.

    Resumable: the same command again skips rows already ok and retries the rest.
    Exit status: 0 all rows ok, 1 some rows failed, 2 the run could not start
    (manifest, usage or worker problem), 130 interrupted (SIGINT, Ctrl-C),
    143 stopped by SIGTERM; results are flushed in both cases.
    """
    quiet_grpc(debug=verbose >= 2 or (log_level or "").upper() == "DEBUG")  # before anything imports grpc

    from batch import demo
    from batch.api import configure
    from batch.progress import choose_mode
    from batch.targets import worker_addresses

    config = configure(manifest, workers=worker_addresses(workers), progress=choose_mode(quiet),
                       command=("batch", *sys.argv[1:]), **options)
    _configure_logging(verbose, log_level)
    if demo.is_missing_default(manifest):
        demo.write_demo(manifest.parent)
        if not quiet:
            click.echo(f"batch: wrote the demo manifest and its images to {manifest.parent}/", err=True)
    try:
        summary = asyncio.run(_until_signalled(config))
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers were set
        click.echo("batch run: interrupted before any row ran", err=True)
        sys.exit(128 + signal.SIGINT)
    click.echo(summary.line())
    sys.exit(summary.exit_code)


async def _until_signalled(config):
    """The run, SIGINT and SIGTERM stopping it (it keeps what it finished; the summary names the signal)."""
    from batch.session import Stop, execute

    loop = asyncio.get_running_loop()
    stop = Stop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await execute(config, stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@main.command("demo")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("manifests"))
def demo_command(folder: Path) -> None:
    """Write the demo manifest (demo.csv) and its images (demo-images/) into FOLDER (default: manifests).

    Nothing is downloaded. Then: batch run FOLDER/demo.csv
    """
    from batch import demo

    manifest = folder / demo.MANIFEST_NAME
    if manifest.exists() and not demo.is_demo(manifest):
        raise UsageError(f"{manifest} exists and is not the demo manifest; choose another folder")
    demo.write_demo(folder)
    click.echo(f"wrote {manifest} and its images in {folder / demo.IMAGES_DIR}; run it with: batch run {manifest}")


main.add_command(report)
