"""What every benchmark script shares: the corpus, the machine's description, tables, memory sampling.

Benchmarks are scripts (``python bench/bench_X.py --help``), never timed tests.
Each prints the machine it ran on and a Markdown table that goes into
docs/benchmarks.md as is.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import os
import platform
import resource
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the benchmarks run from a checkout and build their corpus with the tests' own maker
from tests.support.images import make_corpus  # noqa: E402

DEFAULT_CORPUS = Path("/tmp/ibcorpus")
BIN = Path(sys.executable).parent  # the venv's console scripts: batch, worker


def ensure_corpus(corpus: Path, photos: int = 200, large: int = 8, tiny: int = 2000) -> Path:
    """Build the deterministic corpus (tests.support.images.make_corpus) unless it is already there."""
    wanted = {"photos": photos, "large": large, "tiny": tiny}
    have = {name: len(list((corpus / name).glob("*.jpg"))) for name in wanted}
    if all(have[name] >= n for name, n in wanted.items()):
        return corpus
    print(f"building corpus in {corpus} ({wanted}) ...", file=sys.stderr, flush=True)
    return make_corpus(corpus, **{k: max(v, have[k]) for k, v in wanted.items()})


def corpus_rows(corpus: Path, group: str) -> list[tuple[Path, int]]:
    """(absolute path, degrees) for each row of the corpus's manifest-<group>.csv."""
    with open(corpus / f"manifest-{group}.csv", newline="") as f:
        return [(corpus / r["path"], int(r["rotation"])) for r in csv.DictReader(f)]


def write_manifest(path: Path, rows: Iterable[dict]) -> int:
    """Write a batch manifest (columns from the first row); return the number of rows."""
    n = 0
    with open(path, "w", newline="") as f:
        writer = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            n += 1
    return n


def machine() -> list[str]:
    """Lines describing the machine and software, printed above every table."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("imagebatch", "grpcio", "protobuf", "Pillow", "numpy", "dlib-bin", "psutil"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    libjpeg = _libturbojpeg()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical), {cpu}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}",
        f"software: Python {platform.python_version()}, {', '.join(versions)}, libturbojpeg {libjpeg}",
        f"commit {commit or '?'}; load average before the run: {load}",
    ]


def _libturbojpeg() -> str:
    out = subprocess.run(["sh", "-c", "dpkg-query -W -f='${Version}' libturbojpeg0 2>/dev/null"],
                         capture_output=True, text=True).stdout.strip()
    return out or "not installed"


def print_header(title: str, argv: Sequence[str] | None = None) -> None:
    print(f"## {title}\n")
    for line in machine():
        print(f"- {line}")
    cmd = " ".join(shlex.quote(a) for a in (argv or sys.argv))
    print(f"- command: `python {cmd}`\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get 3 significant-ish digits."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    """Wait (up to max_wait seconds) for the 1-minute load average to fall below max_load."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: load {os.getloadavg()[0]:.2f} >= {max_load}", file=sys.stderr)
        time.sleep(15)


# -- memory ------------------------------------------------------------------

def _hwm(pid: int) -> int:
    """The kernel's own peak-RSS mark (VmHWM) of a process, in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ProcPeak:
    name: str
    pid: int
    peak_rss: int = 0  # max of sampled RSS and the kernel's VmHWM: catches spikes between samples
    baseline_rss: int = 0  # RSS when first seen


@dataclass
class TreeSampler:
    """Samples the RSS of a process and all its descendants every ``interval`` seconds, in a thread.

    Per process it keeps the peak (sampled RSS and the kernel's VmHWM, which
    catches spikes between samples); for the tree it keeps the peak of the
    simultaneous sum. Forked children share pages with their parent, so the
    sum of RSS over-counts shared pages; the per-process figures do not.
    """

    root: int
    interval: float = 0.05
    procs: dict[int, ProcPeak] = field(default_factory=dict)
    peak_tree_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.root)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in tree:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline()[:3]) or p.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += rss
                peak = self.procs.setdefault(p.pid, ProcPeak(name=name, pid=p.pid, baseline_rss=rss))
                peak.peak_rss = max(peak.peak_rss, rss, _hwm(p.pid))
            self.peak_tree_rss = max(self.peak_tree_rss, total)
            self._stop.wait(self.interval)


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds used so far by the children of ``pid`` (a server's processes)."""
    total = 0.0
    for p in psutil.Process(pid).children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class Counters(NamedTuple):
    cpu: float  # user + system seconds
    faults: int  # minor page faults
    switches: int  # context switches, every thread's


def tree_counters(pid: int) -> Counters:
    """What ``pid`` and its children (a server's processes) have used so far: read before and after the work
    measured."""
    cpu, faults, switches = 0.0, 0, 0
    proc = psutil.Process(pid)
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = [(task / "status").read_text() for task in Path(f"/proc/{p.pid}/task").iterdir()]
        except (psutil.NoSuchProcess, OSError):
            continue
        cpu += t.user + t.system
        faults += int(stat[7])
        switches += sum(int(line.split()[1]) for text in status for line in text.splitlines()
                        if "ctxt_switches:" in line)
    return Counters(cpu, faults, switches)


def mib(n: float) -> float:
    return n / 2**20


# -- running the driver -------------------------------------------------------

@dataclass
class BatchRun:
    wall: float  # seconds, process start to exit
    returncode: int
    memory: TreeSampler
    stdout: str
    stderr: str
    command: list[str]
    cpu: float = 0.0  # user + system seconds of the driver and the children it waited for (its embedded worker)

    def stuck_workers(self, out: Path) -> int:
        """Embedded worker processes that logged serving but never 'stopped' (killed after the driver's grace)."""
        try:
            log = (out / "worker.log").read_text(errors="replace")
        except OSError:
            return 0
        serving = {line.split("worker[", 1)[1].split("]", 1)[0] for line in log.splitlines()
                   if "worker[" in line and " serving imageworker" in line}
        stopped = {line.split("worker[", 1)[1].split("]", 1)[0] for line in log.splitlines()
                   if "worker[" in line and " stopped after " in line}
        return len(serving - stopped)

    def driver_peak(self) -> int:
        """Peak RSS of the driver process alone (not its embedded worker)."""
        return self.memory.procs[self.memory.root].peak_rss if self.memory.root in self.memory.procs else 0

    def worker_procs(self) -> list[ProcPeak]:
        """The embedded worker's processes: every descendant of the driver."""
        return [p for pid, p in self.memory.procs.items() if pid != self.memory.root]


def checkout(rev: str, into: Path) -> Path:
    """The tree of commit ``rev``, extracted under ``into``."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def tree_env(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree`` (``checkout``) first on PYTHONPATH: a child ``batch`` or
    ``python -P`` runs that tree's code, and so does an embedded worker it starts."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))


def batch_run(manifest: Path, out: Path, *extra: str, interval: float = 0.05, tree: Path | None = None) -> BatchRun:
    """Run ``batch run MANIFEST --out OUT --quiet EXTRA...`` and sample its process tree's memory; with ``tree``
    (``checkout``), that tree's code, the embedded worker's too."""
    cmd = [str(BIN / "batch"), "run", str(manifest), "--out", str(out), "--quiet", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = None if tree is None else tree_env(tree)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with TreeSampler(proc.pid, interval=interval) as memory:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    run = BatchRun(wall, proc.returncode, memory, stdout, stderr, cmd, cpu)
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{stdout}\n{stderr}")
    stuck = run.stuck_workers(out)
    if stuck:
        print(f"WARNING: {stuck} embedded worker process(es) did not stop on SIGTERM and were killed after the "
              f"driver's grace period; this run's wall time ({wall:.1f} s) includes that wait "
              f"(see {out / 'worker.log'})", file=sys.stderr, flush=True)
    return run


def spread(results: list[dict]) -> str:
    """Rows per answering worker process, most first, e.g. "150 / 50": SO_REUSEPORT spreads connections by hash."""
    counts: dict[str, int] = {}
    for r in results:
        if r.get("worker"):
            counts[r["worker"]] = counts.get(r["worker"], 0) + 1
    return " / ".join(str(n) for n in sorted(counts.values(), reverse=True))


def results_rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))
