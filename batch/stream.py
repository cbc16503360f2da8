"""Streaming calls: an image too large to hold goes file to worker to file in chunks.

The request is its options (the unary request without the image) and the
file's size, then the file in ``CHUNK``-byte messages read as they are sent;
the answer is written chunk by chunk to ``atomic_file(output, durable=False)``,
renamed over the output once its last byte is in and made durable by group
commit before its row is journaled (batch/durable.py). Memory stays a few
chunks per call whatever the image's size: gRPC's flow control holds the
sender until the receiver has taken what it sent.

Files go by stream from ``STREAM_MIN`` bytes up: below it a unary call costs
less per call, measured (docs/benchmarks.md, "Streaming").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc

from batch.durable import atomic_file
from batch.files import open_input, output_folder
from batch.results import Reason, RowFailed
from worker.api import imageworker_v1_pb2 as v1

CHUNK = 2**20  # bytes per request message; the worker answers in the same size
STREAM_MIN = 2 * 2**20  # measured: streaming costs less per call from 2 MB up (unary 19.8 ms, stream 12.4 ms)


def streamed_size(path: Path) -> int | None:
    """The size of ``path`` when it goes by stream (a regular file of at least STREAM_MIN bytes), else None:
    a unary call reads it, and says precisely what is wrong with anything that is not such a file."""
    try:
        info = os.stat(path)
    except (OSError, TypeError):  # TypeError: not a local path (an object in a store)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size >= STREAM_MIN else None


async def rotate(stub, request: v1.RotateRequest, path: Path, size: int, output: Path, root: str,
                 timeout: float) -> v1.RotateResponse:
    """``request`` (without its image) on the ``size``-byte file ``path`` by RotateStream; the rotated image
    written atomically to ``output``, whose folder must resolve inside ``root``; the answer's metadata."""
    output_folder(output, root)
    call = stub.RotateStream(timeout=timeout)
    with _opened(path) as source, _cancelled_on_error(call):
        await _send(call, v1.RotateChunk(request=request, size=size), v1.RotateChunk, source, size)
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("part") != "response":
            raise RowFailed(f"the worker's answer stream for {path} did not start with its metadata", Reason.BAD_ANSWER)
        try:
            with atomic_file(output, durable=False) as sink:  # removed again if anything below fails
                await _receive(call, sink, first.size, path)
        except OSError as e:
            raise RowFailed(f"cannot write output {output}: {e.strerror or e}", Reason.OUTPUT_UNWRITABLE) from None
    return first.response


async def classify(stub, request: v1.ClassifyRequest, path: Path, size: int, timeout: float) -> v1.ClassifyResponse:
    """``request`` (without its image) on the ``size``-byte file ``path`` by ClassifyStream."""
    call = stub.ClassifyStream(timeout=timeout)
    with _opened(path) as source, _cancelled_on_error(call):
        await _send(call, v1.ClassifyChunk(request=request, size=size), v1.ClassifyChunk, source, size)
        return await call


async def _send(call, first, chunk_type, source: IO[bytes], size: int) -> None:
    """``first``, then the file in chunks; half-close. A call the worker ended early (a refusal) stops the
    sending quietly: its status is what the caller then reads."""
    try:
        await _write(call, first)
        await call.initial_metadata()  # the worker admitted the image (or ended the call: its status is read next)
        if call.done():
            await _raise_status(call)
        left = size
        while left:
            data = source.read(min(CHUNK, left))  # page cache: well under a millisecond a chunk
            if not data:
                raise RowFailed(f"file shrank while it was sent (being written?): {source.name}", Reason.INPUT_CHANGED)
            left -= len(data)
            await _write(call, chunk_type(data=data))
        if source.read(1):
            raise RowFailed(f"file grew while it was sent (still being written?): {source.name}", Reason.INPUT_CHANGED)
        await call.done_writing()
    except asyncio.InvalidStateError:  # the call is over: reading it raises its status
        pass
    except OSError as e:
        raise RowFailed(f"cannot read {source.name}: {e.strerror}", Reason.INPUT_UNREADABLE) from None


async def _write(call, message) -> None:
    try:
        await call.write(message)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.INTERNAL:
            raise
        # gRPC's "Internal error from Core" on a send: the connection broke mid-stream (a worker killed or gone),
        # which a unary call sees as UNAVAILABLE; retried as that. (A refusal comes before the image is sent.)
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   f"the stream was cut while it was sent ({e.details()})") from None


async def _raise_status(call) -> None:
    """The status a finished call ended with, raised as gRPC raises it (with its trailing ErrorInfo)."""
    raise grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(), await call.trailing_metadata(),
                               await call.details())


async def _receive(call, sink: IO[bytes], size: int, path: Path) -> None:
    got = 0
    while (chunk := await call.read()) is not grpc.aio.EOF:
        got += len(chunk.data)
        if got > size:
            raise RowFailed(f"the worker's answer for {path} ran past the {size:,} bytes it declared",
                            Reason.BAD_ANSWER)
        sink.write(chunk.data)
    # An answer cut short by an error raises it above; one that simply ended short is the worker's bug.
    if got < size:
        raise RowFailed(f"the worker's answer for {path} ended after {got:,} of its {size:,} bytes", Reason.BAD_ANSWER)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    """The input opened for a stream (batch/files.py: a regular file only, refused precisely otherwise)."""
    fd, _size = open_input(path)
    with open(fd, "rb", buffering=0) as f:
        yield f


@contextlib.contextmanager
def _cancelled_on_error(call) -> Iterator[None]:
    """Cancel ``call`` when its block fails on our side, so the worker stops and frees its admission."""
    try:
        yield
    except grpc.aio.AioRpcError:
        raise
    except BaseException:
        call.cancel()
        raise
