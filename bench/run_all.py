"""Run every benchmark in turn on a quiet machine and keep each one's output (the tables of docs/benchmarks.md).

    python bench/run_all.py [--corpus /tmp/ibcorpus] [--out /tmp/ibbench] [--quiet-load 0.5] [--only rotate,scale]

Waits (up to --max-wait seconds) for the 1-minute load average to fall below
--quiet-load before each script, since other work on the machine skews every
figure; each script's header records the load it started at.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import DEFAULT_CORPUS, ensure_corpus, wait_for_quiet

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "rotate": ["bench_rotate.py", "--photos", "200", "--rounds", "3"],  # the goal's 200 photos, start-up included
    "serving": ["bench_serving.py"],  # worker CPU per photo against in-process: one process, one call at a time
    "overhead": ["bench_overhead.py"],
    "large": ["bench_large.py"],
    "scale": ["bench_scale.py"],
    "driver": ["bench_driver_cost.py"],
    "references": ["bench_references.py", "--rounds", "3"],  # the driver's ceiling, bytes vs reference mode
    "batching": ["bench_batching.py"],  # several rows per call against one: tiny JPEGs, by reference
    "driver_cpu": ["bench_driver_cpu.py", "--rounds", "3"],  # driver CPU per row by bytes / by reference, tiny
    "drivers": ["bench_drivers.py"],  # 1, 2 and 4 shards of one manifest against three stand-ins
    "classify": ["bench_classify.py"],  # issue 20's classification rows; needs IMAGEBATCH_LFW and face_recognition
}
# Scripts that make their own images instead of reading the corpus.
OWN_IMAGES = {"classify"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ibbench"), help="one <name>.md per benchmark")
    ap.add_argument("--quiet-load", type=float, default=0.5)
    ap.add_argument("--max-wait", type=float, default=900)
    ap.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS))
    a = ap.parse_args()
    ensure_corpus(a.corpus)
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        wait_for_quiet(a.quiet_load, a.max_wait)
        script, *args = SCRIPTS[name]
        corpus = [] if name in OWN_IMAGES else ["--corpus", str(a.corpus)]
        cmd = [sys.executable, str(HERE / script), *corpus, *args]
        print(f"running {' '.join(cmd)}", file=sys.stderr, flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True)
        (a.out / f"{name}.md").write_text(result.stdout)
        (a.out / f"{name}.log").write_text(result.stderr)
        print(result.stdout, flush=True)
        if result.returncode:
            print(f"{script} failed ({result.returncode}); see {a.out / (name + '.log')}", file=sys.stderr)


if __name__ == "__main__":
    main()
