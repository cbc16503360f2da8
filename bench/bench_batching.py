"""Several rows per call (RotateBatch, --batch-rows 16, the default) against one row per call (--batch-rows 1),
alternating in one run, on issue 20's rows that batching aims at:

- 2,000 tiny JPEGs, the whole command: `batch run` with its embedded worker (start-up included), rows/s, into
  a fresh --out (a first run; every fresh run first, none removing anything), then again with --restart over
  each run's outputs (on ext4 every rename over an output frees its inode, which later new files are searched
  past for a while, and makes the kernel allocate and start writing the new one at once: auto_da_alloc);
- one driver by reference against a stand-in worker that answers at once (bench/echo_server.py), 1080p rows:
  rows/s, and the driver's CPU per row (the worker cores it feeds at ~25 ms of worker CPU per photo).

    python bench/bench_batching.py [--corpus /tmp/ibcorpus] [--tiny 2000] [--refs 3000] [--rounds 3] [--before REV]

With --before, the tiny runs are made with that commit's code too (its tree on PYTHONPATH, the embedded worker's
as well), alternated with this checkout's in each round: on this machine's file system the same command's rows/s
moved by 1.4x between runs minutes apart (inodes freed by other runs, see below), so a comparison is only
good within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_CORPUS, batch_run, checkout, corpus_rows, ensure_corpus, print_header, table, wait_for_quiet
from common import write_manifest as write_rows
from servers import echo_cmd, running

WORKER_CPU_MS = 25.0  # a real worker's CPU per 1080p photo (docs/benchmarks.md): for "worker cores fed"
MODES = {"one row per call": ("--batch-rows", "1"), "16 rows per call": ("--batch-rows", "16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--tiny", type=int, default=2000, help="tiny JPEG rows, embedded worker")
    ap.add_argument("--refs", type=int, default=3000, help="1080p rows by reference against the stand-in")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", help="an earlier commit whose tiny runs alternate with this checkout's")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()
    ensure_corpus(a.corpus)
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Several rows per call against one: tiny JPEGs (whole command) and 1080p by reference")
    tiny, photos = corpus_rows(a.corpus, "tiny"), corpus_rows(a.corpus, "photos")
    sides = ["after", "before"] if a.before else ["after"]
    rates = {(what, mode): [] for what in ("tiny", "tiny again", "refs") for mode in MODES}
    earlier = {(what, mode): [] for what in ("tiny", "tiny again", "cpu") for mode in MODES}
    cpu = {mode: [] for mode in MODES}
    tiny_cpu = {mode: [] for mode in MODES}  # the driver and its embedded worker: steadier than wall on a busy box
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp, \
            running(echo_cmd("--processes", "1")) as (address, _server):
        tmp = Path(tmp)
        trees = {"after": None, "before": checkout(a.before, tmp / "before-tree") if a.before else None}
        tiny_csv, refs_csv = tmp / "tiny.csv", tmp / "refs.csv"
        write_rows(tiny_csv, ({"id": str(i), "path": str(tiny[i % len(tiny)][0]), "op": "rotate", "rotation": "90"}
                              for i in range(a.tiny)))
        write_rows(refs_csv, ({"id": str(i), "path": str(photos[i % len(photos)][0]), "op": "rotate",
                               "rotation": "90", "output": f"{i // 1000:03d}/{i:06d}.jpg"} for i in range(a.refs)))
        for r in range(a.rounds):  # interleaved, so that a noisy moment costs both modes alike
            for mode, extra in MODES.items():
                # A folder of its own, nothing removed: on ext4 a new file's inode is searched past every inode
                # freed in the last seconds (recently_deleted), which made a run after one that had just removed
                # or replaced 2,000 files spend up to 1 s more of the driver's system time (perf, docs).
                for side in sides if r % 2 == 0 else reversed(sides):
                    # the embedded worker, a fresh --out
                    run = batch_run(tiny_csv, tmp / f"tiny-{r}-{mode}-{side}", *extra, tree=trees[side])
                    _check(run, "tiny")
                    got = rates if side == "after" else earlier
                    got["tiny", mode].append(a.tiny / run.wall)
                    (tiny_cpu[mode] if side == "after" else earlier["cpu", mode]).append(run.cpu / a.tiny * 1000)
                run = batch_run(refs_csv, tmp / "refs", "--restart", "--worker", address, "--references", *extra)
                _check(run, "refs")
                rates["refs", mode].append(a.refs / run.wall)
                cpu[mode].append(run.cpu / a.refs * 1000)
        for r in range(a.rounds):  # then each again over its own outputs: every rename frees the replaced inode
            for mode, extra in MODES.items():
                for side in sides if r % 2 == 0 else reversed(sides):
                    run = batch_run(tiny_csv, tmp / f"tiny-{r}-{mode}-{side}", "--restart", *extra, tree=trees[side])
                    _check(run, "tiny again")
                    (rates if side == "after" else earlier)["tiny again", mode].append(a.tiny / run.wall)
    print(f"{a.tiny} tiny JPEGs ({tiny[0][0].stat().st_size:,} bytes each) with the embedded worker, and "
          f"{a.refs} 1080p rows by reference against one stand-in process; {a.rounds} rounds, median (spread)\n")
    rows = []
    for mode in MODES:
        t, again, r = rates["tiny", mode], rates["tiny again", mode], rates["refs", mode]
        ms = statistics.median(cpu[mode])
        c = tiny_cpu[mode]
        rows.append([mode, f"{statistics.median(t):,.0f} ({min(t):,.0f}-{max(t):,.0f})",
                     f"{statistics.median(c):.2f} ({min(c):.2f}-{max(c):.2f})",
                     f"{statistics.median(again):,.0f} ({min(again):,.0f}-{max(again):,.0f})",
                     f"{statistics.median(r):,.0f} ({min(r):,.0f}-{max(r):,.0f})",
                     f"{ms:.2f} ({min(cpu[mode]):.2f}-{max(cpu[mode]):.2f})", WORKER_CPU_MS / ms])
    print(table(["mode", "tiny JPEGs, whole command, fresh --out: rows/s", "tiny: CPU ms/row, driver + embedded worker",
                 "tiny again, --restart over those outputs: rows/s",
                 "1080p by reference, stand-in: rows/s",
                 "driver CPU ms/row by reference", "worker cores one driver feeds"], rows))
    if a.before:
        print(f"\nThe same tiny runs with the code of {a.before} (before), alternated with these in each round:\n")
        print(table(["mode", "before: fresh --out rows/s", "before: CPU ms/row", "before: --restart rows/s",
                     "after / before, fresh --out", "after / before, CPU"],
                    [[mode, _median_spread(earlier["tiny", mode], ",.0f"), _median_spread(earlier["cpu", mode], ".2f"),
                      _median_spread(earlier["tiny again", mode], ",.0f"),
                      f"{statistics.median(rates['tiny', mode]) / statistics.median(earlier['tiny', mode]):.2f}",
                      f"{statistics.median(tiny_cpu[mode]) / statistics.median(earlier['cpu', mode]):.2f}"]
                     for mode in MODES]))
    one, many = MODES
    for what, label in (("tiny", "tiny JPEGs"), ("tiny again", "tiny JPEGs with --restart"), ("refs", "by reference")):
        gain = statistics.median(rates[what, many]) / statistics.median(rates[what, one])
        print(f"\n{label}: 16 rows per call / one row per call = {gain:.2f}x rows/s")
    sys.exit(0)


def _median_spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _check(run, what: str) -> None:
    if run.returncode != 0:
        sys.exit(f"{what}: {' '.join(run.command)} exited {run.returncode}:\n{run.stdout}\n{run.stderr}")


if __name__ == "__main__":
    main()
