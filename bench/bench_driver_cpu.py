"""The driver's own CPU per row, by bytes and by reference, and 2,000 tiny JPEGs through the whole command:
this checkout against an earlier commit, alternated in one run.

Three measures, each run ``--rounds`` times per side, the two sides alternating so that a noisy moment costs both:

- ``bytes``: ``batch run --worker`` against the stand-in worker (bench/echo_server.py, one process), 1080p
  photos: the stand-in sends each image back with the account a real worker gives (size, SHA-256), so the
  driver does what it does against a real worker (read, send, receive, write atomically, group commit) and
  no image work happens anywhere;
- ``reference``: the same with ``--references``: only paths travel, the stand-in answers at once;
- ``bytes, short`` and ``reference, short``: the same with 100 rows, so that the start-up (imports, index,
  connections, the finished table) and the cost of a further row can be told apart;
- a bare grpc.aio client in this process making the same calls (no files, no results): the floor of any
  Python driver that makes one call a row;
- the row's files alone, in this process with the driver's own functions: each photo read
  (``batch.files.read_input``), written atomically to a fresh folder (``batch.files.write_output``) and made
  durable by group commit (``batch.durable.GroupCommit``, one ``syncfs`` per 256 rows): with the bare client,
  the floor of a driver by bytes that keeps its promises (read the input once, no half-written output, outputs
  durable before their rows are journaled);
- ``tiny``: the README's command (the embedded worker, started by the driver) on 2,000 64x64 JPEGs: rows/s of
  the whole command, start-up included.

The driver's CPU is its own process's (user + system, ``RUSAGE_SELF`` at exit; the embedded worker's is not
in it), divided by the rows: start-up included, as a user pays it. "Worker cores one driver feeds" divides
a real worker's CPU per 1080p photo (~25 ms, docs/benchmarks.md) by the driver's CPU per row.

The earlier side runs the commit given by ``--before`` (default: 06f0b64, main before this work) from a
``git archive`` of it, put first on ``PYTHONPATH`` for the driver and the worker it starts.

    python bench/bench_driver_cpu.py [--before 06f0b64] [--rounds 3] [--photos 1000] [--references 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, checkout, corpus_rows, print_header, table, tree_env, wait_for_quiet, write_manifest
from servers import echo_cmd, load, running

from tests.support.images import make_corpus

WORKER_CPU_MS = 25.0  # a real worker's CPU per 1080p photo (docs/benchmarks.md, "worker CPU per photo")
DEFAULT_CORPUS = Path("/tmp/ibcorpus-driver")
SHORT = 100  # rows of the short runs that price the start-up
# The driver under measure, started by this launcher so that its own CPU (not its children's) is reported.
_LAUNCH = ("import atexit, resource, sys\n"
           "def _report():\n"
           "    u = resource.getrusage(resource.RUSAGE_SELF)\n"
           "    print(f'DRIVER_CPU {u.ru_utime + u.ru_stime}', file=sys.stderr, flush=True)\n"
           "atexit.register(_report)\n"
           "from batch.cli import main\n"
           "sys.argv = ['batch', *sys.argv[1:]]\n"
           "main()\n")


def corpus(folder: Path) -> Path:
    if not (folder / "manifest-tiny.csv").is_file() or len(list((folder / "tiny").glob("*.jpg"))) < 2000:
        print(f"building corpus in {folder} ...", file=sys.stderr, flush=True)
        make_corpus(folder, photos=20, large=0, tiny=2000)
    return folder


def files_floor(photos: list[Path], rows: int, folder: Path) -> tuple[float, float]:
    """(read, write + sync) CPU ms per row of the driver's own file work on ``rows`` photos, nothing else."""
    from batch.durable import GroupCommit
    from batch.files import forget_folders, read_input, write_output

    folder.mkdir()
    root = os.path.realpath(folder)
    group = GroupCommit(lambda entries: None)
    read = write = 0.0
    for i in range(rows):
        t0 = os.times()
        data = read_input(photos[i % len(photos)])
        t1 = os.times()
        output = folder / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        write_output(output, data, root)
        group.add((None, None, {}), str(output))
        if (i + 1) % 256 == 0 or i + 1 == rows:
            group.flush()
        t2 = os.times()
        read += (t1.user - t0.user) + (t1.system - t0.system)
        write += (t2.user - t1.user) + (t2.system - t1.system)
    group.close()
    forget_folders()
    return read / rows * 1000, write / rows * 1000


def run(manifest: Path, out: Path, tree: Path | None, *extra: str) -> tuple[float, float]:
    """(wall seconds, driver CPU seconds) of one ``batch run`` (from ``tree`` when given)."""
    env = dict(os.environ if tree is None else tree_env(tree), GRPC_VERBOSITY="NONE")
    start = time.perf_counter()
    # -P: with -c the current folder (a checkout) would come before PYTHONPATH and shadow the earlier tree.
    done = subprocess.run([str(BIN / "python"), "-P", "-c", _LAUNCH, "run", str(manifest), "--out", str(out), "--quiet",
                           "--restart", *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"batch run {manifest} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    cpu = [line for line in done.stderr.splitlines() if line.startswith("DRIVER_CPU ")]
    return wall, float(cpu[-1].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder; built if absent")
    ap.add_argument("--before", default="06f0b64", help="the earlier commit; 'none' measures this checkout only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=1000, help="rows by bytes (1080p)")
    ap.add_argument("--references", type=int, default=3000, help="rows by reference (1080p)")
    ap.add_argument("--tiny", type=int, default=2000, help="rows of 64x64 JPEGs, whole command")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    a = ap.parse_args()
    folder = corpus(a.corpus)
    photos, tiny = corpus_rows(folder, "photos"), corpus_rows(folder, "tiny")
    if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, 900)
    print_header("Driver CPU per row: by bytes, by reference, tiny images (before / after)")

    with tempfile.TemporaryDirectory(prefix="bench-driver-cpu-") as tmp, \
            running(echo_cmd("--processes", "1")) as (address, _server):
        tmp = Path(tmp)
        sides: dict[str, Path | None] = {"after": None}
        if a.before != "none":
            sides = {"before": checkout(a.before, tmp / "before"), **sides}

        def photo_rows(n: int):
            return ({"id": str(i), "path": str(photos[i % len(photos)][0]), "op": "rotate", "rotation": "90",
                     "output": f"{i // 1000:03d}/{i:06d}.jpg"} for i in range(n))

        write_manifest(tmp / "bytes.csv", photo_rows(a.photos))
        write_manifest(tmp / "reference.csv", photo_rows(a.references))
        (tmp / "tiny").mkdir()
        write_manifest(tmp / "tiny" / "tiny.csv", ({"id": str(i), "path": str(tiny[i % len(tiny)][0]), "op": "rotate",
                                                    "rotation": tiny[i % len(tiny)][1],
                                                    "output": f"{i // 1000:03d}/{i:06d}.jpg"} for i in range(a.tiny)))
        write_manifest(tmp / "short.csv", photo_rows(SHORT))
        measures = {
            "bytes": (tmp / "bytes.csv", a.photos, ("--worker", address)),
            "bytes, short": (tmp / "short.csv", SHORT, ("--worker", address)),
            "reference": (tmp / "reference.csv", a.references, ("--worker", address, "--references")),
            "reference, short": (tmp / "short.csv", SHORT, ("--worker", address, "--references")),
            "tiny": (tmp / "tiny" / "tiny.csv", a.tiny, ()),
        }
        cpu: dict[tuple[str, str], list[float]] = {}
        rate: dict[tuple[str, str], list[float]] = {}
        floor: dict[str, list[float]] = {}
        files: dict[str, list[float]] = {}
        for r in range(a.rounds):
            for measure, (manifest, rows, extra) in measures.items():
                for side, tree in sides.items():
                    wall, driver = run(manifest, tmp / f"out-{measure}-{side}", tree, *extra)
                    cpu.setdefault((measure, side), []).append(driver / rows * 1000)
                    rate.setdefault((measure, side), []).append(rows / wall)
            # The floor of any Python driver: a bare grpc.aio client making the same calls (prebuilt requests,
            # 8 in flight over 4 connections; no files, no results), its CPU per call.
            for measure, images, calls in (("bytes", [p.read_bytes() for p, _ in photos], a.photos),
                                           ("reference", [b""], a.references)):
                t0 = os.times()
                load(address, "/imageworker.v1.ImageWorker/Rotate", images, calls, concurrency=8, connections=4)
                t1 = os.times()
                floor.setdefault(measure, []).append(((t1.user - t0.user) + (t1.system - t0.system)) / calls * 1000)
            read, write = files_floor([p for p, _ in photos], a.photos, tmp / f"files-{r}")
            files.setdefault("read", []).append(read)
            files.setdefault("write", []).append(write)
            print(f"round {r + 1} of {a.rounds} done", file=sys.stderr, flush=True)

    def spread(values: list[float], fmt: str) -> str:
        return f"{format(min(values), fmt)}-{format(max(values), fmt)}"

    out, net = [], []
    for measure, (_m, rows, _e) in measures.items():
        if measure.endswith("short"):
            continue
        for side in sides:
            ms, rs = cpu[(measure, side)], rate[(measure, side)]
            fed = f"{WORKER_CPU_MS / statistics.median(ms):.0f}" if measure != "tiny" else "-"
            out.append([measure, rows, side, statistics.median(ms), spread(ms, ".3f"), statistics.median(rs),
                        spread(rs, ".0f"), fed])
            if measure != "tiny":  # the CPU a further row costs: the long run's less the short one's, per row
                total = [m * rows / 1000 for m in ms]
                short = [m * SHORT / 1000 for m in cpu[(f"{measure}, short", side)]]
                per_row = [(t - s) / (rows - SHORT) * 1000 for t, s in zip(total, short, strict=True)]
                start = [s - p * SHORT / 1000 for s, p in zip(short, per_row, strict=True)]
                net.append([measure, side, statistics.median(per_row), spread(per_row, ".3f"),
                            statistics.median(start), f"{WORKER_CPU_MS / statistics.median(per_row):.0f}"])
        if measure in floor:
            bare = floor[measure]
            net.append([measure, "bare grpc.aio client, same calls", statistics.median(bare), spread(bare, ".3f"), "-",
                        f"{WORKER_CPU_MS / statistics.median(bare):.0f}"])
        if measure == "bytes":  # the floor by bytes: the bare call and the row's own files, each round's sum
            for part, label in (("read", "the input read (batch.files.read_input)"),
                                ("write", "the output written atomically + group syncfs (batch.files, durable)")):
                net.append([measure, label, statistics.median(files[part]), spread(files[part], ".3f"), "-", "-"])
            total = [b + r + w for b, r, w in zip(floor["bytes"], files["read"], files["write"], strict=True)]
            net.append([measure, "floor: bare call + read + write", statistics.median(total), spread(total, ".3f"),
                        "-", f"{WORKER_CPU_MS / statistics.median(total):.0f}"])
    print(f"1080p photos ({photos[0][0].stat().st_size / 1e6:.2f} MB each) against one stand-in worker process; "
          f"64x64 JPEGs with the embedded worker; {a.rounds} rounds, sides alternated; "
          f"before = {a.before}, after = this checkout\n")
    print(table(["measure", "rows", "side", "driver CPU ms/row (median)", "spread", "rows/s (median)", "spread",
                 f"worker cores fed (at {WORKER_CPU_MS:.0f} ms/photo)"], out))
    print(f"\nNet of start-up: each round's run of {SHORT} rows against its long run (per row: the difference "
          "over the extra rows; start-up: what is left of the short run)\n")
    print(table(["measure", "side", "driver CPU ms per further row (median)", "spread", "start-up CPU s (median)",
                 "worker cores fed, long runs"], net))


if __name__ == "__main__":
    main()
