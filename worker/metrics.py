"""Prometheus metrics of `worker serve --metrics-port N`: one endpoint per worker, summed over its processes.

Why one endpoint and not one per process: the kernel spreads connections over
the server processes (SO_REUSEPORT), so a scrape cannot pick one of them on a
shared port, and a port per process would make Prometheus discover N targets
per machine, know --processes, and lose a restarted process's counts. So this
is prometheus-client's multiprocess mode: every process writes its values to
memory-mapped files in a folder (PROMETHEUS_MULTIPROC_DIR) that ``exported``
makes before the processes are forked and removes at exit, and the process
that forked them, which does no image work, serves ``/metrics`` summing them.
Counters and histograms of a process that died stay in the sum (a restart
loses no count); its gauges (calls in flight, model state) leave the sum when
the parent reaps it (``process_ended``).

The endpoint's HTTP server is worker/scrape.py, imported only when there is
an endpoint to serve (its http.server imports are ~13 ms of every start).

prometheus-client picks where values live when it is first imported, from the
environment, so it is imported here only once ``exported`` has set the folder.
This module imports no grpc: the servicers hand it status names and reasons.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

from worker.errors import Reason

log = logging.getLogger("worker.metrics")

FOLDER_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a 64x64 rotation (~0.3 ms) to a 24 MP JPEG re-encoded (seconds) and a classify waiting for its model.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ModelState(enum.IntEnum):
    """``imageworker_model_state``: the face model of one process."""

    NOT_LOADED = 0  # no classify call has needed it yet
    LOADING = 1
    READY = 2
    FAILED = 3  # the process stops (and with it the worker): seen until the parent reaps it


class Metrics:
    """Records nothing: a worker without --metrics-port (and servicers built without a worker)."""

    def started(self) -> float:
        """An image call arrived; returns what ``ended`` needs to time it."""
        return 0.0

    def ended(self, method: str, code: str, reason: str, started: float, received: int, sent: int) -> None:
        """The call ``started`` answered ``code`` (a gRPC status name) with ``reason`` ("" for OK), having
        received ``received`` image bytes and sent an answer of ``sent`` bytes."""

    def model(self, state: ModelState) -> None:
        """This process's face model is now in ``state``."""


class ProcessMetrics(Metrics):
    """The metrics of one server process, written where ``exported``'s endpoint sums them."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: in multiprocess mode the files are what is exported, not a registry of this process.
        self._calls = Counter("imageworker_calls", "Image calls answered, by method, status code and ErrorInfo "
                              "reason", ["method", "code", "reason"], registry=None)
        self._latency = Histogram("imageworker_call_duration_seconds", "Seconds from an image call's arrival "
                                  "to its answer", ["method", "code"], buckets=LATENCY_BUCKETS, registry=None)
        self._received = Counter("imageworker_received_bytes", "Image bytes received: the request's image, or "
                                 "the file it names (reference mode)", ["method"], registry=None)
        self._sent = Counter("imageworker_sent_bytes", "Bytes of the answers sent", ["method"], registry=None)
        self._busy = Counter("imageworker_busy_refusals", "Image calls refused as busy (WORKER_BUSY)",
                             ["method"], registry=None)
        self._in_flight = Gauge("imageworker_images_in_flight", "Image calls between arrival and answer",
                                multiprocess_mode="livesum", registry=None)
        self._model = Gauge("imageworker_model_state", "Face model of each process: 0 not loaded, 1 loading, "
                            "2 ready, 3 failed", multiprocess_mode="liveall", registry=None)
        self._model.set(ModelState.NOT_LOADED)
        # Each label set's series, looked up once: labels() takes a lock and builds a key on every call.
        self._series: dict[tuple[str, str, str], tuple] = {}

    def started(self) -> float:
        self._in_flight.inc()
        return time.perf_counter()

    def ended(self, method: str, code: str, reason: str, started: float, received: int, sent: int) -> None:
        seconds = time.perf_counter() - started
        series = self._series.get((method, code, reason))
        if series is None:  # a race here only looks the same series up twice
            series = self._series[method, code, reason] = self._series_of(method, code, reason)
        calls, latency, received_bytes, sent_bytes, busy = series
        calls.inc()
        latency.observe(seconds)
        received_bytes.inc(received)
        if sent:
            sent_bytes.inc(sent)
        if busy is not None:
            busy.inc()
        self._in_flight.dec()

    def _series_of(self, method: str, code: str, reason: str) -> tuple:
        return (self._calls.labels(method, code, reason), self._latency.labels(method, code),
                self._received.labels(method), self._sent.labels(method),
                self._busy.labels(method) if reason == Reason.WORKER_BUSY else None)

    def model(self, state: ModelState) -> None:
        self._model.set(state)


# The endpoint's listening socket in this process, closed in forked children: they must not hold the port.
_endpoint: socket.socket | None = None
_folder: str | None = None  # exported's, while it serves


def _forget_endpoint() -> None:
    global _endpoint
    if _endpoint is not None:
        _endpoint.close()
        _endpoint = None


os.register_at_fork(after_in_child=_forget_endpoint)


@contextlib.contextmanager
def exported(host: str, port: int | None) -> Iterator[None]:
    """Serve http://host:port/metrics, the sum over every process forked inside the block (nothing if ``port``
    is None); OSError if the port cannot be bound.

    The endpoint's thread runs while server processes are forked (and restarted): it holds no lock they use,
    and they close its socket (``_forget_endpoint``).
    """
    global _endpoint, _folder
    if port is None:
        yield
        return
    folder = _folder = tempfile.mkdtemp(prefix="imageworker-metrics-")
    os.environ[FOLDER_ENV] = folder
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.multiprocess import MultiProcessCollector

        from worker.scrape import ScrapeServer, settled

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        try:
            server = ScrapeServer(host, port)
        except OSError as e:
            raise OSError(f"cannot bind --metrics-port {host}:{port}: {e.strerror}") from None
        server.set_app(settled(make_wsgi_app(registry)))
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        _endpoint = server.socket
        log.info("metrics at http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
            _endpoint = None
    finally:
        _folder = None
        del os.environ[FOLDER_ENV]
        shutil.rmtree(folder, ignore_errors=True)


def process_ended(pid: int) -> None:
    """Drop the gauges of server process ``pid``, which has exited, from the sum (its counts stay)."""
    if _folder is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, _folder)
