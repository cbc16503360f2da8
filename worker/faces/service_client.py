"""A real worker on loopback for evaluation: start `worker serve`, wait until it serves, call it, stop it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MAX_MESSAGE = 64 * 1024 * 1024


@contextmanager
def running_worker(model: Path | None, processes: int = 1, timeout: float = 120.0) -> Iterator[grpc.Channel]:
    """A channel to a freshly started ``worker serve --port 0`` that reports SERVING."""
    cmd = [sys.executable, "-m", "worker", "serve", "--port", "0", "--processes", str(processes)]
    if model is not None:
        cmd += ["--model", str(Path(model).with_suffix(".npz"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    try:
        target = _listening(proc, timeout)
        opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        with grpc.insecure_channel(target, options=opts) as channel:
            _wait_serving(channel, proc, timeout)
            yield channel
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if we are killed before our ``finally`` can stop it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _listening(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with code {proc.wait()} before listening (see its stderr)")
        if line.startswith("LISTENING "):
            return line.split()[1]
    raise TimeoutError(f"worker did not print LISTENING within {timeout:.0f} s")


def _wait_serving(channel: grpc.Channel, proc: subprocess.Popen, timeout: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} while loading (see its stderr)")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker did not report SERVING within {timeout:.0f} s")
