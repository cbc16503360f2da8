"""grpc.health.v1 for the worker: Check and Watch, with no lock held while a stream is written.

Why not grpcio-health-checking's servicer: it writes to Watch streams while
holding its one lock (in ``Watch`` and in ``set``), and a non-blocking write
waits for the server's polling thread to complete it. When another Watch
stream closes, that same polling thread runs the close callback, which takes
the lock: the polling thread and the writer wait for each other, and the whole
worker stops answering (seen under overload: load-balancing clients open and
close many Watch streams). Here the shared lock only guards the tables, and
each stream's writes are ordered by a lock of its own that the polling thread
never takes.

Reported upstream as grpc/grpc pull request 43403
(https://github.com/grpc/grpc/pull/43403): once a grpcio-health-checking with
that fix is required, this module can give way to its servicer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _Stream:
    """One Watch stream: its send callback and the lock that keeps its writes in order."""

    def __init__(self, send: Callable[[health_pb2.HealthCheckResponse], None]) -> None:
        self.send = send
        self.lock = threading.Lock()


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Statuses by service name ("" is the whole server); Watch streams get every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, int] = {"": SERVING}
        self._streams: dict[str, set[_Stream]] = {}
        self._draining = False

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback=None):
        # Non-blocking: the stream stays open after this returns, without holding a server thread.
        service = request.service
        stream = _Stream(send_response_callback)
        with self._lock:
            self._streams.setdefault(service, set()).add(stream)
        if not context.add_callback(lambda: self._forget(service, stream)):
            self._forget(service, stream)  # the call ended already
            return
        self._push(service, stream)

    Watch.experimental_non_blocking = True

    def set(self, service: str, status: int) -> None:
        """Set ``service``'s status and tell its watchers (ignored once draining)."""
        with self._lock:
            if self._draining:
                return
            self._status[service] = status
            streams = list(self._streams.get(service, ()))
        for stream in streams:
            self._push(service, stream)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: balancers move their calls elsewhere."""
        with self._lock:
            services = list(self._status)
        for service in services:
            self.set(service, NOT_SERVING)
        with self._lock:
            self._draining = True

    def _push(self, service: str, stream: _Stream) -> None:
        # The status is read under the stream's lock, so the last write a stream
        # gets always carries the latest status, however writers interleave.
        with stream.lock:
            with self._lock:
                if stream not in self._streams.get(service, ()):
                    return
                status = self._status.get(service, SERVICE_UNKNOWN)
            stream.send(health_pb2.HealthCheckResponse(status=status))

    def _forget(self, service: str, stream: _Stream) -> None:
        # Runs on the server's polling thread: takes only the table lock, never a stream's lock.
        with self._lock:
            streams = self._streams.get(service)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[service]
