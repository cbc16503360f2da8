"""Fan-out: each row sent by its transport (batch/transport.py) under the retry policy (batch/retry.py), as
many at a time as the run's limit allows, and its ``Outcome`` built from the answer.

The driver never decodes images. Every row ends as an ``Outcome``; the caller turns it into a results row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from batch.batching import Batcher
from batch.channel import Pool
from batch.concurrency import AdaptiveLimit
from batch.manifest import Row
from batch.results import ERROR, OK, Outcome, Reason, RowFailed, faces_json
from batch.retry import GaveUp, Retries
from batch.settings import Settings
from batch.transport import Transport, batched, choose

MAX_BATCHED_ROWS = 2048


async def process(row: Row, pool: Pool, settings: Settings, limit: AdaptiveLimit,
                  transport: Transport | None = None) -> Outcome:
    """Run one valid row to its outcome: its transport (``choose``'s unless given), called under the retry
    policy; never raises for a row-level problem."""
    transport = transport or choose(row, settings)
    calls = Retries(settings, limit, row.id)
    try:
        await transport.prepare()
        sent, latency = await calls.call(transport, pool)
    except RowFailed as e:
        return Outcome.failed(e, attempts=calls.attempts, gave_up=isinstance(e, GaveUp))
    reply = sent.reply
    common = dict(attempts=calls.attempts, latency_ms=latency * 1000, worker=sent.worker, width=reply.width,
                  height=reply.height)
    if row.op == "classify":
        return Outcome(OK, label=reply.label, confidence=reply.confidence, faces=faces_json(reply.faces),
                       model=f"{reply.model} {reply.model_version}", turned=reply.orientation,
                       by_reference=transport.by_reference, **common)
    # A default output mirrors its input's name, misnamed or not (PNG bytes in x.jpg stay PNG in x.jpg, and the
    # format column says so); an output the manifest names, or --format, asked the worker for its format.
    if row.format and reply.format != row.format:
        return Outcome(ERROR, error=f"asked for {row.format} for {row.output_path}, the worker wrote {reply.format} "
                       "(an older worker that cannot convert?)", reason=Reason.FORMAT_MISMATCH, **common)
    try:
        written, digest = await transport.deliver(reply)
    except RowFailed as e:
        return Outcome.failed(e, **common)
    turned = reply.degrees if row.auto else row.degrees
    lossless = reply.method in ("lossless", "copy") if reply.format == "JPEG" else None
    return Outcome(OK, output=str(row.output_path), format=reply.format, turned=turned, decided_by=reply.decided_by,
                   lossless=lossless, note=reply.note, by_reference=transport.by_reference, output_bytes=written,
                   output_sha256=digest, **common)


async def fan_out(rows: Iterable[Row], pool: Pool, settings: Settings, finished: Callable[[Row, Outcome], None],
                  limit: AdaptiveLimit) -> None:
    """Process ``rows`` (consumed lazily), as many at once as ``limit`` allows; ``finished`` sees each outcome.

    A bounded queue keeps at most a few rows ahead of the calls, so memory does
    not depend on the manifest's length. Cancelling this coroutine cancels the
    calls in flight; their rows are simply not reported.

    With ``settings.batch_rows`` above 1, rows by reference and small ones go several per call
    (batch/batching.py): each such call holds one slot of ``limit``, so as many rows as batches can fill are
    taken at once.
    """
    batcher = Batcher(pool, limit, settings.timeout, settings.batch_rows) if settings.batch_rows > 1 else None
    # Rows in flight: a full batch per slot, within a bound (each holds up to batching.SMALL bytes, or a path).
    tasks_count = max(limit.cap, min(limit.cap * settings.batch_rows, MAX_BATCHED_ROWS))
    queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=limit.cap)
    failed: list[BaseException] = []

    async def work() -> None:
        while (row := await queue.get()) is not None:
            transport = choose(row, settings, batcher)
            if batched(transport):  # its call takes the slot, for all the rows of its batch
                finished(row, await process(row, pool, settings, limit, transport))
                continue
            async with limit:
                finished(row, await process(row, pool, settings, limit, transport))

    def ended(task: asyncio.Task) -> None:
        # A task only ends early by a bug (or a results file that cannot be written): raise it here.
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())

    tasks = [asyncio.create_task(work()) for _ in range(tasks_count)]
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
        if batcher is not None:
            await batcher.close()
