"""Where the driver's CPU goes per row, by ablation: tiny images, one running worker, variants of `batch run`.

The same manifest of 64x64 JPEGs runs against one external `worker serve`
with the driver as shipped and with parts of its per-row work switched off
in the driver process only (monkeypatched before `batch run` starts; the
code on disk is unchanged):

- ``shipped``: as is;
- ``no fsync``: outputs are written and renamed but not fsync'ed;
- ``no fsync, inline I/O``: and the file read/write happen in the event loop
  instead of a thread hop (``asyncio.to_thread``) each;
- a bare grpc.aio client making the same calls (no files, no results): the
  floor for any Python driver.

Reported: wall time, rows/s, and CPU ms per row of the driver process (user +
system) and of the worker's processes. On a 2-core machine 1,000 rows/s needs
driver + worker CPU below 2 ms per row, and the driver below 1 ms (it is one
process, mostly one thread).

    python bench/bench_driver_cost.py [--corpus /tmp/ibcorpus] [--rows 5000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BIN,
    DEFAULT_CORPUS,
    corpus_rows,
    ensure_corpus,
    print_header,
    results_rows,
    table,
    tree_cpu,
    wait_for_quiet,
    write_manifest,
)
from servers import load, running, worker_cmd

_PATCHES = {
    "shipped": "",
    "no fsync": "import os; os.fsync = lambda fd: None",
    "no fsync, inline I/O": (
        "import os, asyncio; os.fsync = lambda fd: None\n"
        "async def _inline(f, *a, **k): return f(*a, **k)\n"
        "asyncio.to_thread = _inline"
    ),
}
_RUN = "{patch}\nimport sys\nfrom batch.cli import main\nsys.argv = ['batch', *sys.argv[1:]]\nmain()\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--group", choices=("tiny", "photos"), default="tiny",
                    help="corpus images: tiny (64x64) or photos (1920x1080)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()
    ensure_corpus(a.corpus)
    tiny = corpus_rows(a.corpus, a.group)
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header(f"Driver cost per row: {a.group} images, by ablation")

    out_rows = []
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp, \
            running(worker_cmd("--processes", str(os.cpu_count()))) as (address, server):
        tmp = Path(tmp)
        manifest = tmp / "tiny.csv"
        write_manifest(manifest, ({"id": str(i), "path": str(tiny[i % len(tiny)][0]), "op": "rotate",
                                   "rotation": tiny[i % len(tiny)][1], "output": f"{i // 1000:03d}/{i:06d}.jpg"}
                                  for i in range(a.rows)))
        for name, patch in _PATCHES.items():
            out = tmp / name.replace(" ", "_").replace(",", "")
            cmd = [str(BIN / "python"), "-c", _RUN.format(patch=patch), "run", str(manifest), "--out", str(out),
                   "--quiet", "--worker", address]
            worker_before = tree_cpu(server.pid)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            worker = tree_cpu(server.pid) - worker_before
            driver = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            ok = sum(r["status"] == "ok" for r in results_rows(out))
            if ok != a.rows:
                sys.exit(f"{name}: {ok} ok of {a.rows}")
            out_rows.append([f"batch run, {name}", wall, a.rows / wall, driver / a.rows * 1000,
                             worker / a.rows * 1000])
        # the floor: the same calls from a bare grpc.aio client in this process, same calls in flight
        images = [p.read_bytes() for p, _ in tiny]
        worker_before = tree_cpu(server.pid)
        t0 = os.times()
        bare = load(address, "/imageworker.v1.ImageWorker/Rotate", images, a.rows, concurrency=8,
                    processes=os.cpu_count(), connections=4)
        t1 = os.times()
        worker = tree_cpu(server.pid) - worker_before
        client = (t1.user - t0.user) + (t1.system - t0.system)
        out_rows.append(["bare grpc.aio client, same calls, 8 in flight (no files, no results)", bare.seconds,
                         bare.rate, client / a.rows * 1000, worker / a.rows * 1000])

    print(f"{a.rows} rows of {a.group} JPEGs, one external worker ({os.cpu_count()} processes), driver defaults "
          "(8 calls in flight)\n")
    print(table(["variant", "wall (s)", "rows/s", "driver CPU ms/row", "worker CPU ms/row"], out_rows))


if __name__ == "__main__":
    main()
