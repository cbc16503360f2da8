"""Several results folders as one run, for `batch report DIR...` and the library (``batch.report(*outs)``,
``batch.read_results(*outs)`` call ``report`` and ``read_results`` here).

The shards of one manifest (``batch run --shard K/N``) each keep their own
folder, table and run.json. Together they are the manifest's run: one row per
id, put back in the manifest's order, which only the manifest knows (a row's
share is a hash, not a position). The manifest is found where run.json says
the shards read it, and used only if its bytes are the ones they ran
(``manifest_sha256``); otherwise the rows come shard after shard, and a note
says why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from batch.manifest import ManifestError, read_rows
from batch.report.table import PART, Part, Results, load
from batch.results import COLUMNS, TableReader, write_table
from batch.shard import file_sha256


def report(*outs: str | Path, html: str | Path | None = None) -> dict:
    """The figures of ``outs`` (one results folder, or the shards of one manifest) as the JSON-ready dict that
    `batch report --json` prints; with ``html``, the HTML report is written there too (its path under "html")."""
    from batch.durable import atomic_file
    from batch.report import figures, gallery
    from batch.report import html as page

    with tempfile.TemporaryDirectory(prefix="imagebatch-report-") as scratch:  # a store's folders, read here
        results = load(*outs, scratch=Path(scratch))
        fig = figures.compute(results)
        if html is not None:
            with atomic_file(Path(html), "w", encoding="utf-8") as f:
                f.write(page.render(fig, gallery.collect(results)))
            fig["html"] = str(html)
    return fig


def read_results(*outs: str | Path) -> pd.DataFrame:
    """The results table of ``outs`` (one folder, or the shards of one manifest): one row per id, typed as the
    report reads it, in the manifest's order where the manifest can be found (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="imagebatch-report-") as scratch:
        results = load(*outs, scratch=Path(scratch))
    order, _ = manifest_order(results)
    rows = results.rows
    if order is not None:
        rows = rows.assign(_at=rows["id"].map(order)).sort_values("_at", kind="stable", na_position="last")
        rows = rows.drop(columns="_at")
    else:
        rows = rows.sort_values(PART, key=lambda part: part.map(_shard_rank(results)), kind="stable")
    return rows.drop(columns=PART).reset_index(drop=True)


def merged_rows(results: Results) -> tuple[Iterator[dict[str, str]], list[str]]:
    """Every folder's newest row per id as text, exactly as the tables hold them, in the manifest's order (or
    shard after shard, with a note saying why)."""
    newest: dict[str, tuple[str, ...]] = {}
    rank = _shard_rank(results)
    for number in sorted(range(len(results.parts)), key=lambda n: rank[n]):
        for values in TableReader(results.parts[number].folder).rows():
            newest.pop(values[0], None)  # a retried id moves to where its newest row is
            newest[values[0]] = values
    order, note = manifest_order(results)
    rows = list(newest.values())
    if order is not None:
        last = len(order)
        rows.sort(key=lambda values: order.get(values[0], last))  # ids the manifest lacks: at the end, as found
    return (dict(zip(COLUMNS, values, strict=True)) for values in rows), [note] if note else []


def write_merged(results: Results, target: Path) -> tuple[int, list[str]]:
    """The merged table (``merged_rows``) written atomically to ``target`` (CSV, or Parquet by its suffix);
    returns the row count and notes."""
    rows, notes = merged_rows(results)
    return write_table(rows, target), notes


def manifest_order(results: Results) -> tuple[dict[str, int] | None, str | None]:
    """Each id's position in the manifest the folders ran, or None and why it cannot be known."""
    why = "run.json does not name the manifest"
    tried: set[str] = set()
    for part in results.parts:
        newest = part.legs[-1] if part.legs else {}
        manifest, digest = newest.get("manifest"), newest.get("manifest_sha256")
        if not isinstance(manifest, str) or not manifest or manifest in tried:
            continue
        tried.add(manifest)
        path = Path(manifest)
        try:
            if isinstance(digest, str) and digest and file_sha256(path) != digest:
                why = f"the manifest {manifest} has changed since the run"
                continue
            return {row.id: i for i, row in enumerate(read_rows(path, part.folder))}, None
        except OSError as err:
            why = f"the manifest {manifest} cannot be read ({err.strerror or err})"
        except ManifestError as err:
            why = str(err)
    return None, f"the merged rows are in the order of the tables (shard by shard), not the manifest's: {why}"


def _shard_rank(results: Results) -> dict[int, int]:
    """Each part's place when rows go shard after shard: by shard index, then as given."""
    def index(part: Part) -> int:
        shard = part.legs[-1].get("shard") if part.legs else None
        value = shard.get("index") if isinstance(shard, dict) else None
        return value if isinstance(value, int) else len(results.parts)

    ranked = sorted(range(len(results.parts)), key=lambda n: index(results.parts[n]))
    return {number: place for place, number in enumerate(ranked)}
