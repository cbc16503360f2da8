"""How many image calls a worker process holds, how many work at once, and how many answer bytes wait.

gRPC's own cap (``maximum_concurrent_rpcs``) counts every call, health checks
and reflection included, and calls past its thread pool wait in a queue no
servicer sees. So the server gets a thread for every call it admits, and this
gate does the rest: past ``limit`` image calls it refuses at once with
``Busy`` (RESOURCE_EXHAUSTED, reason WORKER_BUSY: clients retry it soon), and
at most ``workers`` of the admitted calls decode and encode at a time, the
others waiting their turn with only their request bytes. The work runs on the caller's thread: handing
it to a pool of ``workers`` threads cost 0.3 ms per call (64x64 images:
3,127 -> 2,633 calls/s, docs/benchmarks.md).

gRPC forgets a call once its handler returns, but the answer stays in the
process until the client's HTTP/2 window lets it out: a client that never
reads would grow the process without bound. So answers are counted from the
handler's return until the call ends (``Call.add_callback``), per process and
per connection (``Call.peer``), and new calls are refused as busy while
either count is at its bound.

Image bytes count too: each call holds its image's bytes from admission
until it ends, and past ``bytes_limit`` in all new calls are refused as busy,
so a few large images at once cannot exhaust the process (each costs a
multiple of its size to decode and encode). A unary call holds its request's
bytes; a stream holds what it has actually received (``Hold.add``), not the
size it declares: streams that declare much and send nothing hold nothing
(its declared size is only checked on admission, so a stream that could not
fit is refused before it sends). A stream whose next bytes would pass the
bound is refused as busy then. A call alone is always admitted: an image up
to --max-image-mb is never refused for good.

A call whose deadline has passed, or whose client has gone, is never started
and stops waiting for its turn (``Expired``, ``Cancelled``); ``check`` is the
same test for the work itself to run at the points where it can stop.

Every wait for a call is sliced into polls of at most ``POLL`` seconds
(``bounded``): a client without a deadline (gRPC's default) has a time
remaining of None or of some 1e10 s and more, which ``threading`` waits refuse
(OverflowError), and a call must notice its client leave anyway.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from worker.errors import Busy, Cancelled, Expired

T = TypeVar("T")

# How often a waiting call looks at its deadline and its client.
POLL = 0.1


class Call(Protocol):
    """What the gate needs of a call; grpc.ServicerContext has it all (this module imports no grpc)."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...

    def peer(self) -> str: ...

    def add_callback(self, callback: Callable[[], None]) -> bool: ...


class Hold:
    """The image bytes one admitted call holds until it ends."""

    def __init__(self, gate: Admission) -> None:
        self._gate = gate
        self.bytes = 0

    def add(self, size: int) -> None:
        """``size`` more bytes received; Busy (and not held) when they would pass the process's bound while
        other calls hold images too."""
        self._gate._add(self, size)


def bounded(seconds: float | None, limit: float) -> float:
    """A wait of at most ``limit`` seconds for a time remaining of ``seconds``, never negative.

    None (no deadline), inf, nan and anything past ``limit`` all read as ``limit``.
    """
    if seconds is None or not seconds < limit:
        return limit
    return max(0.0, seconds)


def wait(event: threading.Event, call: Call) -> None:
    """Wait for ``event`` as long as ``call`` lasts, however far off its deadline (or with none): Expired once
    the deadline passes first, Cancelled once its client has gone."""
    while not event.wait(bounded(call.time_remaining(), POLL)):
        check(call)


def check(call: Call) -> None:
    """Raise Expired once ``call``'s deadline has passed, Cancelled once its client has gone."""
    remaining = call.time_remaining()
    if remaining is not None and remaining <= 0:
        raise Expired("the call's deadline (or the worker's --max-call-seconds) passed before its work was done; "
                      "the worker stopped it")
    if not call.is_active():
        raise Cancelled("the client cancelled the call or went away; the worker stopped its work")


class Admission:
    def __init__(self, limit: int, workers: int, unsent_limit: int | None = None,
                 unsent_per_connection: int | None = None, bytes_limit: int | None = None) -> None:
        if limit < 1 or workers < 1:
            raise ValueError("the in-flight limit and the number of workers must be at least 1")
        self.limit = limit
        self.unsent_limit = unsent_limit
        self.unsent_per_connection = unsent_per_connection
        self.bytes_limit = bytes_limit
        self._lock = threading.Lock()
        self._admitted = 0
        self._working = threading.BoundedSemaphore(workers)
        self._unsent = 0
        self._unsent_by_peer: dict[str, int] = {}
        self._bytes = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def unsent(self) -> int:
        """Bytes of answers produced and not yet sent, in this process."""
        return self._unsent

    @property
    def image_bytes(self) -> int:
        """Bytes of images held by the calls admitted in this process."""
        return self._bytes

    def run(self, work: Callable[..., T], *args, call: Call | None = None, size: int = 0) -> T:
        """``work(*args)`` once admitted (``held``) and given one of the ``workers`` turns (``turn``)."""
        with self.held(call, size):
            return self.turn(work, *args, call=call)

    @contextlib.contextmanager
    def held(self, call: Call | None = None, size: int = 0, *, streamed: bool = False) -> Iterator[Hold]:
        """Admit ``call`` with its ``size``-byte image for the block (a stream receives and answers in it).

        Busy when ``limit`` calls are held, when the images held would pass
        ``bytes_limit`` (unless none is), or when ``call``'s answers waiting (in
        this process or on its connection) are at their bounds; Expired or
        Cancelled when ``call`` is over already. ``streamed``: ``size`` is only
        declared, checked now and held as its bytes arrive (``Hold.add``).
        """
        if call is not None:
            check(call)  # never start work nobody waits for
        hold = Hold(self)
        with self._lock:
            self._refuse_if_full(call, size)
            self._admitted += 1
            if not streamed:
                self._bytes += size
                hold.bytes = size
        try:
            yield hold
        finally:
            with self._lock:
                self._admitted -= 1
                self._bytes -= hold.bytes

    def _add(self, hold: Hold, size: int) -> None:
        with self._lock:
            if self.bytes_limit is not None and self._bytes > hold.bytes and self._bytes + size > self.bytes_limit:
                raise Busy(
                    f"worker busy: {self._bytes / 2**20:.1f} MiB of images in flight, and this stream's next "
                    f"{size / 2**20:.1f} MiB would pass the bound of {self.bytes_limit / 2**20:.0f} MiB per "
                    "process (worker serve --max-inflight-mb); retry after a backoff"
                )
            self._bytes += size
            hold.bytes += size

    def turn(self, work: Callable[..., T], *args, call: Call | None = None) -> T:
        """``work(*args)`` in one of the ``workers`` turns, for an admitted call; Expired or Cancelled when
        ``call`` ends while it waits."""
        self._take_turn(call)
        try:
            if call is not None:
                check(call)
            return work(*args)
        finally:
            self._working.release()

    def hold_answer(self, call: Call, size: int) -> None:
        """Count ``size`` bytes of ``call``'s answer as waiting until the call ends (sent or cancelled)."""
        if not size:  # nothing to count; and a client's entry must hold only what its calls will take back
            return
        peer = call.peer()
        with self._lock:
            self._unsent += size
            self._unsent_by_peer[peer] = self._unsent_by_peer.get(peer, 0) + size

        def sent() -> None:  # runs on gRPC's thread when the call ends: the table lock only
            with self._lock:
                self._unsent -= size
                left = self._unsent_by_peer[peer] - size
                if left:
                    self._unsent_by_peer[peer] = left
                else:
                    del self._unsent_by_peer[peer]

        if not call.add_callback(sent):
            sent()  # the call has ended already

    def _refuse_if_full(self, call: Call | None, size: int) -> None:
        if self._admitted >= self.limit:
            raise Busy(
                f"worker busy: {self.limit} image calls in flight already (worker serve "
                "--max-concurrent-rpcs); retry after a backoff"
            )
        if self.bytes_limit is not None and self._bytes and self._bytes + size > self.bytes_limit:
            raise Busy(
                f"worker busy: {self._bytes / 2**20:.1f} MiB of images in flight, with this one's "
                f"{size / 2**20:.1f} MiB over the bound of {self.bytes_limit / 2**20:.0f} MiB per process "
                "(worker serve --max-inflight-mb); retry after a backoff"
            )
        if self.unsent_limit is not None and self._unsent >= self.unsent_limit:
            raise Busy(
                f"worker busy: {self._unsent / 2**20:.1f} MiB of answers not yet read by their clients "
                f"(bound {self.unsent_limit / 2**20:.0f} MiB per process); retry after a backoff"
            )
        if call is not None and self.unsent_per_connection is not None:
            waiting = self._unsent_by_peer.get(call.peer(), 0)
            if waiting >= self.unsent_per_connection:
                raise Busy(
                    f"worker busy: {waiting / 2**20:.1f} MiB of answers on this connection not yet read "
                    f"(bound {self.unsent_per_connection / 2**20:.0f} MiB per connection); read them first"
                )

    def _take_turn(self, call: Call | None) -> None:
        if call is None:
            self._working.acquire()
            return
        while True:
            if self._working.acquire(timeout=bounded(call.time_remaining(), POLL)):
                return
            check(call)
