"""How many image calls a worker process holds, and which threads do their work.

gRPC's own cap (``maximum_concurrent_rpcs``) counts every call, health checks
and reflection included, and calls past its thread pool wait in a queue no
servicer sees. So the server gets a thread for every call it admits, and this
gate does the rest: past ``limit`` image calls it refuses at once with
``Busy`` (RESOURCE_EXHAUSTED, which clients retry), and the admitted calls'
image work runs on ``workers`` threads of its own, the others waiting their
turn with only their request bytes. Keeping decode/encode on a few fixed
threads also keeps the allocator's per-thread arenas, and so the memory a
process retains after big images, to ``workers`` of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image")

    @property
    def admitted(self) -> int:
        return self._admitted

    def run(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` on one of the workers once admitted (Busy when ``limit`` calls are held)."""
        with self._lock:
            if self._admitted >= self.limit:
                raise Busy(
                    f"worker busy: {self.limit} image calls in flight already (worker serve "
                    "--max-concurrent-rpcs); retry after a backoff"
                )
            self._admitted += 1
        try:
            return self._pool.submit(work, *args).result()
        finally:
            with self._lock:
                self._admitted -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)
