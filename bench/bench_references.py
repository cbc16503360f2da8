"""The driver's own ceiling, bytes mode against reference mode: one `batch run` against a stand-in worker.

The stand-in (bench/echo_server.py) answers Rotate with no image work: in bytes
mode it sends the image back, by reference it answers with the metadata only.
So rows/s here is what one driver process can feed, and its CPU per row says
how many worker cores it keeps busy (a real worker spends ~22-28 ms of CPU on
a 1080p photo). Goal (issue: scale past one machine): reference mode >= 5x
the rows/s of bytes mode on 1080p photos.

    python bench/bench_references.py [--corpus /tmp/ibcorpus] [--rows 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, DEFAULT_CORPUS, corpus_rows, ensure_corpus, print_header, table, tree_cpu, wait_for_quiet
from common import write_manifest as write_rows
from servers import echo_cmd, running

WORKER_CPU_MS = 25.0  # a real worker's CPU per 1080p photo (docs/benchmarks.md): for "worker cores fed"


def run_once(manifest: Path, out: Path, address: str, server_pid: int, *extra: str) -> tuple[float, float, float]:
    """(wall seconds, driver CPU seconds, stand-in CPU seconds) of one `batch run`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_before = tree_cpu(server_pid)
    start = time.perf_counter()
    subprocess.run([str(BIN / "batch"), "run", str(manifest), "--out", str(out), "--worker", address, "--quiet",
                    "--restart", *extra], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    driver = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, driver, tree_cpu(server_pid) - worker_before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--rows", type=int, default=3000)  # start-up amortised: 400 rows gave 2.6x, 3000 5.8x
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()
    ensure_corpus(a.corpus)
    photos = corpus_rows(a.corpus, "photos")
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("The driver's ceiling: bytes mode vs reference mode, stand-in worker, 1080p photos")
    rates: dict[str, list[float]] = {"bytes": [], "references": []}
    cpu: dict[str, list[float]] = {"bytes": [], "references": []}
    with tempfile.TemporaryDirectory(prefix="bench-refs-") as tmp, running(echo_cmd("--processes", "1")) as (
            address, server):
        tmp = Path(tmp)
        manifest = tmp / "photos.csv"
        write_rows(manifest, ({"id": str(i), "path": str(photos[i % len(photos)][0]), "op": "rotate",
                               "rotation": "90", "output": f"{i // 1000:03d}/{i:06d}.jpg"} for i in range(a.rows)))
        for _ in range(a.rounds):  # interleaved, so that a noisy moment costs both modes alike
            for mode, extra in (("bytes", ()), ("references", ("--references",))):
                wall, driver, _worker = run_once(manifest, tmp / mode, address, server.pid, *extra)
                rates[mode].append(a.rows / wall)
                cpu[mode].append(driver / a.rows * 1000)
    rows = []
    for mode in rates:
        ms = statistics.median(cpu[mode])
        rows.append([mode, statistics.median(rates[mode]), f"{min(rates[mode]):.0f}-{max(rates[mode]):.0f}", ms,
                     WORKER_CPU_MS / ms])
    ratio = statistics.median(rates["references"]) / statistics.median(rates["bytes"])
    print(f"{a.rows} rows of 1080p JPEGs ({photos[0][0].stat().st_size / 1e6:.2f} MB each), {a.rounds} rounds, "
          "one stand-in worker process on the same 2 cores, driver defaults\n")
    print(table(["mode", "rows/s (median)", "spread", "driver CPU ms/row", "worker cores one driver feeds"], rows))
    print(f"\nreference / bytes rows/s: {ratio:.2f}x (goal >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
    sys.exit(0)


if __name__ == "__main__":
    main()
