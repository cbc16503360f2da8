"""Scale past one driver: 1, 2 and 4 `batch run --shard K/N` at once against three stand-in workers.

The stand-ins (bench/echo_server.py, one process each, on 127.0.0.2, .3 and .4:
three "hosts" on loopback) answer a Rotate by reference at once with the
metadata a worker that wrote the file would send, so nothing but the drivers
limits the rate. Each driver runs its share of one manifest by reference
(`--references`, defaults otherwise), all started together; the total rate is
the manifest's rows over the time until the last share ends, and CPU per row
sums every driver's CPU. On a machine with fewer cores than drivers they share
the cores, and the total cannot grow: run it where each driver has a core.

    python bench/bench_drivers.py [--rows 6000] [--drivers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
from common import BIN, print_header, table, tree_cpu
from common import write_manifest as write_rows
from servers import echo_cmd, running

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
INDEX_ONLY_SHARES = 1000
WORKER_CPU_MS = 25.0  # a real worker's CPU per 1080p photo (docs/benchmarks.md): for "worker cores fed"


def server_cpu(pid: int) -> float:
    """CPU seconds of a server: its own process (one serves in-process) and any it forked."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + tree_cpu(pid)


def run_shards(manifest: Path, out: Path, workers: str, count: int, first_of: int | None = None
               ) -> tuple[float, float]:
    """(wall seconds until the last of ``count`` shards ends, CPU seconds of all the drivers); with ``first_of``
    M, only shard 0/M."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    drivers = [subprocess.Popen([str(BIN / "batch"), "run", str(manifest), "--shard", f"{k}/{first_of or count}",
                                 "--out", str(out / f"shard-{k}"), "--worker", workers, "--references",
                                 "--quiet", "--restart"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for k in range(count)]
    for d in drivers:
        _, err = d.communicate()
        if d.returncode != 0:
            sys.exit(f"a driver exited {d.returncode}: {err.decode()[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--drivers", default="1,2,4", help="numbers of drivers sharing the manifest")
    a = ap.parse_args()
    counts = [int(n) for n in a.drivers.split(",")]
    print_header("Several drivers (shards of one manifest) by reference against three stand-in workers")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-drivers-") as tmp, ExitStack() as servers:
        tmp = Path(tmp)
        # the demo's photos as inputs: by reference the driver never reads them, so their size does not matter
        subprocess.run([str(BIN / "batch"), "demo", str(tmp / "in")], check=True, capture_output=True)
        photos = sorted((tmp / "in" / "demo-images").glob("*.jpg"))
        manifest = tmp / "in" / "jobs.csv"
        write_rows(manifest, ({"id": str(i), "path": str(photos[i % len(photos)]), "op": "rotate",
                               "rotation": "90", "output": f"{i // 1000:03d}/{i:06d}.jpg"} for i in range(a.rows)))
        stand_ins = [servers.enter_context(running(echo_cmd("--host", host, "--processes", "1")))
                     for host in HOSTS]
        workers = ",".join(address for address, _ in stand_ins)
        for count in counts:
            echo_before = sum(server_cpu(proc.pid) for _, proc in stand_ins)
            wall, cpu = run_shards(manifest, tmp / f"out-{count}", workers, count)
            echo = sum(server_cpu(proc.pid) for _, proc in stand_ins) - echo_before
            ms = cpu / a.rows * 1000
            rows.append([count, a.rows / wall, wall, ms, echo / a.rows * 1000, WORKER_CPU_MS / ms])
        # Every shard reads and indexes the whole manifest: the cost of that alone, from a share of almost no rows.
        _, index_cpu = run_shards(manifest, tmp / "out-index", workers, 1, first_of=INDEX_ONLY_SHARES)
    print(f"\n{a.rows} rows by reference, the manifest split by --shard K/N, stand-ins at {workers}, "
          f"{os.cpu_count()} CPUs\n")
    print(table(["drivers", "total rows/s", "wall s", "driver CPU ms/row", "stand-in CPU ms/row",
                 "worker cores fed (25 ms/row)"], rows))
    print(f"\na driver running 1/{INDEX_ONLY_SHARES} of the rows: {index_cpu:.2f} s of CPU (start-up, and reading and "
          f"indexing the whole manifest of {a.rows} rows, which every shard does)")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
