"""A real worker on loopback for evaluation: a channel to a local `worker serve` for as long as it is needed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from worker.local import LocalWorker

MAX_MESSAGE = 64 * 1024 * 1024


@contextmanager
def running_worker(model: Path | None, processes: int = 1, timeout: float = 120.0) -> Iterator[grpc.Channel]:
    """A channel to a freshly started local ``worker serve`` whose every process serves."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        npz = Path(model).with_suffix(".npz") if model is not None else None
        with LocalWorker(processes, Path(tmp) / "worker.log", timeout, model=npz) as worker:
            opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
            with grpc.insecure_channel(worker.address, options=opts) as channel:
                yield channel
