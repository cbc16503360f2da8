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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from batch import stream
from batch.channel import Pool
from batch.concurrency import AdaptiveLimit
from batch.files import read_input, write_output
from batch.manifest import Row, real_folder, resolved
from batch.results import ERROR, OK, Outcome, Reason, RowFailed, faces_json
from batch.retry import GaveUp, Retries
from batch.store import Uri
from worker.api import imageworker_v1_pb2 as v1

log = logging.getLogger("batch.runner")  # `batch run -v`: slow rows as they happen (retries: batch/retry.py)

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
    calls = Retries(settings, limit, row.id)
    while True:
        calls.attempts += 1
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
            return Outcome.failed(e, attempts=calls.attempts)
        except grpc.aio.AioRpcError as e:
            try:
                wait = calls.after(e, len(data))
            except RowFailed as failed:
                return Outcome.failed(failed, attempts=calls.attempts, gave_up=isinstance(failed, GaveUp))
            await asyncio.sleep(wait)
            continue
        latency_ms = (time.monotonic() - started) * 1000
        limit.answered(latency_ms / 1000)
        if latency_ms > 500 * settings.timeout:
            log.info("row %s: slow: its call took %.1f s, over half of --timeout %g s", row.id, latency_ms / 1000,
                     settings.timeout)
        break
    common = dict(attempts=calls.attempts, latency_ms=latency_ms, worker=worker, width=reply.width,
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
