"""Several rows per call: RotateBatch and ClassifyBatch for small images and references.

A row of either kind costs the driver and the worker about as much in its call (~0.4 ms of gRPC per row per
side, docs/benchmarks.md) as in its image, so rows that go by reference, and rows whose bytes are at most
``SMALL``, are gathered into one call of up to ``rows`` rows and ``BATCH_BYTES`` bytes. A batch leaves as
soon as it is full, else ``WAIT`` after its first row: never long for a partial one.

A batch's rows are worked one after another by one worker process, so a batch of costly rows is a lump of
work that one process holds while another may have none (16 portraits to classify are ~1.3 s of one core:
60 of them in four batches kept one of two processes busy to the end). Full, a batch is therefore as many rows
as a worker process works through in about ``BATCH_SECONDS``: the median of the op's recent calls' time per
row, each call's time shared among its rows and the calls its process had in flight when it was sent (a
process works through them in turn). That is the whole ``rows`` for small rotations, about four 1080p photos
to rotate, and one row for a face search. Classify rows go one per call until their first answers say what
they cost: a row is at least a detector pass over the image, where a call costs the worker ~0.4 ms.

The batcher only sends: each row's transport awaits its own future, settled with its own answer or its own
error, as a ``grpc.aio.AioRpcError`` carrying the worker's ErrorInfo exactly as a single call would have
failed, so the retry policy (batch/retry.py) sorts, retries and counts each row alone. A row comes back
``Unbatched`` (send it alone) from a worker that predates the batch calls (UNIMPLEMENTED; no batches after
that), or when the batch or its answer was too large for the worker (BATCH_TOO_LARGE; later batches are
smaller).
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from typing import TYPE_CHECKING

import grpc

from batch.channel import Pool
from batch.concurrency import AdaptiveLimit
from batch.retry import error_reason
from worker.api import imageworker_v1_pb2 as v1

if TYPE_CHECKING:
    from batch.transport import Sent

# Rows by bytes up to this go in batches. Above it the image's own cost (its serialisation here, its decode and
# encode there) outweighs the call's, and a batch of them would only hold more memory at once.
SMALL = 64 * 1024
BATCH_BYTES = 2 * 2**20  # image bytes one batch carries at most: far below any worker's --max-message-mb
WAIT = 0.002  # seconds a partial batch waits for more rows: the rows that a round of answers frees come by then
# Seconds of a worker process's work a full batch is sized to: the call's cost (~0.4 ms a side) is under 1 % of
# it, and the work a batch holds back from the other processes at the end of a run is about that long.
BATCH_SECONDS = 0.1
RECENT = 8  # answered calls of an op whose time per row sizes its next batches
BATCH_TOO_LARGE = v1.ErrorReason.Name(v1.BATCH_TOO_LARGE)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_STATUS_DETAILS = "grpc-status-details-bin"


class Unbatched(Exception):
    """This row goes alone: the worker cannot take it in a batch."""


class Batcher:
    """Gathers the rows of one run into batch calls, one gate slot (``limit``) per call."""

    def __init__(self, pool: Pool, limit: AdaptiveLimit, timeout: float, rows: int) -> None:
        self.pool = pool
        self.limit = limit
        self.timeout = timeout
        self.rows = rows
        self.off = rows < 2  # no batches: one row per call (--batch-rows 1, or an older worker)
        self._pending: dict[str, list[tuple[v1.RotateRequest | v1.ClassifyRequest, asyncio.Future]]] = {
            "rotate": [], "classify": []}
        self._bytes = {"rotate": 0, "classify": 0}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._calls: set[asyncio.Task] = set()
        self._per_row: dict[str, collections.deque[float]] = {op: collections.deque(maxlen=RECENT)
                                                              for op in self._pending}

    def full(self, op: str) -> int:
        """Rows in a full batch of ``op`` now: ``rows``, fewer for rows that take long (module docstring)."""
        times = self._per_row[op]
        if not times:
            return 1 if op == "classify" else self.rows
        per_row = statistics.median(times)
        return max(1, min(self.rows, int(BATCH_SECONDS / per_row))) if per_row > 0 else self.rows

    async def send(self, op: str, request: v1.RotateRequest | v1.ClassifyRequest, size: int) -> Sent:
        """``request`` (carrying ``size`` image bytes) answered in some batch: its own answer, or its own error
        (``grpc.aio.AioRpcError``), or Unbatched."""
        future = asyncio.get_running_loop().create_future()
        pending = self._pending[op]
        pending.append((request, future))
        self._bytes[op] += size
        if len(pending) >= self.full(op) or self._bytes[op] >= BATCH_BYTES:
            # The other op's partial batch holds earlier rows: it leaves first, so that a row never waits for a
            # call slot behind rows read after it (one-row classify calls would take every slot first).
            for other in self._pending:
                if other != op:
                    self._flush(other)
            self._flush(op)
        elif len(pending) == 1:
            self._timers[op] = asyncio.get_running_loop().call_later(WAIT, self._flush, op)
        return await future

    def _flush(self, op: str) -> None:
        items, self._pending[op], self._bytes[op] = self._pending[op], [], 0
        if (timer := self._timers.pop(op, None)) is not None:
            timer.cancel()
        if items:
            task = asyncio.create_task(self._call(op, items))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, op: str, items: list) -> None:
        futures = [future for _, future in items]
        try:
            async with self.limit:
                if all(f.done() for f in futures):  # every row was cancelled while the batch waited
                    return
                call = self.pool.call()
                async with call as stub:
                    started = time.monotonic()
                    if op == "rotate":
                        answer = await stub.RotateBatch(v1.RotateBatchRequest(items=[r for r, _ in items]),
                                                        timeout=self.timeout)
                    else:
                        answer = await stub.ClassifyBatch(v1.ClassifyBatchRequest(items=[r for r, _ in items]),
                                                          timeout=self.timeout)
                    latency = time.monotonic() - started
                    self._per_row[op].append(latency / (len(items) * (call.ahead + 1)))
                    if len(answer.results) != len(items):
                        raise _error(grpc.StatusCode.INTERNAL, f"the worker answered {len(answer.results)} results "
                                     f"for a batch of {len(items)} rows")
                    for future, result in zip(futures, answer.results, strict=True):
                        if future.done():
                            continue
                        if result.HasField("error"):
                            error = _item_error(result.error)
                            future.set_exception(Unbatched() if error_reason(error) == BATCH_TOO_LARGE else error)
                        else:
                            future.set_result(_sent(result.response, self.pool.answered(stub, result.response.worker),
                                                    latency))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.off = True  # a worker from before the batch calls: single calls from now on
                _settle(futures, Unbatched)
            elif error_reason(e) == BATCH_TOO_LARGE:
                self.rows = max(1, len(items) // 2)  # the worker's --max-batch-items is below ours
                _settle(futures, Unbatched)
            else:
                _settle(futures, lambda error=e: error)
        except asyncio.CancelledError:  # the run is stopping: so are its rows
            for future in futures:
                future.cancel()
            raise
        except Exception as e:  # a bug: each row's task raises it, and the run with it
            _settle(futures, lambda error=e: error)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)


def _sent(reply, worker: str, latency: float) -> Sent:
    from batch.transport import Sent

    return Sent(reply, worker, latency)


def _settle(futures: list[asyncio.Future], error) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error())


def _error(code: grpc.StatusCode, message: str, trailing: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), message)


def _item_error(status) -> grpc.aio.AioRpcError:
    """One item's google.rpc.Status as the error a single call would have raised: its code, its message, and
    the status itself (ErrorInfo, RetryInfo) in the trailing metadata, where grpcio-status reads it."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message, ((_STATUS_DETAILS, status.SerializeToString()),))
