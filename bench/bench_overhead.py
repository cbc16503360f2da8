"""Per-call overhead: 64x64 JPEGs through the worker's Rotate against a bare gRPC echo of the same bytes.

Both servers run with the same settings (processes, threads, in-flight limit,
message limits: see echo_server.py) and are driven by the same grpc.aio load
client, first one call at a time (latency), then with calls in flight over
several connections (throughput). The difference is the worker's own cost;
the echo is what the RPC layer costs. Then `batch run` end to end on the same
tiny images, against the already running worker and with its embedded one.

    python bench/bench_overhead.py [--corpus /tmp/ibcorpus] [--calls 4000] [--rows 4000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
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
from servers import echo_cmd, load, running, worker_cmd

ROTATE = "/imageworker.v1.ImageWorker/Rotate"
ECHO = "/bench.Echo/Rotate"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--calls", type=int, default=4000, help="calls per throughput measurement")
    ap.add_argument("--latency-calls", type=int, default=500, help="calls for the one-at-a-time latency")
    ap.add_argument("--concurrency", type=int, default=8, help="calls in flight for throughput")
    ap.add_argument("--connections", type=int, default=2, help="HTTP/2 connections per server process")
    ap.add_argument("--processes", type=int, default=os.cpu_count(), help="server processes (both servers)")
    ap.add_argument("--threads", type=int, default=4, help="RPC threads per process (both servers)")
    ap.add_argument("--rows", type=int, default=4000, help="rows of the batch run manifest (tiny images)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()

    ensure_corpus(a.corpus)
    tiny = corpus_rows(a.corpus, "tiny")
    images = [p.read_bytes() for p, _ in tiny]
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Per-call overhead: 64x64 JPEGs, worker Rotate vs bare gRPC echo")
    settings = ("--processes", str(a.processes), "--threads", str(a.threads))

    from worker.rotation import rotate

    rotate(images[0], 90)
    t = time.perf_counter()
    for data in images[: a.latency_calls]:
        rotate(data, 90)
    in_process = (time.perf_counter() - t) / min(a.latency_calls, len(images))

    measured = {}
    for name, cmd, method in (("echo", echo_cmd(*settings), ECHO), ("worker", worker_cmd(*settings), ROTATE)):
        with running(cmd) as (address, _):
            one = load(address, method, images, a.latency_calls, concurrency=1)
            many = load(address, method, images, a.calls, a.concurrency, a.processes, a.connections)
            measured[name] = (one, many)
            if name == "worker":
                with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
                    external = _batch(Path(tmp), tiny, a.rows, "--worker", address)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        embedded = _batch(Path(tmp), tiny, a.rows)

    def ms(load_) -> float:
        return statistics.median(load_.latencies) * 1000

    echo1, echo_n = measured["echo"]
    rot1, rot_n = measured["worker"]
    print(f"{len(images)} distinct 64x64 JPEGs (~{statistics.mean(map(len, images)) / 1024:.1f} KiB), "
          f"rotated by 90 (lossless path); servers: {a.processes} processes x {a.threads} threads; "
          f"throughput with {a.concurrency} calls in flight over {a.connections} connections per server process\n")
    print(table(
        ["what", "median latency, 1 in flight (ms)", "images/s", "calls per server process"],
        [
            ["worker.rotation.rotate in-process, 1 core", in_process * 1000, 1 / in_process, "-"],
            ["bare gRPC echo (same bytes, same server settings)", ms(echo1), echo_n.rate, _spread(echo_n)],
            ["worker Rotate over gRPC", ms(rot1), rot_n.rate, _spread(rot_n)],
            [f"batch run --worker (running worker), {a.rows} rows", "-", a.rows / external.wall, external.spread],
            [f"batch run, embedded worker, {a.rows} rows, start-up included", "-", a.rows / embedded.wall,
             embedded.spread],
        ],
    ))
    print(f"\nRPC layer per call, one at a time: {ms(echo1):.2f} ms (echo); worker's own work on top: "
          f"{ms(rot1) - ms(echo1):.2f} ms; in flight: echo {echo_n.rate:.0f}/s vs Rotate {rot_n.rate:.0f}/s "
          f"= {rot_n.rate / echo_n.rate:.2f}x")
    print(f"batch run wall times: --worker {external.wall:.2f} s, embedded {embedded.wall:.2f} s")


def _spread(result) -> str:
    spread = " / ".join(str(n) for _, n in result.per_process.most_common())
    return spread + (f" ({result.rejected} refused, retried)" if result.rejected else "")


def _batch(tmp: Path, tiny: list[tuple[Path, int]], rows: int, *extra: str):
    manifest = tmp / "tiny.csv"
    write_manifest(manifest, ({"id": str(i), "path": str(tiny[i % len(tiny)][0]), "op": "rotate",
                               "rotation": tiny[i % len(tiny)][1], "output": f"{i}.jpg"} for i in range(rows)))
    run = batch_run(manifest, tmp / "out", *extra)
    results = results_rows(tmp / "out")
    run.spread = spread(results)
    ok = sum(r["status"] == "ok" for r in results)
    if ok != rows:
        sys.exit(f"batch run: {ok} ok of {rows}: {[r for r in results if r['status'] != 'ok'][:3]}")
    return run


if __name__ == "__main__":
    main()
