"""The ways of sending a row to a worker, one class each behind one interface, and ``choose``, which picks one.

    Transport          prepare() once, send(pool) per attempt, deliver(reply) once answered
    ├── BytesTransport      the input's bytes in one unary call; the answer's bytes written here
    ├── StreamTransport     a large local file in chunks, file to worker to file (batch/stream.py)
    └── ReferenceTransport  the worker reads the input and writes the output itself (reference mode)

A transport is made per row and holds what its calls need (the bytes read once, say). It makes one attempt per
``send`` and raises what went wrong: ``grpc.aio.AioRpcError`` for the retry policy (batch/retry.py, which
wraps any transport) to sort, or ``RowFailed`` for a failure of the row on our side. It never retries, and
it never builds the row's outcome (batch/runner.py does, from the answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batch import stream
from batch.batching import SMALL, Batcher, Unbatched
from batch.channel import Pool
from batch.durable import within
from batch.files import read_input, write_output
from batch.manifest import Row, real_folder, resolved
from batch.store import Uri
from worker.api import imageworker_v1_pb2 as v1

if TYPE_CHECKING:
    from batch.settings import Settings

# Files up to this size are read and written in the event loop: on a local disk (page cache) that takes well
# under a millisecond, less than the two thread hops it saves: 0.2 ms of driver CPU per 3 KiB image, 0.7 ms
# per 0.9 MB photo (docs/benchmarks.md). Bigger ones (24 MP images) go to a thread so a long read or write
# does not stall the calls in flight.
INLINE_MAX = 2 * 1024 * 1024

Reply = v1.RotateResponse | v1.ClassifyResponse


@dataclass(frozen=True)
class Sent:
    """A call's answer and the results' name of the worker that gave it (``Pool.answered``)."""

    reply: Reply
    worker: str
    # The call's own seconds, when they are not the row's wait for its answer (a batch: its gate slot, its rows).
    latency: float | None = None


class Transport:
    """One way of sending ``row``: made per row by ``choose``; subclasses implement ``send``."""

    by_reference = False  # the worker reads the input (and writes the output, durably) itself

    def __init__(self, row: Row, settings: Settings) -> None:
        self.row = row
        self.settings = settings

    @property
    def message_bytes(self) -> int:
        """The image bytes one request message carries: the retry policy tells gRPC's refusal of a message over
        its limit from a busy refusal by it (batch/retry.py)."""
        return 0

    async def prepare(self) -> None:
        """Before the first attempt: what every attempt carries (RowFailed when it cannot be had)."""

    async def send(self, pool: Pool) -> Sent:
        """One attempt: a channel of ``pool``, one call with the run's deadline (--timeout)."""
        raise NotImplementedError

    async def deliver(self, reply: v1.RotateResponse) -> tuple[int | None, str]:
        """A rotated image answered: its output in place (RowFailed when it cannot be), and its size and
        SHA-256, as the worker accounts for what it wrote or sent (it hashes in parallel processes, and a
        file it wrote is not ours to read); (None, "") from an older worker that gives no account."""
        return (reply.output_bytes, reply.output_sha256) if reply.output_sha256 else (None, "")

    def _request(self, image: bytes = b"", **files) -> v1.RotateRequest | v1.ClassifyRequest:
        row = self.row
        if row.op == "classify":
            return v1.ClassifyRequest(image=image, source=files.get("source"))
        return v1.RotateRequest(image=image, degrees=row.degrees or 0, auto=row.auto, format=row.format,
                                quality=self.settings.quality, **files)


class BytesTransport(Transport):
    """The input's bytes in one unary call (read once, before the first attempt); the answer's bytes written
    to the output here."""

    data = b""

    @property
    def message_bytes(self) -> int:
        return len(self.data)

    async def prepare(self) -> None:
        data = read_input(self.row.input_path, INLINE_MAX)
        self.data = data if data is not None else await asyncio.to_thread(read_input, self.row.input_path)

    def request(self) -> v1.RotateRequest | v1.ClassifyRequest:
        return self._request(self.data)

    async def send(self, pool: Pool) -> Sent:
        request = self.request()
        async with pool.call() as stub:
            method = stub.Rotate if self.row.op == "rotate" else stub.Classify
            reply = await method(request, timeout=self.settings.timeout)
            return Sent(reply, pool.answered(stub, reply.worker))

    async def deliver(self, reply: v1.RotateResponse) -> tuple[int | None, str]:
        output, image = self.row.output_path, reply.image
        if len(image) <= INLINE_MAX and not isinstance(output, Uri):
            write_output(output, image, self.settings.out_root)
        else:
            await asyncio.to_thread(write_output, output, image, self.settings.out_root)
        # The bytes we wrote are hashed here when the worker's account does not match them (an older worker).
        if reply.output_bytes != len(image) or not reply.output_sha256:
            return len(image), hashlib.sha256(image).hexdigest()
        return reply.output_bytes, reply.output_sha256


class StreamTransport(Transport):
    """A local file of ``size`` bytes (at least ``stream.STREAM_MIN``) in chunks, never whole in memory; a
    rotated answer is written to the output as it arrives (batch/stream.py). Each attempt opens it again."""

    def __init__(self, row: Row, settings: Settings, size: int) -> None:
        super().__init__(row, settings)
        self.size = size

    async def send(self, pool: Pool) -> Sent:
        row, settings = self.row, self.settings
        async with pool.call() as stub:
            if row.op == "rotate":
                reply = await stream.rotate(stub, self._request(), row.input_path, self.size, row.output_path,
                                            settings.out_root, settings.timeout)
            else:
                reply = await stream.classify(stub, self._request(), row.input_path, self.size, settings.timeout)
            return Sent(reply, pool.answered(stub, reply.worker))


class ReferenceTransport(Transport):
    """The input's path or URI: the worker reads it, and writes the output (durably, before it answers)."""

    by_reference = True

    def request(self) -> v1.RotateRequest | v1.ClassifyRequest:
        row = self.row
        files = {"source": _reference(row.input_path)}
        if row.op == "rotate":
            files["destination"] = _reference(row.output_path)
        return self._request(**files)

    async def send(self, pool: Pool) -> Sent:
        async with pool.call() as stub:
            method = stub.Rotate if self.row.op == "rotate" else stub.Classify
            reply = await method(self.request(), timeout=self.settings.timeout)
            return Sent(reply, pool.answered(stub, reply.worker))


class BatchedTransport(Transport):
    """A row by reference, or a small one by bytes, sent with others in one call (batch/batching.py): its own
    transport makes its request and delivers its answer; alone when the worker cannot take it in a batch."""

    def __init__(self, alone: BytesTransport | ReferenceTransport, batcher: Batcher) -> None:
        super().__init__(alone.row, alone.settings)
        self.alone = alone
        self.batcher = batcher
        self.by_reference = alone.by_reference

    @property
    def message_bytes(self) -> int:
        return self.alone.message_bytes

    async def prepare(self) -> None:
        await self.alone.prepare()

    async def send(self, pool: Pool) -> Sent:
        if not self.batcher.off:
            try:
                return await self.batcher.send(self.row.op, self.alone.request(), self.message_bytes)
            except Unbatched:
                pass
        async with self.batcher.limit:  # a single call holds a slot of the gate as the batches do
            return await self.alone.send(pool)

    async def deliver(self, reply: v1.RotateResponse) -> tuple[int | None, str]:
        return await self.alone.deliver(reply)


def choose(row: Row, settings: Settings, batcher: Batcher | None = None) -> Transport:
    """The way ``row`` goes: by reference when the worker serves both its files; else a large local file by
    stream (the worker's --max-image-mb decides); else its bytes in one call. A row on an object store never
    streams: its input is no local file to stat, and its output is one PUT. With a ``batcher``, rows by
    reference and local files of at most ``batching.SMALL`` bytes go in batches."""
    if _by_reference(row, settings):
        alone = ReferenceTransport(row, settings)
        return BatchedTransport(alone, batcher) if batcher is not None else alone
    on_store = isinstance(row.input_path, Uri) or isinstance(row.output_path, Uri)
    if not on_store and (size := stream.streamed_size(row.input_path)) is not None:
        return StreamTransport(row, settings, size)
    if batcher is not None and not on_store and _small(row.input_path):
        return BatchedTransport(BytesTransport(row, settings), batcher)
    return BytesTransport(row, settings)


def batched(transport: Transport) -> bool:
    """Whether ``transport``'s calls take their gate slot themselves (per batch) rather than per row."""
    return isinstance(transport, BatchedTransport)


def _small(path: Path) -> bool:
    try:
        return os.stat(path).st_size <= SMALL
    except OSError:  # the row's own read says what is wrong
        return False


def _by_reference(row: Row, settings: Settings) -> bool:
    """Whether the worker reads this row's input (and writes its output) itself: both under the roots it
    serves (reference mode); else the bytes travel in the messages."""
    if not settings.read_roots:
        return False
    inside = _served(row.input_path, settings.read_roots, real=row.input_real)
    if row.op == "rotate":
        inside = inside and _served(row.output_path, settings.write_roots, folder=True)
    return inside


def _served(where: Path | Uri, roots: tuple[str, ...], folder: bool = False, real: str | None = None) -> bool:
    """Whether a worker with ``roots`` (resolved folders, URI prefixes ending in /) serves ``where`` (for
    ``folder``, an output, whose folder matters: it is renamed over its path); ``real``: ``where`` resolved
    already (the index's)."""
    if isinstance(where, Uri):
        # "/" is --references' "whatever the worker serves": the worker's own roots decide, for URIs too.
        return any(root == "/" or where.startswith(root) for root in roots)
    real = real_folder(str(where.parent)) if folder else real or resolved(where)
    return any(root[:1] == "/" and within(real, root) for root in roots)


def _reference(where: Path | Uri) -> v1.ImageRef:
    return v1.ImageRef(uri=where) if isinstance(where, Uri) else v1.ImageRef(path=str(where))
