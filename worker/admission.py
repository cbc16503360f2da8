"""How many image calls a worker process holds, and how many work at once.

gRPC's own cap (``maximum_concurrent_rpcs``) counts every call, health checks
and reflection included, and calls past its thread pool wait in a queue no
servicer sees. So the server gets a thread for every call it admits, and this
gate does the rest: past ``limit`` image calls it refuses at once with
``Busy`` (RESOURCE_EXHAUSTED, reason WORKER_BUSY: clients retry it soon), and
at most ``workers`` of the admitted calls decode and encode at a time, the
others waiting their turn with only their request bytes. The work runs on the caller's thread: handing
it to a pool of ``workers`` threads cost 0.3 ms per call (64x64 images:
3,127 -> 2,633 calls/s, docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from worker.errors import Busy

T = TypeVar("T")


class Admission:
    def __init__(self, limit: int, workers: int) -> None:
        if limit < 1 or workers < 1:
            raise ValueError("the in-flight limit and the number of workers must be at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._admitted = 0
        self._working = threading.BoundedSemaphore(workers)

    @property
    def admitted(self) -> int:
        return self._admitted

    def run(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` once admitted and given one of the ``workers`` turns; Busy when ``limit`` calls are held."""
        with self._lock:
            if self._admitted >= self.limit:
                raise Busy(
                    f"worker busy: {self.limit} image calls in flight already (worker serve "
                    "--max-concurrent-rpcs); retry after a backoff"
                )
            self._admitted += 1
        try:
            with self._working:
                return work(*args)
        finally:
            with self._lock:
                self._admitted -= 1
