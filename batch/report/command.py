"""The `batch report` click command: a thin layer over table, figures and the renderers."""

from __future__ import annotations

import json
from pathlib import Path

import click


class _Failed(click.ClickException):
    """No report: the folder cannot be read or the report cannot be written. Exit 2, as for `batch run`."""

    exit_code = 2


@click.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Where to write the HTML report (default: RESULTS_DIR/report.html).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object instead of text.")
@click.option(
    "--spreadsheet", "spreadsheet_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the table as a CSV that is safe to open in a spreadsheet: cells that would run as formulas "
         "(beginning with = + - @) are marked as text with a leading apostrophe. results.csv stays exact.",
)
def report(results_dir: Path, html_path: Path | None, as_json: bool, spreadsheet_path: Path | None) -> None:
    """Summarise a results folder written by `batch run`.

    Prints what ran and when, rows by op and status, labels, latency and
    throughput, calls per worker, the most common errors and the slowest
    rows, and writes one self-contained HTML file (charts, before/after and
    classification galleries, failed rows) that opens offline.

    Works on a run that is still going or was interrupted: it reports the
    rows finished so far.
    """
    # Imported here: pandas and Pillow would slow every `batch` command's start, `batch run` included.
    from batch.durable import atomic_file
    from batch.errors import BatchError
    from batch.report import figures, gallery, html, terminal
    from batch.report.table import load

    try:
        results = load(results_dir)
    except BatchError as err:
        raise _Failed(str(err)) from err
    fig = figures.compute(results)
    target = html_path or results_dir / "report.html"
    try:
        with atomic_file(target, "w", encoding="utf-8") as f:
            f.write(html.render(fig, gallery.collect(results)))
    except OSError as err:
        raise _Failed(f"cannot write the HTML report to {target}: {err.strerror or err}") from err
    fig["html"] = str(target)
    if spreadsheet_path is not None:
        from batch.report.export import write_spreadsheet_csv

        try:
            write_spreadsheet_csv(results_dir, spreadsheet_path)
        except OSError as err:
            raise _Failed(f"cannot write {spreadsheet_path}: {err.strerror or err}") from err
        fig["spreadsheet"] = str(spreadsheet_path)
    if as_json:
        click.echo(json.dumps(fig, indent=2, ensure_ascii=False))
    else:
        click.echo(terminal.render(fig), nl=False)
        click.echo(f"\nHTML report: {target}")
        if spreadsheet_path is not None:
            click.echo(f"Spreadsheet-safe table: {spreadsheet_path}")
