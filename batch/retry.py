"""The retry policy: each failed call sorted as permanent, busy or transient by its gRPC code and the worker's
ErrorInfo reason (never its message); the backoff and the budgets that decide when a row gives up; the reason
and message a row that gives up keeps.

Not gRPC's own retries (service-config retryPolicy): measured, they skip requests over 256 KiB unless
grpc.per_rpc_retry_buffer_size is raised, clamp attempts at 5, and see codes only: busy and too large look alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from batch.concurrency import AdaptiveLimit
from batch.results import Reason, RowFailed
from worker.api import imageworker_v1_pb2 as v1

if TYPE_CHECKING:
    from batch.channel import Pool
    from batch.settings import Settings
    from batch.transport import Sent, Transport

log = logging.getLogger("batch.retry")  # `batch run -v`: retries and busy refusals as they happen

# CANCELLED here comes from the other side (our own cancellation raises asyncio.CancelledError instead): a
# worker shutting down cancels a call that reached it as it stopped; another worker can answer it.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.CANCELLED)


class GaveUp(RowFailed):
    """A row whose calls kept failing in ways a retry could help, until its retries or busy budget ran out."""


class Retries:
    """One row's calls: how many were made, and after each failed one whether, and when, to call again.
    ``call`` wraps any transport in this policy."""

    def __init__(self, settings: Settings, limit: AdaptiveLimit, row_id: str) -> None:
        self.settings = settings
        self.limit = limit
        self.row_id = row_id
        self.attempts = 0
        self._failures = 0  # retryable failures other than busy refusals: at most settings.retries are retried
        self._busy_refusals = 0
        self._first_refused = 0.0

    async def call(self, transport: Transport, pool: Pool) -> tuple[Sent, float]:
        """``transport.send`` until it is answered: the answer and its call's latency in seconds; RowFailed (or
        GaveUp) when the row fails on our side, for good, or after its retries."""
        while True:
            self.attempts += 1
            started = time.monotonic()
            try:
                sent = await transport.send(pool)
            except grpc.aio.AioRpcError as e:
                await asyncio.sleep(self.after(e, transport.message_bytes))
                continue
            latency = sent.latency if sent.latency is not None else time.monotonic() - started
            self.limit.answered(latency)
            if latency > self.settings.timeout / 2:
                log.info("row %s: slow: its call took %.1f s, over half of --timeout %g s", self.row_id, latency,
                         self.settings.timeout)
            return sent, latency

    def after(self, error: grpc.aio.AioRpcError, size: int) -> float:
        """Seconds to wait before calling again after ``error`` (the request carried ``size`` bytes); RowFailed
        when retrying cannot help, GaveUp when the retries or the busy budget are spent."""
        settings = self.settings
        if permanent(error, size):
            raise RowFailed(explain_permanent(error, size), permanent_reason(error))
        if refused := busy(error, size):
            self.limit.refused(error)  # one error for the rows of one batch call: one cut
            self._busy_refusals += 1
            wait = backoff(self._busy_refusals, settings, busy=True)
            # A full fleet (other drivers' calls, say) answers some of ours: the row waits its turn for as
            # long as that goes on. Only a fleet that answered none of the run's calls for the busy budget
            # since this row's first refusal fails it, as overloaded.
            now = time.monotonic()
            if self._busy_refusals == 1:
                self._first_refused = now
            given_up = now + wait - max(self._first_refused, self.limit.last_answer) > settings.busy_budget
        else:
            self._failures += 1
            wait = backoff(self._failures, settings)
            given_up = self._failures > settings.retries
        if given_up:
            log.warning("row %s: giving up after %d attempts: %s", self.row_id, self.attempts, describe(error))
            raise GaveUp(explain_exhausted(error, self.attempts, settings), _EXHAUSTED[error.code()])
        log.info("row %s: %s; %s in %.2f s", self.row_id, describe(error),
                 f"worker busy, busy refusal {self._busy_refusals}" if refused
                 else f"retry {self._failures} of {settings.retries}", wait)
        return wait


def backoff(retry: int, settings: Settings, busy: bool = False) -> float:
    """Seconds before retry number ``retry`` (1-based): exponential, capped, with jitter in [1/2, 1] of it.

    Defaults (1 s doubling to 20 s, 6 retries) wait 26-51 s in all: a worker restarting within
    that does not fail a row. After busy refusals: 50 ms doubling to 1 s.
    """
    base, cap = ((settings.busy_backoff_base, settings.busy_backoff_cap) if busy
                 else (settings.backoff_base, settings.backoff_cap))
    ceiling = min(cap, base * 2 ** (retry - 1))
    return ceiling * random.uniform(0.5, 1.0)


def busy(error: grpc.aio.AioRpcError, size: int) -> bool:
    """A worker at its in-flight limit (WORKER_BUSY, or gRPC's own cap): a slot frees within milliseconds,
    so these are retried soon, and more often, while the fleet answers (``Settings.busy_budget``)."""
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not permanent(error, size)


def describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"


WORKER_DOMAIN = "imageworker.v1"
WORKER_BUSY = v1.ErrorReason.Name(v1.WORKER_BUSY)
# gRPC's own RESOURCE_EXHAUSTED carries no reason and means either a request over the worker's transport limit
# (max-message + max(max-message, 16 MiB): always over this) or, under a burst, a call past gRPC's concurrency
# cap (worker/server.py): without reading its text, only the size of the request tells them apart.
TRANSPORT_LIMIT_FLOOR = 16 * 2**20


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The worker's ErrorInfo reason (a name of imageworker.v1.ErrorReason) from the status details, if any."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):  # details that do not parse, or contradict the status: no reason
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == WORKER_DOMAIN:
            return info.reason
    return None


def permanent(error: grpc.aio.AioRpcError, size: int) -> bool:
    """Whether retrying the ``size``-byte image cannot help: anything but the transient codes, and a
    RESOURCE_EXHAUSTED but a busy worker's (IMAGE_TOO_LARGE, or gRPC's own refusal of a message over its limit)."""
    if error.code() not in RETRYABLE:
        return True
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    reason = error_reason(error)
    if reason is None:
        return size > TRANSPORT_LIMIT_FLOOR
    return reason != WORKER_BUSY


def explain_permanent(error: grpc.aio.AioRpcError, size: int) -> str:
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(error) is None:
        # gRPC's own transport limit, before our servicer sees the image
        return (f"{describe(error)}: the image ({size:,} bytes, {size / 2**20:.1f} MiB) is over the worker's "
                "message limit; start the worker with a larger `worker serve --max-message-mb`")
    return describe(error)


def permanent_reason(error: grpc.aio.AioRpcError) -> str:
    """The ``reason`` of a row failed for good by ``error``: the worker's ErrorInfo reason; else gRPC's own
    refusal of a message over its limit; else the status code's name (a worker of another make, say)."""
    if (reason := error_reason(error)) is not None:
        return reason
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Reason.MESSAGE_TOO_LARGE
    return error.code().name


# The reason of a row whose retries ran out, by the last attempt's code (one of RETRYABLE).
_EXHAUSTED = {grpc.StatusCode.DEADLINE_EXCEEDED: Reason.TIMED_OUT, grpc.StatusCode.RESOURCE_EXHAUSTED:
              Reason.WORKER_OVERLOADED, grpc.StatusCode.UNAVAILABLE: Reason.RETRIES_EXHAUSTED,
              grpc.StatusCode.CANCELLED: Reason.RETRIES_EXHAUSTED}


def explain_exhausted(error: grpc.aio.AioRpcError, attempts: int, settings: Settings) -> str:
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"no answer within --timeout {settings.timeout:g} s in {attempts} attempts "
                f"(a larger --timeout helps with big images): {describe(error)}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return (f"worker overloaded after {attempts} attempts (lower --concurrency or start more workers): "
                f"{describe(error)}")
    return f"worker unavailable after {attempts} attempts: {describe(error)}"
