"""Rotation of 1920x1080 photos: `batch run` against the machine's limit, and the worker's CPU per photo.

Issue 20's three rows, side by side in one run, on the same rows (the
corpus's 1920x1080 photos, rotations 90/180/270/-90 in turn), each round
measuring every line in turn; medians over rounds, the spread beside them:

1. naive limit (the goal's yardstick): a pool of one process per core doing
   plain Pillow decode -> transpose -> encode, no gRPC;
2. in-process limit: the same pool calling ``worker.rotation.rotate``, the
   function the worker runs (lossless DCT path where the edges allow it);
3. ``batch run MANIFEST`` with no --worker (the README's command: embedded
   worker, one process per core), end to end with its start-up;
   goal >= 0.90 x the naive limit; also net of a one-row run of the same;
4. ``batch run MANIFEST --worker ADDRESS`` against a warm ``worker serve`` on
   this machine (defaults: one process per core; by bytes), end to end with
   the driver's start-up; goal >= 0.93 x the naive limit;
5. the warm worker's CPU (user + system, all its processes) and minor page
   faults per photo during line 4, against ``worker.rotation.rotate`` on the
   same bytes in one process (after one pass, files read beforehand), with
   glibc's default malloc settings and with the worker's; goal <= 1.05 x the
   cheaper of the two.

    python bench/bench_rotate.py [--corpus /tmp/ibcorpus] [--photos 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
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
    tree_counters,
    wait_for_quiet,
    write_manifest,
)
from pool import in_process_cost, run_pool
from servers import running, worker_cmd

GOALS = {"embedded": 0.90, "named": 0.93}  # x the naive limit, end to end
CPU_GOAL = 1.05  # worker CPU per photo / in-process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--photos", type=int, default=200, help="distinct 1920x1080 photos to use")
    ap.add_argument("--repeat", type=int, default=1, help="rows per photo (distinct outputs)")
    ap.add_argument("--rounds", type=int, default=3, help="repeat each measurement; the median is reported")
    ap.add_argument("--processes", type=int, default=os.cpu_count(), help="pool size for the limits")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    ap.add_argument("batch_args", nargs="*", help="extra arguments for batch run (after --)")
    a = ap.parse_args()

    ensure_corpus(a.corpus, photos=a.photos, large=0, tiny=0)  # only photos are rotated here
    photos = corpus_rows(a.corpus, "photos")[: a.photos]
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Rotation: batch run vs the machine's limit, worker CPU per photo")

    rows = [(src, deg, f"r{r}_{src.name}") for r in range(a.repeat) for src, deg in photos]
    n = len(rows)
    # Beside its images, as a user's manifest is (the README's demo too): the embedded worker then reads and
    # writes the files itself (reference mode); a named worker gets the bytes.
    manifest = a.corpus / "bench-rotate.csv"
    write_manifest(manifest, ({"id": f"{i}", "path": str(src), "op": "rotate", "rotation": deg, "output": out}
                              for i, (src, deg, out) in enumerate(rows)))
    one = a.corpus / "bench-rotate-one.csv"
    write_manifest(one, [{"id": "0", "path": str(rows[0][0]), "op": "rotate", "rotation": rows[0][1],
                          "output": "one.jpg"}])

    times: dict[str, list[float]] = {k: [] for k in ("naive", "worker", "embedded", "embedded1", "named")}
    spreads: dict[str, list[str]] = {"embedded": [], "named": []}
    cost: dict[str, list[float]] = {k: [] for k in ("worker_ms", "worker_flt", "inproc_ms", "inproc_flt",
                                                     "tuned_ms", "tuned_flt")}
    methods = None
    with tempfile.TemporaryDirectory(prefix="bench-rotate-") as tmp, running(worker_cmd()) as (address, server):
        tmp = Path(tmp)
        # Warm: every worker process has served the whole manifest once (its heaps grown to their working size).
        _batch(manifest, tmp / "warm", n, "--worker", address)
        for rnd in range(a.rounds):
            for kind in ("naive", "worker"):
                out = tmp / f"{kind}{rnd}"
                out.mkdir()
                jobs = [(str(src), deg, str(out / name)) for src, deg, name in rows]
                elapsed, used = run_pool(kind, jobs, a.processes)
                times[kind].append(elapsed)
                methods = used if kind == "worker" else methods
            times["embedded"].append(_batch(manifest, tmp / f"embedded{rnd}", n, *a.batch_args, spreads=spreads,
                                            key="embedded"))
            times["embedded1"].append(_batch(one, tmp / f"embedded{rnd}-one", 1, *a.batch_args))
            before = tree_counters(server.pid)
            times["named"].append(_batch(manifest, tmp / f"named{rnd}", n, "--worker", address, *a.batch_args,
                                         spreads=spreads, key="named"))
            after = tree_counters(server.pid)
            cost["worker_ms"].append((after.cpu - before.cpu) / n * 1000)
            cost["worker_flt"].append((after.faults - before.faults) / n)
            for key, tuned in (("inproc", False), ("tuned", True)):
                ms, flt = in_process_cost([(str(src), deg) for src, deg, _ in rows], tuned)
                cost[f"{key}_ms"].append(ms)
                cost[f"{key}_flt"].append(flt)

    med = {k: statistics.median(v) for k, v in times.items()}
    naive, limit = n / med["naive"], n / med["worker"]

    def line(what: str, key: str, rows_done: int = n, seconds: float | None = None) -> list:
        secs = med[key] if seconds is None else seconds
        rate = rows_done / secs
        rates = [rows_done / t for t in times[key]] if seconds is None else []
        span = f"{min(rates) / naive:.3f}-{max(rates) / naive:.3f}" if len(rates) > 1 else "-"
        return [what, secs, rate, rate / naive, span, rate / limit]

    net = med["embedded"] - med["embedded1"]
    print(f"{n} rows ({a.photos} photos 1920x1080 x {a.repeat}); methods on the in-process path: "
          f"{dict(methods or {})}; median of {a.rounds} round(s); pool of {a.processes} processes; "
          f"rows per worker process: embedded {', '.join(spreads['embedded'])}; "
          f"named {', '.join(spreads['named'])}\n")
    print(table(
        ["what", "seconds", "images/s", "vs naive limit", "spread over rounds", "vs in-process limit"],
        [
            line("naive limit: pool, Pillow decode/transpose/encode", "naive"),
            line("in-process limit: pool, worker.rotation.rotate", "worker"),
            line("batch run, embedded worker, end to end", "embedded"),
            line(f"batch run, embedded, net of a 1-row run ({med['embedded1']:.2f} s)", "embedded", n - 1,
                 max(net, 1e-9)),
            line("batch run --worker (warm named worker, by bytes), end to end", "named"),
        ],
    ))
    # The yardstick is the cheaper of the two in-process figures, round by round.
    best = [min(x, y) for x, y in zip(cost["inproc_ms"], cost["tuned_ms"], strict=True)]
    w, i = statistics.median(cost["worker_ms"]), statistics.median(best)
    ratios = [a_ / b_ for a_, b_ in zip(cost["worker_ms"], best, strict=True)]
    print()
    print(table(
        ["CPU per photo", "ms (median)", "ms per round", "minor faults per photo"],
        [
            ["warm worker, all its processes, during the named run", w,
             " / ".join(f"{x:.1f}" for x in cost["worker_ms"]), statistics.median(cost["worker_flt"])],
            ["worker.rotation.rotate in one process, same bytes", statistics.median(cost["inproc_ms"]),
             " / ".join(f"{x:.1f}" for x in cost["inproc_ms"]), statistics.median(cost["inproc_flt"])],
            ["the same with the worker's malloc settings (worker.memory)", statistics.median(cost["tuned_ms"]),
             " / ".join(f"{x:.1f}" for x in cost["tuned_ms"]), statistics.median(cost["tuned_flt"])],
        ],
    ))
    e2e, named = n / med["embedded"] / naive, n / med["named"] / naive
    print()
    for what, got, goal in (("embedded end to end", e2e, GOALS["embedded"]),
                            ("warm named worker end to end", named, GOALS["named"])):
        print(f"Goal: {what} >= {goal:.2f} x the naive limit: {got:.3f} x, {'met' if got >= goal else 'MISSED'}")
    print(f"Goal: worker CPU per photo <= {CPU_GOAL:.2f} x in-process (the cheaper of the two): {w / i:.3f} x (rounds "
          f"{min(ratios):.3f}-{max(ratios):.3f}), {'met' if w / i <= CPU_GOAL else 'MISSED'}")


def _batch(manifest: Path, out: Path, n: int, *args: str, spreads: dict | None = None, key: str = "") -> float:
    run = batch_run(manifest, out, *args)
    results = results_rows(out)
    failed = [r for r in results if r["status"] != "ok"]
    if failed or len(results) != n:
        sys.exit(f"batch run: {len(results)} result rows for {n}, {len(failed)} failed: {failed[:3]}")
    if spreads is not None:
        spreads[key].append(spread(results))
    return run.wall


if __name__ == "__main__":
    main()
