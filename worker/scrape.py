"""The HTTP server of `worker serve --metrics-port` (worker/metrics.py serves prometheus-client's app on it).

prometheus-client's WSGI app on a server of our own: a thread per scrape as
its own server has, but at most ``SCRAPE_CONNECTIONS`` at once (more are
closed on arrival) and each closed after ``SCRAPE_READ_TIMEOUT`` seconds
without a byte, so idle connections cannot pile up threads in the parent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger("worker.metrics")

# A scraper sends its request at once and reads the answer within its own timeout (Prometheus: 10 s).
SCRAPE_READ_TIMEOUT = 5.0  # seconds a connection may stay silent before it is closed
SCRAPE_CONNECTIONS = 32  # connections served at once; each holds a thread
SCRAPE_TRIES = 3  # reads of the processes' files per scrape (see settled)


class _Handler(WSGIRequestHandler):
    timeout = SCRAPE_READ_TIMEOUT  # set on the connection's socket (StreamRequestHandler.setup)

    def log_message(self, format, *args) -> None:
        """A line per scrape would drown the worker's log."""


class ScrapeServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most SCRAPE_CONNECTIONS of them."""

    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        family, *_, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self._slots = threading.BoundedSemaphore(SCRAPE_CONNECTIONS)
        super().__init__(address[:2], _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed now rather than another thread held
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A connection that stayed silent past the timeout, or went away: the scraper's problem, not a traceback.
        log.debug("metrics connection from %s ended early", client_address, exc_info=True)


def settled(app):
    """``app`` (prometheus_client's WSGI app over the processes' files), read again when a read races a
    process's start or end: a file listed and then removed as its process exits (FileNotFoundError), or
    read while it is being created or grown (prometheus_client's RuntimeError "read beyond file size",
    struct.error). These came back as HTTP 500 to a scraper polling during a test; a retry a moment later
    reads settled files. The app raises before it starts the response, so reading again is safe."""
    def wsgi(environ, start_response):
        for _ in range(SCRAPE_TRIES - 1):
            with contextlib.suppress(OSError, RuntimeError, struct.error):
                return app(environ, start_response)
            time.sleep(0.01)
        try:
            return app(environ, start_response)
        except (OSError, RuntimeError, struct.error) as e:
            log.warning("metrics scrape failed %d times, the last: %r", SCRAPE_TRIES, e)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"metrics are being rewritten by a worker process; scrape again\n"]
    return wsgi
