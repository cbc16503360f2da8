"""A fleet behind one DNS name: the driver's defaults against a hand-tuned ``--concurrency``.

Three stand-in workers 25 ms away (tests/support/fleet.py: they answer after a set delay and do no image work)
on 127.0.0.2-4 behind one name served by a DNS server on loopback; 3,000 tiny rows through the real
``batch run``, alternating a hand-tuned ``--concurrency 48`` with the defaults (which start at 8 calls per
address and adapt), for several rounds. Prints each round's rows/s and the ratio defaults / tuned with its
spread. (tests/batch/test_fleet.py checks the behaviour: the limit adapts up and every worker answers.)

    python bench/bench_fleet.py [--rows 3000] [--rounds 3] [--wait-quiet 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import batch_run, print_header, table, wait_for_quiet

from tests.support.fleet import FLEET_NAME, dns_server, stand_ins
from tests.support.manifests import make_batch
from tests.support.processes import free_port

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay", type=float, default=0.025, help="each stand-in's answer delay, seconds")
    ap.add_argument("--tuned", type=int, default=48, help="the hand-tuned --concurrency compared with")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait up to 15 min for the load average to fall below LOAD")
    args = ap.parse_args()
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet, 900)
    print_header("A fleet behind one DNS name: defaults against a hand-tuned --concurrency")
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_batch(work, args.rows, size=16)
        port = free_port()
        with dns_server() as (records, dns_port), stand_ins(HOSTS, port, args.delay, work):
            records.addresses = HOSTS
            target = f"dns://127.0.0.1:{dns_port}/{FLEET_NAME}:{port}"
            for i in range(args.rounds):
                tuned = batch_run(manifest, work / f"tuned{i}", "--worker", target, "--concurrency", str(args.tuned))
                default = batch_run(manifest, work / f"default{i}", "--worker", target)
                peak = json.loads((work / f"default{i}" / "run.json").read_text())["settings"]["concurrency_peak"]
                ratio = tuned.wall / default.wall
                ratios.append(ratio)
                rows.append((i + 1, f"{args.rows / tuned.wall:.0f}", f"{args.rows / default.wall:.0f}", peak,
                             f"{ratio:.2f}"))
    print(table(("round", f"--concurrency {args.tuned} rows/s", "defaults rows/s", "defaults' peak limit",
                 "defaults / tuned"), rows))
    print(f"\ndefaults / tuned: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
          f"max {max(ratios):.2f} over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
