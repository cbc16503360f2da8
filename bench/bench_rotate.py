"""Rotation throughput of `batch run` with its embedded worker against this machine's limit.

All in one run, on the same rows (the corpus's 1920x1080 photos, rotations
90/180/270/-90 in turn). The goal: ``batch run`` with its embedded worker, end
to end with its start-up, at least GOAL (0.90) x the in-process limit on 200
photos; the last line says whether it was met.

1. naive limit: a pool of one process per core doing plain Pillow
   decode -> transpose -> encode (input's quantisation tables), no gRPC;
2. in-process limit: the same pool calling ``worker.rotation.rotate``, the
   function the worker runs (lossless DCT path where the edges allow it);
3. ``batch run MANIFEST`` with no --worker (embedded worker, one process per
   core), end to end as a user runs it, start-up included;
4. the same net of the fixed start-up and shut-down cost, measured by a
   one-row run of the same command;
5. ``batch run --worker A --worker B ...`` on one-process workers, one per
   core (the same processes, but the driver's connections reach each one
   evenly, which SO_REUSEPORT's hash of connections does not guarantee), net
   of its own one-row run.

    python bench/bench_rotate.py [--corpus /tmp/ibcorpus] [--photos 200] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import (
    DEFAULT_CORPUS,
    batch_run,
    corpus_rows,
    ensure_corpus,
    print_header,
    results_rows,
    spread,
    table,
    wait_for_quiet,
    write_manifest,
)
from pool import run_pool
from servers import running, worker_cmd

GOAL = 0.90  # embedded end to end / in-process limit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--photos", type=int, default=200, help="distinct 1920x1080 photos to use")
    ap.add_argument("--repeat", type=int, default=1, help="rows per photo (distinct outputs)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each measurement; the median is reported")
    ap.add_argument("--processes", type=int, default=os.cpu_count(), help="pool size for the limits")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    ap.add_argument("batch_args", nargs="*", help="extra arguments for batch run (after --)")
    a = ap.parse_args()

    ensure_corpus(a.corpus, photos=a.photos, large=0, tiny=0)  # only photos are rotated here
    photos = corpus_rows(a.corpus, "photos")[: a.photos]
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Rotation: batch run vs the in-process limit")

    with tempfile.TemporaryDirectory(prefix="bench-rotate-") as tmp:
        tmp = Path(tmp)
        rows = [(src, deg, f"r{r}_{src.name}") for r in range(a.repeat) for src, deg in photos]
        n = len(rows)
        # Beside its images, as a user's manifest is (the README's demo too): the embedded worker then reads and
        # writes the files itself (reference mode); a manifest elsewhere would send every photo by bytes.
        manifest = a.corpus / "bench-rotate.csv"
        write_manifest(manifest, ({"id": f"{i}", "path": str(src), "op": "rotate", "rotation": deg, "output": out}
                                  for i, (src, deg, out) in enumerate(rows)))
        one = a.corpus / "bench-rotate-one.csv"
        write_manifest(one, [{"id": "0", "path": str(rows[0][0]), "op": "rotate", "rotation": rows[0][1],
                              "output": "one.jpg"}])

        times: dict[str, list[float]] = {k: [] for k in ("naive", "worker", "batch", "batch1", "split", "split1")}
        spreads: dict[str, list[str]] = {"batch": [], "split": []}
        methods = None
        for rnd in range(a.rounds):
            for kind in ("naive", "worker"):
                out = tmp / f"{kind}{rnd}"
                out.mkdir()
                jobs = [(str(src), deg, str(out / name)) for src, deg, name in rows]
                elapsed, used = run_pool(kind, jobs, a.processes)
                times[kind].append(elapsed)
                if kind == "worker":
                    methods = used
            _batch(times, spreads, "batch", manifest, one, tmp / f"batch{rnd}", n, *a.batch_args)
            # The same processes as separate one-process workers: the driver's connections are then
            # spread evenly over processes by construction, not by SO_REUSEPORT's hash.
            with contextlib.ExitStack() as stack:
                workers = [stack.enter_context(running(worker_cmd("--processes", "1")))[0]
                           for _ in range(a.processes)]
                args = [x for w in workers for x in ("--worker", w)]
                _batch(times, spreads, "split", manifest, one, tmp / f"split{rnd}", n,
                       *args, "--concurrency", str(2 * a.processes), *a.batch_args)

    med = {k: statistics.median(v) for k, v in times.items()}
    naive = n / med["naive"]
    limit = n / med["worker"]
    e2e = n / med["batch"]
    net = (n - 1) / max(med["batch"] - med["batch1"], 1e-9)
    split = (n - 1) / max(med["split"] - med["split1"], 1e-9)
    print(f"{n} rows ({a.photos} photos 1920x1080 x {a.repeat}); methods on the in-process path: "
          f"{dict(methods or {})}; median of {a.rounds} round(s); pool of {a.processes} processes; "
          f"rows per worker process: embedded {', '.join(spreads['batch'])}; "
          f"separate workers {', '.join(spreads['split'])}\n")
    print(table(
        ["what", "seconds", "images/s", "vs in-process limit", "vs naive limit"],
        [
            ["naive limit: pool, Pillow decode/transpose/encode", med["naive"], naive, naive / limit, 1.0],
            ["in-process limit: pool, worker.rotation.rotate", med["worker"], limit, 1.0, limit / naive],
            ["batch run, embedded worker, end to end", med["batch"], e2e, e2e / limit, e2e / naive],
            ["batch run, net of start-up (1-row run: "
             f"{med['batch1']:.2f} s)", med["batch"] - med["batch1"], net, net / limit, net / naive],
            [f"batch run --worker x{a.processes} (one-process workers, evenly spread), net of start-up "
             f"({med['split1']:.2f} s)", med["split"] - med["split1"], split, split / limit, split / naive],
        ],
    ))
    print(f"\nGoal: embedded end to end >= {GOAL:.2f} x the in-process limit: {e2e / limit:.3f} x, "
          f"{'met' if e2e / limit >= GOAL else 'MISSED'} ({n} rows, start-up {med['batch1']:.2f} s for one row).")


def _batch(times: dict, spreads: dict, key: str, manifest: Path, one: Path, out: Path, n: int, *args: str) -> None:
    run = batch_run(manifest, out, *args)
    results = results_rows(out)
    failed = [r for r in results if r["status"] != "ok"]
    if failed or len(results) != n:
        sys.exit(f"batch run: {len(results)} result rows for {n}, {len(failed)} failed: {failed[:3]}")
    times[key].append(run.wall)
    spreads[key].append(spread(results))
    times[key + "1"].append(batch_run(one, out.with_name(out.name + "-one"), *args).wall)


if __name__ == "__main__":
    main()
