"""Scale: manifests of 1,000, 10,000 and 100,000 rows of tiny images through `batch run`.

Rows cycle over the corpus's 64x64 JPEGs (the same file appears in many rows;
each row has its own id and its own ``output``, in folders of 1,000). One
`worker serve` is started for the whole benchmark and every run uses it with
``--worker``, so the wall time is the driver's job and not the worker's
start-up. For each size:

- full run: wall time, rows/s, the driver's peak RSS (its process alone:
  psutil RSS every 50 ms and the kernel's VmHWM mark);
- resume at 99 %: the finished run's results.csv loses every 100th row and
  those rows' output files are deleted, as if the run had stopped there; the
  same command again must redo exactly those rows (checked) — its wall time
  and peak RSS;
- resume at 100 %: the same command once more, nothing left to do: the cost
  of reading the table and checking the outputs exist.

Deleting rows makes the "99 % done" state exact and repeatable; an
interrupted run (SIGINT) leaves the same kind of state with a less
predictable count (the Ctrl-C path is what the driver's tests cover).

    python bench/bench_scale.py [--corpus /tmp/ibcorpus] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from common import (
    DEFAULT_CORPUS,
    BatchRun,
    batch_run,
    corpus_rows,
    ensure_corpus,
    mib,
    print_header,
    results_rows,
    spread,
    table,
    tree_cpu,
    wait_for_quiet,
    write_manifest,
)
from servers import running, worker_cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--sizes", default="1000,10000,100000", help="manifest sizes, comma-separated")
    ap.add_argument("--processes", type=int, default=os.cpu_count(), help="worker processes")
    ap.add_argument("--work-dir", type=Path, default=None, help="where manifests and outputs go (default: a temp dir)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    ap.add_argument("batch_args", nargs="*", help="extra arguments for batch run (after --)")
    a = ap.parse_args()

    ensure_corpus(a.corpus)
    tiny = corpus_rows(a.corpus, "tiny")
    sizes = [int(x) for x in a.sizes.split(",")]
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Scale: tiny images, 1,000 to 100,000 rows")

    table_rows = []
    cpu_rows = []
    base_rss = None
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=a.work_dir) as tmp, \
            running(worker_cmd("--processes", str(a.processes))) as (address, server):
        tmp = Path(tmp)
        for n in sizes:
            manifest = tmp / f"tiny-{n}.csv"
            write_manifest(manifest, ({"id": f"row{i}", "path": str(tiny[i % len(tiny)][0]), "op": "rotate",
                                       "rotation": tiny[i % len(tiny)][1], "output": f"{i // 1000:03d}/{i:06d}.jpg"}
                                      for i in range(n)))
            out = tmp / f"out-{n}"
            args = ("--worker", address, *a.batch_args)
            worker_cpu = tree_cpu(server.pid)
            full = batch_run(manifest, out, *args)
            full.worker_cpu = tree_cpu(server.pid) - worker_cpu
            _check(out, n, "full run")
            results = results_rows(out)
            retried = sum(1 for r in results if int(r["attempts"] or 0) > 1)
            per_process = spread(results)
            dropped = _drop_every_100th(out)
            since = time.time()
            resume = batch_run(manifest, out, *args)
            _check(out, n, "resume")
            redone = _written_since(out, since)
            again = batch_run(manifest, out, *args)
            _check(out, n, "second resume")
            base_rss = base_rss or full.driver_peak()
            what = f"full run ({retried} rows retried; rows per worker process {per_process})"
            table_rows.append(_row(n, what, n, full, base_rss))
            table_rows.append(_row(n, f"resume at 99 % ({dropped} rows to redo; {redone} redone)", dropped,
                                   resume, base_rss))
            table_rows.append(_row(n, "resume at 100 % (nothing to do)", 0, again, base_rss))
            cpu_rows.append([f"{n:,}", full.cpu / n * 1000, full.worker_cpu / n * 1000,
                             (full.cpu + full.worker_cpu) / n * 1000,
                             os.cpu_count() / ((full.cpu + full.worker_cpu) / n)])
            print(f"done: {n} rows", file=sys.stderr, flush=True)

    print(f"64x64 JPEGs ({len(tiny)} distinct files, cycled), one external worker ({a.processes} processes), "
          "driver defaults\n")
    print(table(["rows", "run", "wall (s)", "rows done per s", "driver peak RSS (MiB)", "vs 1,000-row full run"],
                table_rows))
    print("\nCPU per row in the full runs (user + system; the ceiling is what the machine's cores allow if the "
          "CPU were the only limit):\n")
    print(table(["rows", "driver CPU ms/row", "worker CPU ms/row", "total CPU ms/row",
                 f"ceiling on {os.cpu_count()} cores (rows/s)"], cpu_rows))


def _row(n: int, what: str, work: int, run: BatchRun, base: int) -> list:
    return [f"{n:,}", what, run.wall, work / run.wall if work else "-", mib(run.driver_peak()),
            f"{run.driver_peak() / base:.2f}x"]


def _drop_every_100th(out: Path) -> int:
    """Make a finished run 99 % done: drop every 100th results row and delete its output file."""
    path = out / "results.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    keep, dropped = [], 0
    for i, r in enumerate(rows):
        if i % 100 == 99:
            Path(r["output"]).unlink()
            dropped += 1
        else:
            keep.append(r)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
    return dropped


def _check(out: Path, n: int, what: str) -> None:
    """Every manifest row has exactly one ok row and its output file."""
    results = results_rows(out)
    ok = sum(r["status"] == "ok" for r in results)
    ids = {r["id"] for r in results}
    if ok != n or len(results) != n or len(ids) != n:
        sys.exit(f"{what}: {len(results)} rows, {len(ids)} ids, {ok} ok; expected {n}")
    missing = [r["output"] for r in results if not Path(r["output"]).is_file()]
    if missing:
        sys.exit(f"{what}: {len(missing)} outputs missing, e.g. {missing[:3]}")


def _written_since(out: Path, since: float) -> int:
    return sum(1 for r in results_rows(out) if Path(r["output"]).stat().st_mtime >= since)


if __name__ == "__main__":
    main()
