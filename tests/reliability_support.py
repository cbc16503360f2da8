"""Helpers for the reliability, hostile-input, overload and TLS tests: real processes, real files."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import psutil
from conftest import ROOT, WorkerProcess, wait_for, worker_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc

# The `batch` console script, run with this interpreter whether or not its bin/ is on PATH.
BATCH = [sys.executable, "-c", "import sys; from batch.cli import main; sys.argv[0] = 'batch'; main()"]


def jpeg(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A small photo-like JPEG (gradient plus noise), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y + seed) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def free_port() -> int:
    """A port nobody listens on now, so a worker can be started (and restarted) on it explicitly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(address: str, timeout: float = 5) -> bool:
    """Whether the worker at ``address`` answers health SERVING (plaintext)."""
    try:
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def rotates(address: str) -> bool:
    """Whether the worker still does real work: a valid JPEG rotates and comes back the right size."""
    with grpc.insecure_channel(address) as ch:
        reply = v1_grpc.ImageWorkerStub(ch).Rotate(v1.RotateRequest(image=jpeg(32, 16), degrees=90), timeout=30)
    return (reply.width, reply.height) == (16, 32)


def cap_memory(w: WorkerProcess, headroom_mb: int = 1500) -> int:
    """Limit a running single-process worker's address space to its current size plus ``headroom_mb``.

    A memory bomb that gets past the worker's checks then fails inside that
    worker (MemoryError) instead of taking the whole test machine down.
    Returns the limit in MiB.
    """
    proc = psutil.Process(w.proc.pid)
    limit = proc.memory_info().vms + headroom_mb * 2**20
    proc.rlimit(psutil.RLIMIT_AS, (limit, limit))
    return limit // 2**20


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def write_manifest(path: Path, header: str, rows: list[str], newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join([header, *rows]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def make_batch(folder: Path, n: int, *, classify_every: int = 0, size: int = 48) -> Path:
    """``n`` distinct tiny JPEGs under ``folder/img`` and a rotate manifest over them (ids r0…)."""
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{i:05d}.jpg"
        (images / name).write_bytes(jpeg(size, size, seed=i))
        if classify_every and i % classify_every == 0:
            rows.append(f"r{i},img/{name},classify,")
        else:
            rows.append(f"r{i},img/{name},rotate,{(i % 3 + 1) * 90}")
    return write_manifest(folder / "manifest.csv", "id,path,op,rotation", rows)


def batch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BATCH_WORKER", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_batch(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`batch run ARGS…` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [*BATCH, "run", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=batch_env()
    )


def start_batch(*args: str | Path, log: Path) -> subprocess.Popen:
    """`batch run ARGS…` in the background, output to ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen([*BATCH, "run", *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=batch_env())


def results(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/results.csv`` (empty when it does not exist yet)."""
    path = out / "results.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in rows}


def files_under(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stray_temporaries(folder: Path) -> list[str]:
    """Files that look like an interrupted atomic write (anything not an image, results or run record)."""
    keep = {".jpg", ".jpeg", ".png", ".csv", ".json", ".parquet", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    lock = folder / ".lock"  # the driver's run lock (flock), kept on purpose
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p != lock
            and (p.suffix.lower() not in keep or ".tmp" in p.name or p.name.startswith("."))]


@contextmanager
def worker_on(port: int, *args: str, processes: int = 1) -> Iterator[WorkerProcess]:
    """A worker on a fixed port (so it can be killed and brought back on the same address)."""
    with worker_process(*args, processes=processes, port=port) as w:
        yield w


def kill(w: WorkerProcess) -> None:
    """SIGKILL a worker (and, for a multi-process one, its children) with no chance to drain."""
    children = psutil.Process(w.proc.pid).children(recursive=True)
    w.proc.send_signal(signal.SIGKILL)
    for c in children:
        try:
            c.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    w.proc.wait(30)
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10)
