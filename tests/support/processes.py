"""Real processes on loopback: workers (on worker.local's launcher), `batch run` drivers, and probes of both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.images import jpeg
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.local import LocalWorker, python_command

ROOT = Path(__file__).resolve().parents[2]

BIG_MESSAGES = [
    ("grpc.max_receive_message_length", 256 * 2**20),
    ("grpc.max_send_message_length", 256 * 2**20),
]

# The `batch` console script, run with this interpreter whether or not its bin/ is on PATH.
BATCH = python_command("-c", "import sys; from batch.cli import main; sys.argv[0] = 'batch'; main()")


@contextmanager
def worker_process(*args: str, processes: int = 1, port: int = 0, timeout: float = 60) -> Iterator[LocalWorker]:
    """`worker serve ARGS…` on loopback (``port`` 0: a free one), once every process serves; its log in ``w.log``."""
    with tempfile.TemporaryDirectory(prefix="worker-") as tmp, \
            LocalWorker(processes, Path(tmp) / "worker.log", timeout, args=args, port=port) as w:
        yield w


def kill(w: LocalWorker) -> None:
    """SIGKILL a worker (and, for a multi-process one, its children) with no chance to drain."""
    children = psutil.Process(w.proc.pid).children(recursive=True)
    w.proc.send_signal(signal.SIGKILL)
    for c in children:
        try:
            c.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    w.proc.wait(30)
    all_exited(children)


def all_exited(processes: list[psutil.Process], timeout: float = 10) -> bool:
    """Whether every one of ``processes`` has exited (a zombie counts) within ``timeout`` seconds."""
    return wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes),
                    timeout)


def free_port() -> int:
    """A port nobody listens on now, so a worker can be started (and restarted) on it explicitly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


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


def cap_memory(w: LocalWorker, headroom_mb: int = 1500) -> int:
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


def batch_env(changes: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a `batch run` child: no worker named by the caller's $BATCH_WORKER; ``changes`` set
    (None: removed)."""
    env = dict(os.environ)
    env.pop("BATCH_WORKER", None)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(script: str, *args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """This interpreter running ``script`` (``python -P -c``) with ARGS to completion; stdout and stderr captured
    as text. subprocess.TimeoutExpired after ``timeout`` seconds, the process killed."""
    return subprocess.run(python_command("-c", script, *args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def run_batch(*args: str | Path, timeout: float = 120, cwd: Path = ROOT,
              env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`batch run ARGS…` to completion, its environment this one's with ``env``'s changes (batch_env); stdout
    and stderr captured as text."""
    return subprocess.run([*BATCH, "run", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=batch_env(env))


def start_batch(*args: str | Path, log: Path) -> subprocess.Popen:
    """`batch run ARGS…` in the background, output to ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen([*BATCH, "run", *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=batch_env())
