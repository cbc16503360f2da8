"""Object-store throughput: rows/s of `batch run` on s3:// inputs and outputs through a local S3 server,
bytes mode (the driver GETs and PUTs, the image crosses gRPC twice) against reference mode (the worker GETs
and PUTs itself, under --data-root/--output-root URI prefixes).

The server is moto's (server mode, in this process, on loopback): it stands in for the network and the store,
and shares the 2 cores with the driver and the worker, so the figure is a floor for a real store's bandwidth
and a ceiling for its latency. One worker (`worker serve` defaults, both roots) serves both modes.

    python bench/bench_object_store.py [--corpus /tmp/ibcorpus] [--rows 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import s3fs
from common import BIN, DEFAULT_CORPUS, corpus_rows, ensure_corpus, print_header, table, tree_cpu
from common import write_manifest as write_rows
from moto.server import ThreadedMotoServer
from servers import running, worker_cmd

IN, OUT = "s3://bench/in/", "s3://bench/out/"


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_once(manifest: Path, out: Path, address: str, worker_pid: int, *extra: str) -> tuple[float, ...]:
    """Seconds of one `batch run` (--restart: every row runs): wall, and CPU of the driver, the worker and the
    store (moto's threads: this process)."""
    before = cpu(resource.RUSAGE_CHILDREN), tree_cpu(worker_pid), cpu(resource.RUSAGE_SELF)
    start = time.perf_counter()
    subprocess.run([str(BIN / "batch"), "run", str(manifest), "--out", str(out), "--worker", address, "--quiet",
                    "--restart", *extra], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = cpu(resource.RUSAGE_CHILDREN), tree_cpu(worker_pid), cpu(resource.RUSAGE_SELF)
    return wall, *(b - a for a, b in zip(before, after, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    ensure_corpus(a.corpus)
    photos = [path for path, _ in corpus_rows(a.corpus, "photos")]
    print_header("Object stores: s3:// through a local S3 server, bytes vs reference mode, 1080p photos")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # The standard environment, as a real deployment gives it: the driver and the worker inherit it.
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="bench", secret="bench", skip_instance_cache=True)
    fs.mkdir("bench")
    for i, path in enumerate(photos):
        fs.pipe_file(f"{IN}{i:04d}.jpg", path.read_bytes())
    rates: dict[str, list[float]] = {"bytes": [], "references": []}
    cpu_ms: dict[str, list[tuple[float, ...]]] = {"bytes": [], "references": []}  # per row: driver, worker, store
    try:
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, \
                running(worker_cmd("--data-root", IN, "--output-root", OUT)) as (address, worker):
            tmp = Path(tmp)
            for _ in range(a.rounds):  # interleaved, so that a noisy moment costs both modes alike
                for mode, extra in (("bytes", ()), ("references", ("--references",))):
                    manifest = tmp / f"{mode}.csv"
                    write_rows(manifest, ({"id": str(i), "path": f"{IN}{i % len(photos):04d}.jpg", "op": "rotate",
                                           "rotation": "90", "output": f"{OUT}{mode}/{i:06d}.jpg"}
                                          for i in range(a.rows)))
                    wall, *spent = run_once(manifest, tmp / mode, address, worker.pid, *extra)
                    rates[mode].append(a.rows / wall)
                    cpu_ms[mode].append(tuple(1000 * t / a.rows for t in spent))
    finally:
        server.stop()
    rows = [[mode, statistics.median(r), f"{min(r):.1f}-{max(r):.1f}",
             *(statistics.median(c[k] for c in cpu_ms[mode]) for k in range(3))] for mode, r in rates.items()]
    ratio = statistics.median(rates["references"]) / statistics.median(rates["bytes"])
    print(f"{a.rows} rows of 1080p JPEGs ({photos[0].stat().st_size / 1e6:.2f} MB each) rotated 90 from and to "
          f"s3://, {a.rounds} rounds, one worker (defaults) and moto's server on the same 2 cores\n")
    print(table(["mode", "rows/s (median)", "spread", "driver CPU ms/row", "worker CPU ms/row", "store CPU ms/row"],
                rows))
    print(f"\nreference / bytes rows/s: {ratio:.2f}x")
    sys.exit(0)


if __name__ == "__main__":
    main()
