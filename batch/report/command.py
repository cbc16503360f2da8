"""The `batch report` click command: a thin layer over table, figures and the renderers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batch.results import PARQUET_NAME, is_bookkeeping
from batch.store import is_uri

if TYPE_CHECKING:
    from batch.report.table import Results


class _Failed(click.ClickException):
    """No report: the folder cannot be read or the report cannot be written. Exit 2, as for `batch run`."""

    exit_code = 2


def _merge_target(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix not in (".csv", Path(PARQUET_NAME).suffix):
        raise click.BadParameter(f"{value}: name a .csv or .parquet file (the format goes by the name)")
    return value


@click.command()
@click.argument("results_dirs", metavar="RESULTS_DIR...", nargs=-1, required=True)
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Where to write the HTML report (default: RESULTS_DIR/report.html; for several folders, report.html in "
         "the folder that holds them all; for folders in an object store, report.html here).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object instead of text.")
@click.option(
    "--merge", "merge_path", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_merge_target,
    help="Also write the folders' rows as one results table, one row per id in the manifest's order: CSV, or "
         "Parquet for a .parquet name.",
)
@click.option(
    "--spreadsheet", "spreadsheet_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the table as a CSV that is safe to open in a spreadsheet: cells that would run as formulas "
         "(beginning with = + - @) are marked as text with a leading apostrophe. results.csv stays exact.",
)
def report(results_dirs: tuple[str, ...], html_path: Path | None, as_json: bool, merge_path: Path | None,
           spreadsheet_path: Path | None) -> None:
    """Summarise a results folder written by `batch run`, or the folders of
    the shards of one manifest (`batch run --shard K/N`) as one run. A
    folder may be in an object store (`batch run --out s3://bucket/prefix`).

    Prints what ran and when (every leg: the first run, each resume, each
    shard, and totals over them), rows by op and status, labels, latency and
    throughput, calls per worker, the failures by reason (each with a sample
    message) and the slowest rows, and writes one self-contained HTML file (charts, before/after and
    classification galleries, failed rows) that opens offline. Of shards, it
    says which are missing or unfinished.

    Works on a run that is still going or was interrupted: it reports the
    rows finished so far.
    """
    # Imported here: pandas and Pillow would slow every `batch` command's start, `batch run` included.
    from batch.errors import BatchError
    from batch.report.table import load

    with tempfile.TemporaryDirectory(prefix="imagebatch-report-") as scratch:  # a store's folders, read here
        try:
            results = load(*results_dirs, scratch=Path(scratch))
        except BatchError as err:
            raise _Failed(str(err)) from err
        _report(results, results_dirs, html_path, as_json, merge_path, spreadsheet_path)


def _report(results: Results, results_dirs: tuple[str, ...], html_path: Path | None, as_json: bool,
            merge_path: Path | None, spreadsheet_path: Path | None) -> None:
    from batch.durable import atomic_file
    from batch.report import figures, gallery, html, terminal
    from batch.report.api import write_merged

    fig = figures.compute(results)
    local = [Path(folder).resolve() for folder in results_dirs if not is_uri(folder)]
    for extra in (merge_path, spreadsheet_path):
        if extra is not None and is_bookkeeping(extra.name) and extra.resolve().parent in local:
            raise _Failed(f"{extra} is a results folder's own file: name another")
    if merge_path is not None:
        try:
            count, notes = write_merged(results, merge_path)
        except OSError as err:
            raise _Failed(f"cannot write {merge_path}: {err.strerror or err}") from err
        fig["merged"] = {"path": str(merge_path), "rows": count}
        fig["warnings"] += notes
    if spreadsheet_path is not None:
        from batch.report.export import write_spreadsheet_csv

        try:
            write_spreadsheet_csv(results, spreadsheet_path)
        except OSError as err:
            raise _Failed(f"cannot write {spreadsheet_path}: {err.strerror or err}") from err
        fig["spreadsheet"] = str(spreadsheet_path)
    target = html_path or _default_html(results_dirs)
    try:
        with atomic_file(target, "w", encoding="utf-8") as f:
            f.write(html.render(fig, gallery.collect(results)))
    except OSError as err:
        raise _Failed(f"cannot write the HTML report to {target}: {err.strerror or err}") from err
    fig["html"] = str(target)
    if as_json:
        click.echo(json.dumps(fig, indent=2, ensure_ascii=False))
    else:
        click.echo(terminal.render(fig), nl=False)
        click.echo(f"\nHTML report: {target}")
        if merge_path is not None:
            click.echo(f"Merged table: {merge_path} ({fig['merged']['rows']:,} rows)")
        if spreadsheet_path is not None:
            click.echo(f"Spreadsheet-safe table: {spreadsheet_path}")


def _default_html(given: tuple[str, ...]) -> Path:
    if any(is_uri(folder) for folder in given):
        return Path("report.html")  # never into the store
    folders = [Path(folder) for folder in given]
    if len(folders) == 1:
        return folders[0] / "report.html"
    # Shards' folders are siblings (results/<manifest stem>/shard-K-of-N/): the report goes beside them.
    same_kind = len({f.is_absolute() for f in folders}) == 1  # commonpath takes all relative or all absolute
    return Path(os.path.commonpath([os.path.normpath(f) if same_kind else os.path.abspath(f)
                                    for f in folders])) / "report.html"
