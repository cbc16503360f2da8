"""Large images: 24 MP JPEGs (over gRPC's 4 MiB default message size) through `batch run`.

For each driver concurrency, a fresh `worker serve` (so its peak-memory marks
start clean) and `batch run --worker ADDRESS --concurrency C`, with the memory
of both process trees sampled (psutil RSS every 50 ms plus the kernel's own
peak mark, VmHWM, per process). Reported: images/s, the driver's peak RSS,
each worker process's idle and peak RSS, and the peak growth per image in
flight in a worker process, against the bound idle + threads x per-image +
the other calls it lets in x file size.
Every output is checked: full resolution (width and height swapped for 90/270),
never shrunk.

    python bench/bench_large.py [--corpus /tmp/ibcorpus] [--large 8] [--repeat 3] [--concurrency 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import (
    DEFAULT_CORPUS,
    TreeSampler,
    batch_run,
    corpus_rows,
    ensure_corpus,
    mib,
    print_header,
    results_rows,
    table,
    wait_for_quiet,
    write_manifest,
)
from PIL import Image
from servers import running, worker_cmd

from worker.config import ServerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--large", type=int, default=8, help="distinct 6000x4000 JPEGs to use")
    ap.add_argument("--repeat", type=int, default=3, help="rows per image (distinct outputs)")
    ap.add_argument("--concurrency", default="1,2,4,8,16", help="driver --concurrency values, comma-separated")
    ap.add_argument("--processes", type=int, default=os.cpu_count(), help="worker processes")
    ap.add_argument("--threads", type=int, default=4, help="worker threads per process")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()

    ensure_corpus(a.corpus, large=a.large)
    large = corpus_rows(a.corpus, "large")[: a.large]
    sizes = {p: Image.open(p).size for p, _ in large}
    mb = sum(p.stat().st_size for p, _ in large) / len(large) / 2**20
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Large images: 24 MP JPEGs")
    config = ServerConfig(threads=a.threads)
    # Calls whose request bytes a worker process may hold at once: every call gRPC lets in (its cap), since even
    # one the worker then refuses as busy (past --max-concurrent-rpcs, worker.admission) arrived with its image;
    # of those only --threads decode at once, the others hold just their bytes.
    accepted, running_at_once = config.transport_rpc_limit, a.threads
    file_bytes = sum(p.stat().st_size for p, _ in large) / len(large)

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        tmp = Path(tmp)
        rows = [(src, deg, f"r{r}_{src.name}") for r in range(a.repeat) for src, deg in large]
        manifest = tmp / "large.csv"
        write_manifest(manifest, ({"id": str(i), "path": str(src), "op": "rotate", "rotation": deg, "output": out}
                                  for i, (src, deg, out) in enumerate(rows)))
        # One image's working set: the first call in a fresh one-process worker. (Later calls reuse memory
        # the allocator kept from earlier ones, per thread, so "growth / calls" over a run understates it.)
        probe = tmp / "probe.csv"
        write_manifest(probe, [{"id": "0", "path": str(rows[0][0]), "op": "rotate", "rotation": rows[0][1],
                                "output": "probe.jpg"}])
        idle, peaks, _ = _measure(probe, tmp / "probe", 1, 1, a.threads)
        per_image = max(peaks[p] - idle[p] for p in peaks)
        bound = max(idle.values()) + running_at_once * per_image + (accepted - running_at_once) * file_bytes
        for c in (int(x) for x in a.concurrency.split(",")):
            out = tmp / f"c{c}"
            idle, peaks, run = _measure(manifest, out, c, a.processes, a.threads)
            _check(rows, sizes, out)
            growth = max(peaks[pid] - idle[pid] for pid in peaks)
            # calls in one worker process with the driver's calls spread evenly over its processes
            flight = min(math.ceil(c / a.processes), config.in_flight_limit)
            rows_out.append([
                c, len(rows) / run.wall, mib(run.driver_peak()),
                " / ".join(f"{mib(idle[p]):.0f}" for p in peaks), " / ".join(f"{mib(peaks[p]):.0f}" for p in peaks),
                flight, mib(growth), mib(bound), "yes" if max(peaks.values()) <= bound else "NO",
            ])

    print(f"{len(rows)} rows ({len(large)} JPEGs 6000x4000, {mb:.1f} MiB each on average, x {a.repeat}); "
          f"worker: {a.processes} processes x {a.threads} threads, holding {config.in_flight_limit} image calls per "
          f"process (--max-concurrent-rpcs), {running_at_once} working at once, and letting in {accepted} calls "
          f"(gRPC's cap: {accepted - config.in_flight_limit} more for health checks, or refused as busy); "
          "every output checked: full size, width/height swapped for 90/270; one image's working set in a "
          f"worker (first call, fresh process): {mib(per_image):.0f} MiB\n")
    print(table(
        ["driver --concurrency", "images/s (wall, incl. driver start)", "driver peak RSS (MiB)",
         "worker idle RSS per process (MiB)", "worker peak RSS per process (MiB)",
         "calls in flight per process (even spread)", "worker peak growth over idle (MiB)",
         f"bound: idle + {running_at_once} running x working set + {accepted - running_at_once} others x file (MiB)",
         "within bound"],
        rows_out,
    ))


def _measure(manifest: Path, out: Path, concurrency: int, processes: int, threads: int):
    """A fresh worker, then batch run against it: (idle RSS per worker process, peak RSS per process, the run)."""
    cmd = worker_cmd("--processes", str(processes), "--threads", str(threads))
    with running(cmd) as (address, server):
        time.sleep(0.5)
        children = psutil.Process(server.pid).children(recursive=True) or [psutil.Process(server.pid)]
        idle = {p.pid: p.memory_info().rss for p in children}
        with TreeSampler(server.pid) as worker_mem:
            run = batch_run(manifest, out, "--worker", address, "--concurrency", str(concurrency))
    peaks = {pid: worker_mem.procs[pid].peak_rss for pid in idle if pid in worker_mem.procs}
    return idle, peaks, run


def _check(rows, sizes, out: Path) -> None:
    results = results_rows(out)
    bad = [r for r in results if r["status"] != "ok"]
    if bad or len(results) != len(rows):
        sys.exit(f"batch run: {len(results)} rows for {len(rows)}, failed: {bad[:2]}")
    for r in results:
        src = Path(r["path"])
        w, h = sizes[src]
        want = (h, w) if int(r["rotation"]) % 180 else (w, h)
        got = Image.open(r["output"]).size
        if got != want:
            sys.exit(f"{r['output']} is {got}, expected {want}: shrunk or not rotated")


if __name__ == "__main__":
    main()
