"""Shared test fixtures: real worker processes on loopback, real image corpora."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGEBATCH_SHARED", ROOT.parent / "shared"))
MAKE_CORPUS = SHARED / "bench" / "make_corpus.py"

BIG_MESSAGES = [
    ("grpc.max_receive_message_length", 256 * 2**20),
    ("grpc.max_send_message_length", 256 * 2**20),
]


class WorkerProcess:
    """A `worker serve` child process; ``address`` is host:port once it serves."""

    def __init__(self, proc: subprocess.Popen, address: str, log: Path) -> None:
        self.proc = proc
        self.address = address
        self.log = log

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def worker_process(*args: str, processes: int = 1, port: int = 0, timeout: float = 60) -> Iterator[WorkerProcess]:
    """Start `worker serve` on loopback and wait until every process serves."""
    log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "worker", "serve", "--port", str(port), "--processes", str(processes), *args]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].startswith(b"LISTENING "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"worker did not start: {line!r}\n{log.read_text(errors='replace')[-3000:]}")
    w = WorkerProcess(proc, line[0].decode().split()[1], log)
    try:
        yield w
    finally:
        w.stop()
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def worker() -> Iterator[WorkerProcess]:
    """One plaintext single-process worker shared by the tests of a session."""
    with worker_process() as w:
        yield w


@pytest.fixture
def channel(worker: WorkerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(worker.address, options=BIG_MESSAGES) as ch:
        yield ch


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """make_corpus.py's formats/ and a few photos (small counts: enough to test, quick to make)."""
    if not MAKE_CORPUS.exists():
        pytest.skip(f"{MAKE_CORPUS} is absent: the shared corpus builder is needed")
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [sys.executable, str(MAKE_CORPUS), str(out), "--photos", "4", "--large", "1", "--tiny", "16"],
        check=True, capture_output=True,
    )
    return out


def wait_for(predicate, timeout: float = 30, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
