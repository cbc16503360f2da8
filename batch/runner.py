"""Fan-out: each row read, sent, retried and written, as many at a time as the run's limit allows.

The driver never decodes images: it reads the file's bytes, sends them and
writes the bytes that come back (small files in the event loop, big ones and
objects in a store in a thread so a long read or write does not stall the calls in flight). Every
row ends as an ``Outcome``; the caller turns it into a results row.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from batch import stream
from batch.channel import Pool
from batch.concurrency import AdaptiveLimit
from batch.files import read_input, write_output
from batch.manifest import Row, real_folder, resolved
from batch.results import ERROR, OK, Outcome, Reason, RowFailed, faces_json
from batch.store import Uri
from worker.api import imageworker_v1_pb2 as v1

log = logging.getLogger("batch.runner")  # `batch run -v`: retries, busy refusals, slow rows as they happen

# Not gRPC's own retries (service-config retryPolicy): measured, they skip requests over 256 KiB unless
# grpc.per_rpc_retry_buffer_size is raised, clamp attempts at 5, and see codes only: busy and too large look alike.
# CANCELLED here comes from the other side (our own cancellation raises asyncio.CancelledError instead): a
# worker shutting down cancels a call that reached it as it stopped; another worker can answer it.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.CANCELLED)
# Files up to this size are read and written in the event loop: on a local disk (page cache) that takes well
# under a millisecond, less than the two thread hops it saves: 0.2 ms of driver CPU per 3 KiB image, 0.7 ms
# per 0.9 MB photo (docs/benchmarks.md). Bigger ones (24 MP images) go to a thread so a long read or write
# does not stall the calls in flight.
INLINE_MAX = 2 * 1024 * 1024

@dataclass(frozen=True)
class Settings:
    timeout: float  # seconds per call
    retries: int  # retries after the first attempt
    backoff_base: float = 1.0  # first retry waits up to this; doubles each time
    backoff_cap: float = 20.0
    busy_backoff_base: float = 0.05  # the same, after a worker refused a call as busy
    # Waits after busy refusals stay short: a slot frees within a call's time, and a row that waited long would
    # lose its turn to rows refused for the first time (drivers sharing a fleet, each refused in turn).
    busy_backoff_cap: float = 1.0
    out_root: str = "/"  # --out with links resolved: outputs are written only inside it
    # Reference mode: resolved folders under which the worker reads inputs and writes outputs itself.
    read_roots: tuple[str, ...] = ()
    write_roots: tuple[str, ...] = ()
    quality: int = 0  # --quality for lossy targets; 0: the worker's rule (proto RotateRequest.quality)

    @property
    def busy_budget(self) -> float:
        """Seconds a row may be refused as busy while no call of the run is answered: as long as --retries
        ordinary retries at most, and never less than a call may take (--timeout): other drivers' calls may hold
        every slot of the fleet that long, and a driver refused while they do has no answer of its own."""
        return max(self.timeout, sum(min(self.backoff_cap, self.backoff_base * 2 ** k) for k in range(self.retries)))


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


def by_reference(row: Row, settings: Settings) -> bool:
    """Whether the worker reads this row's input (and writes its output) itself: both under the roots it
    serves (reference mode); else the bytes travel in the messages."""
    if not settings.read_roots:
        return False
    inside = _served(row.input_path, settings.read_roots)
    if row.op == "rotate":
        inside = inside and _served(row.output_path, settings.write_roots, folder=True)
    return inside


def _served(where: Path | Uri, roots: tuple[str, ...], folder: bool = False) -> bool:
    """Whether a worker with ``roots`` (resolved folders, URI prefixes ending in /) serves ``where`` (for
    ``folder``, an output, whose folder matters: it is renamed over its path)."""
    if isinstance(where, Uri):
        # "/" is --references' "whatever the worker serves": the worker's own roots decide, for URIs too.
        return any(root == "/" or where.startswith(root) for root in roots)
    real = real_folder(str(where.parent)) if folder else resolved(where)
    return any(root[:1] == "/" and os.path.commonpath([real, root]) == root for root in roots)


def _reference(where: Path | Uri) -> v1.ImageRef:
    return v1.ImageRef(uri=where) if isinstance(where, Uri) else v1.ImageRef(path=str(where))


async def process(row: Row, pool: Pool, settings: Settings, limit: AdaptiveLimit) -> Outcome:
    """Run one valid row to its outcome; never raises for a row-level problem."""
    referenced = by_reference(row, settings)
    # A large local file goes by stream, file to file, never whole in memory; the worker's --max-image-mb decides.
    # A row on an object store never streams: its input is no local file to stat (os.stat would take the URI as
    # a relative path), and its output is one PUT.
    on_store = isinstance(row.input_path, Uri) or isinstance(row.output_path, Uri)
    size = None if referenced or on_store else stream.streamed_size(row.input_path)
    data = b""
    if not referenced and size is None:
        try:
            data = read_input(row.input_path, INLINE_MAX)
            if data is None:
                data = await asyncio.to_thread(read_input, row.input_path)
        except RowFailed as e:
            return Outcome.failed(e)
    source = _reference(row.input_path) if referenced else None
    attempts = 0
    failures = 0  # retryable failures other than busy refusals: at most settings.retries are retried
    busy_refusals, first_refused = 0, 0.0
    while True:
        attempts += 1
        started = time.monotonic()
        try:
            async with pool.call() as stub:
                if row.op == "rotate":
                    request = v1.RotateRequest(image=data, degrees=row.degrees or 0, auto=row.auto,
                                               format=row.format, quality=settings.quality, source=source,
                                               destination=_reference(row.output_path) if referenced
                                               else None)
                    if size is None:
                        reply = await stub.Rotate(request, timeout=settings.timeout)
                    else:
                        reply = await stream.rotate(stub, request, row.input_path, size, row.output_path,
                                                    settings.out_root, settings.timeout)
                else:
                    request = v1.ClassifyRequest(image=data, source=source)
                    reply = await (stub.Classify(request, timeout=settings.timeout) if size is None else
                                   stream.classify(stub, request, row.input_path, size, settings.timeout))
                worker = pool.answered(stub, reply.worker)
        except RowFailed as e:
            return Outcome.failed(e, attempts=attempts)
        except grpc.aio.AioRpcError as e:
            if permanent(e, len(data)):
                return Outcome(ERROR, error=explain_permanent(e, len(data)), reason=permanent_reason(e),
                               attempts=attempts)
            if refused := busy(e, len(data)):
                limit.refused()
                busy_refusals += 1
                wait = backoff(busy_refusals, settings, busy=True)
                # A full fleet (other drivers' calls, say) answers some of ours: the row waits its turn for as
                # long as that goes on. Only a fleet that answered none of the run's calls for the busy budget
                # since this row's first refusal fails it, as overloaded.
                now = time.monotonic()
                if busy_refusals == 1:
                    first_refused = now
                given_up = now + wait - max(first_refused, limit.last_answer) > settings.busy_budget
            else:
                failures += 1
                wait = backoff(failures, settings)
                given_up = failures > settings.retries
            if given_up:
                log.warning("row %s: giving up after %d attempts: %s", row.id, attempts, describe(e))
                return Outcome(ERROR, error=explain_exhausted(e, attempts, settings), reason=_EXHAUSTED[e.code()],
                               attempts=attempts,
                               gave_up=True)
            log.info("row %s: %s; %s in %.2f s", row.id, describe(e),
                     f"worker busy, busy refusal {busy_refusals}" if refused
                     else f"retry {failures} of {settings.retries}", wait)
            await asyncio.sleep(wait)
            continue
        latency_ms = (time.monotonic() - started) * 1000
        limit.answered(latency_ms / 1000)
        if latency_ms > 500 * settings.timeout:
            log.info("row %s: slow: its call took %.1f s, over half of --timeout %g s", row.id, latency_ms / 1000,
                     settings.timeout)
        break
    common = dict(attempts=attempts, latency_ms=latency_ms, worker=worker, width=reply.width,
                  height=reply.height)
    if row.op == "classify":
        return Outcome(OK, label=reply.label, confidence=reply.confidence, faces=faces_json(reply.faces),
                       model=f"{reply.model} {reply.model_version}", turned=reply.orientation,
                       by_reference=referenced, **common)
    # A default output mirrors its input's name, misnamed or not (PNG bytes in x.jpg stay PNG in x.jpg, and the
    # format column says so); an output the manifest names, or --format, asked the worker for its format.
    if row.format and reply.format != row.format:
        return Outcome(ERROR, error=f"asked for {row.format} for {row.output_path}, the worker wrote {reply.format} "
                       "(an older worker that cannot convert?)", reason=Reason.FORMAT_MISMATCH, **common)
    if not referenced and size is None:  # else the worker wrote it, durably, before it answered, or it streamed
        try:
            if len(reply.image) <= INLINE_MAX and not isinstance(row.output_path, Uri):
                write_output(row.output_path, reply.image, settings.out_root)
            else:
                await asyncio.to_thread(write_output, row.output_path, reply.image, settings.out_root)
        except RowFailed as e:
            return Outcome.failed(e, **common)
    turned = reply.degrees if row.auto else row.degrees % 360
    lossless = reply.method in ("lossless", "copy") if reply.format == "JPEG" else None
    written, digest = _written(reply, None if referenced or size is not None else reply.image)
    return Outcome(OK, output=str(row.output_path), format=reply.format, turned=turned, decided_by=reply.decided_by,
                   lossless=lossless, note=reply.note, by_reference=referenced, output_bytes=written,
                   output_sha256=digest, **common)


def _written(reply: v1.RotateResponse, image: bytes | None) -> tuple[int | None, str]:
    """Size and SHA-256 of the output: the worker's account of what it wrote or sent (it hashes in parallel
    processes, and a file it wrote is not ours to read); the answer's ``image`` (the bytes we wrote) hashed
    here when the worker gives no account of them (an older worker)."""
    if image is not None and (reply.output_bytes != len(image) or not reply.output_sha256):
        return len(image), hashlib.sha256(image).hexdigest()
    if reply.output_sha256:
        return reply.output_bytes, reply.output_sha256
    return None, ""


async def fan_out(rows: Iterable[Row], pool: Pool, settings: Settings, finished: Callable[[Row, Outcome], None],
                  limit: AdaptiveLimit) -> None:
    """Process ``rows`` (consumed lazily), as many at once as ``limit`` allows; ``finished`` sees each outcome.

    A bounded queue keeps at most a few rows ahead of the calls, so memory does
    not depend on the manifest's length. Cancelling this coroutine cancels the
    calls in flight; their rows are simply not reported.
    """
    queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=limit.cap)
    failed: list[BaseException] = []

    async def work() -> None:
        while (row := await queue.get()) is not None:
            async with limit:
                finished(row, await process(row, pool, settings, limit))

    def ended(task: asyncio.Task) -> None:
        # A task only ends early by a bug (or a results file that cannot be written): raise it here.
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())

    tasks = [asyncio.create_task(work()) for _ in range(limit.cap)]
    for t in tasks:
        t.add_done_callback(ended)
    try:
        for row in rows:
            await queue.put(row)
            if failed:
                raise failed[0]
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
