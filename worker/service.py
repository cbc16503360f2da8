"""The servicers: gRPC messages and status codes on one side, plain functions on the other.

Each RPC is a few lines: unpack the request, call ``worker.rotation`` or the
classifier, pack the answer. The streaming RPCs receive the image in chunks
(refused on the first message when its declared size is over --max-image-mb),
holding what they have received, each chunk waited for at most
--stream-idle-seconds; they answer in chunks; the image itself is decoded
whole, as in a unary call. No call lasts past --max-call-seconds, whatever its
deadline (or none). The batch RPCs run each item through the unary call's own code and answer its error as
that item's result. ``WorkerError``s become their status code with
the message unchanged and a ``google.rpc.ErrorInfo`` naming their reason (plus
a ``RetryInfo`` when a retry soon may succeed); anything else is a bug, logged
with its traceback and answered ``INTERNAL`` with reason INTERNAL.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from worker import admission, rotation
from worker.admission import Admission
from worker.api import abimage_pb2, abimage_pb2_grpc, imageworker_v1_pb2, imageworker_v1_pb2_grpc
from worker.classifier import Classifier
from worker.decode import raw_pixels
from worker.errors import Busy, Cancelled, Expired, InvalidArgument, NotReady, Reason, TooLarge, WorkerError
from worker.metrics import Metrics
from worker.storage import Roots

log = logging.getLogger("worker.service")

ERROR_DOMAIN = "imageworker.v1"  # ErrorInfo.domain: the reasons are imageworker.v1.ErrorReason's names
CHUNK = 2**20  # bytes per message of a streamed answer


@dataclass
class WorkerState:
    """What the servicers of one process share."""

    identity: str  # "host:port/pid", returned in every response
    max_message_bytes: int
    max_image_bytes: int
    max_pixels: int
    admission: Admission  # image calls held and working at once
    stream_idle: float = 30.0  # seconds a stream may send nothing (--stream-idle-seconds)
    max_call: float = 600.0  # seconds any call may last, whatever its deadline (--max-call-seconds)
    max_batch_items: int = 64  # items a batch call may carry (--max-batch-items)
    # The face model, waited for while a call lasts (worker.server loads it at the first call that needs it).
    classifier: Callable[[admission.Call], Classifier] | None = None
    roots: Roots = field(default_factory=Roots)  # reference mode: what requests may name instead of bytes
    served: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)  # records nothing unless worker serve --metrics-port
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Bytes input_of read from a file for this thread's call: the rpc decorator counts them as received.
    _read: threading.local = field(default_factory=threading.local)

    def count(self, method: str) -> None:
        with self._lock:
            self.served[method] = self.served.get(method, 0) + 1

    def limited(self, context: grpc.ServicerContext) -> _Limited:
        """``context`` with its time remaining capped at --max-call-seconds from now."""
        return _Limited(context, self.max_call)

    def check_size(self, data: bytes) -> None:
        _check_limit(len(data), self.max_message_bytes, "--max-message-mb")

    def check_image(self, size: int) -> None:
        """A streamed image's declared ``size`` against --max-image-mb."""
        _check_limit(size, self.max_image_bytes, "--max-image-mb")

    def input_of(self, request, image: bytes) -> bytes:
        """The image a request sends (``image``, its bytes taken once: each read of a bytes field copies it), or
        the file its ``source`` names (reference mode)."""
        if request.HasField("source"):
            source = request.source
            data = (self.roots.read_uri(source.uri, self.max_image_bytes) if source.HasField("uri")
                    else self.roots.read_file(source.path, self.max_image_bytes))
            self._read.size = len(data)
            return data
        return image

    def deliver(self, request, data: bytes) -> bytes:
        """The answer's image bytes: ``data``, or nothing once written where ``destination`` names."""
        if request.HasField("destination"):
            target = request.destination
            if target.HasField("uri"):
                self.roots.write_uri(target.uri, data)
            else:
                self.roots.write_file(target.path, data)
            return b""
        return data

    def ready_classifier(self, context: grpc.ServicerContext) -> Classifier:
        """The face model, waiting for it to load while the call lasts (Expired once its deadline passes)."""
        if self.classifier is None:
            raise NotReady("this worker has no face model")
        return self.classifier(context)


class _Limited:
    """A call's context whose deadline is its client's or --max-call-seconds from its start, whichever comes
    first: a client without a deadline (or with one days away) cannot hold the worker's memory for as long as it
    likes."""

    def __init__(self, context: grpc.ServicerContext, seconds: float) -> None:
        self._context = context
        self._end = time.monotonic() + seconds

    def time_remaining(self) -> float:
        own = self._end - time.monotonic()
        theirs = self._context.time_remaining()
        return theirs if theirs is not None and theirs < own else own

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def _check_limit(size: int, limit: int, flag: str) -> None:
    if size > limit:
        raise TooLarge(f"image is {size / 2**20:.1f} MiB, over this worker's limit of {limit / 2**20:.0f} MiB "
                       f"(worker serve {flag})")


@dataclass
class _Record:
    """What the metrics record of one call."""

    code: str = "OK"
    reason: str = ""
    received: int = 0
    sent: int = 0


@contextlib.contextmanager
def _handled(servicer, method: str, context: grpc.ServicerContext) -> Iterator[_Record]:
    """Map WorkerErrors to status codes, log one line per failed request, record the call's metrics."""
    state = servicer.state
    name = f"{type(servicer).__name__}.{method}"
    state._read.size = 0
    record = _Record()
    started = state.metrics.started()
    try:
        yield record
    except WorkerError as e:
        record.code, record.reason = e.status, e.reason
        # Refusals under overload are routine (clients retry them): not worth a line each. A client may cancel.
        level = logging.DEBUG if isinstance(e, Busy) else logging.INFO if isinstance(e, Cancelled) else logging.WARNING
        log.log(level, "%s from %s failed: %s: %s", name, context.peer(), e.status, e)
        context.abort_with_status(_error_status(e.status, str(e), e.reason, e.retry_after))
    except GeneratorExit:  # a streamed answer the client stopped reading (cancelled, gone, out of time)
        expired = context.time_remaining() <= 0
        record.code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        record.reason = Reason.CALL_EXPIRED if expired else Reason.CALL_CANCELLED
        raise
    except Exception:
        record.code, record.reason = "INTERNAL", Reason.INTERNAL
        log.exception("%s from %s: internal error", name, context.peer())
        message = f"internal error in {method}; see the worker's log"
        context.abort_with_status(_error_status("INTERNAL", message, Reason.INTERNAL))
    finally:  # abort_with_status raises: failed calls are recorded here too
        state.metrics.ended(method, record.code, record.reason, started, record.received + state._read.size,
                            record.sent)
    state.count(method)


def rpc(method: Callable) -> Callable:
    """Check the image's size, admit the call (or refuse it: busy, expired, cancelled), count its answer until
    sent, map WorkerErrors to status codes, log one line per failed request, record the call's metrics.

    The servicer's ``image_of(request)`` names the bytes --max-message-mb bounds; the method gets them beside
    the request (``method(self, request, context, image)``): protobuf copies a bytes field at each read.
    """

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        state = self.state
        context = state.limited(context)
        image = self.image_of(request)
        with _handled(self, method.__name__, context) as record:
            record.received = len(image)
            state.check_size(image)  # one limit for every service, before any slot is held
            response = state.admission.run(method, self, request, context, image, call=context, size=len(image))
            # Until gRPC has sent it (the client's window may stay shut), the answer is this process's memory.
            record.sent = response.ByteSize()
            state.admission.hold_answer(context, record.sent)
        return response

    return wrapper


@contextlib.contextmanager
def _streamed(servicer, method: str, chunks: Iterator, context: grpc.ServicerContext) -> Iterator[tuple]:
    """A streamed call, as ``rpc`` does a unary one: (its request, its image, its metrics record) once admitted
    by the size its first message declares and received in full; held admitted until the block ends, holding
    the bytes received so far (a stream that sends nothing holds nothing)."""
    state = servicer.state
    with _handled(servicer, method, context) as record, _Inbox(chunks, context, state.stream_idle) as inbox:
        first = inbox.next()
        if first is None or first.WhichOneof("part") != "request":
            raise InvalidArgument("a stream's first message must be its request, with the image's size",
                                  Reason.STREAM_INVALID)
        request, size = first.request, first.size
        if request.image or any(f.name in ("source", "destination") for f, _ in request.ListFields()):
            raise InvalidArgument("a streamed request carries its image in the chunks after it: no image bytes "
                                  "or references in its first message", Reason.STREAM_INVALID)
        if size < 0:
            raise InvalidArgument(f"a stream declared {size} bytes", Reason.STREAM_INVALID)
        state.check_image(size)  # before any of its bytes
        with state.admission.held(context, size, streamed=True) as hold:
            try:
                # "Send the image": a client that waits for this sees a refusal above as its status; one refused
                # while it sends sees only the transport's INTERNAL (gRPC aio loses the status in that race).
                context.send_initial_metadata(())
                data = _gather(inbox, size, hold)
                record.received = size
                yield request, data, record
            finally:
                if hold.bytes >= TRIM_BYTES:
                    _give_back_memory()


def _gather(inbox: _Inbox, size: int, hold: admission.Hold) -> bytes:
    """The image in the ``data`` chunks, exactly ``size`` bytes (else STREAM_INVALID), each held as it comes."""
    # BytesIO grows in place (mremap) and getvalue hands over its buffer: about one copy of the image, not two.
    # Closed whatever happens: a call that fails here releases what it received at once, not when a traceback
    # that reaches this frame is collected.
    with io.BytesIO() as image:
        while (chunk := inbox.next()) is not None:
            if chunk.WhichOneof("part") != "data":
                raise InvalidArgument("a stream carries its request once, in its first message",
                                      Reason.STREAM_INVALID)
            if image.tell() + len(chunk.data) > size:
                raise InvalidArgument(f"the stream sent more than the {size:,} bytes it declared",
                                      Reason.STREAM_INVALID)
            hold.add(len(chunk.data))
            image.write(chunk.data)
        if image.tell() < size:
            inbox.ended_short()
            raise InvalidArgument(f"the stream ended after {image.tell():,} of the {size:,} bytes it declared",
                                  Reason.STREAM_INVALID)
        return image.getvalue()


# A stream that received this much gives the free memory of the process back to the system when it ends: its
# 1 MiB messages, read on another thread than the one that gathered them, leave the heaps of glibc's arenas
# fragmented, and they do not shrink by themselves (eight cancelled 150 MiB streams: ~220 MiB kept).
TRIM_BYTES = 32 * 2**20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _give_back_memory() -> None:
    trim = getattr(_libc(), "malloc_trim", None)  # glibc's
    if trim is not None:
        trim(0)


_GONE = object()  # the request iterator raised: the call is over (cancelled, or its deadline passed)
# gRPC may end a cancelled call's messages quietly and say it was cancelled only a moment later.
CANCEL_GRACE = 0.5
# Messages (1 MiB each from the driver) a stream's reader may hold that its call has not taken yet: enough for
# the two threads to overlap instead of handing over each message in turn.
READ_AHEAD = 4


class _Inbox:
    """A stream's messages, read on a thread of its own, so that the call waits for each with bounds:
    --stream-idle-seconds, the call's time, its client. The reader runs at most READ_AHEAD messages ahead of
    the call (admission counts what the call has taken) and ends with the call (gRPC's iterator returns or
    raises then)."""

    def __init__(self, chunks: Iterator, call: admission.Call, idle: float) -> None:
        self._chunks = chunks
        self._call = call
        self._idle = idle
        self._messages: queue.Queue = queue.Queue(READ_AHEAD)
        self._closed = threading.Event()
        threading.Thread(target=self._read, name="stream-reader", daemon=True).start()

    def __enter__(self) -> _Inbox:
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()

    def _read(self) -> None:
        try:
            for message in self._chunks:
                if not self._hand_over(message):
                    return
            last = None
        except grpc.RpcError as e:
            # gRPC keeps the error in the call's state: without its traceback it reaches no frame of ours.
            e.__traceback__ = None
            last = _GONE
        self._hand_over(last)

    def _hand_over(self, message) -> bool:
        """``message`` queued for the call; False once the call takes no more."""
        while not self._closed.is_set():
            try:
                self._messages.put(message, timeout=admission.POLL)
                return True
            except queue.Full:
                pass
        return False

    def ended_short(self) -> None:
        """The messages ended before the image did: Cancelled (or Expired) if that was the call ending, which
        gRPC may report a moment after the end of its messages; else the client's mistake, for the caller."""
        until = time.monotonic() + CANCEL_GRACE
        while time.monotonic() < until:
            admission.check(self._call)
            time.sleep(0.01)

    def next(self):
        """The next message, or None once the client has sent its last. Expired after --stream-idle-seconds
        without one or once the call's time is up; Cancelled once its client has gone."""
        since = time.monotonic()
        while True:
            try:
                message = self._messages.get(timeout=admission.bounded(self._call.time_remaining(), admission.POLL))
            except queue.Empty:
                admission.check(self._call)
                if time.monotonic() - since >= self._idle:
                    raise Expired(f"the stream sent nothing for {self._idle:g} s (worker serve "
                                  "--stream-idle-seconds); the worker ended it") from None
                continue
            if message is _GONE:
                admission.check(self._call)
                raise Cancelled("the client cancelled the call or went away; the worker stopped its work")
            return message


@contextlib.contextmanager
def _cut_off(call: _Limited) -> Iterator[None]:
    """Cancel ``call`` if its answer is still being sent when its time is up: gRPC waits without a bound for a
    client that does not read (the answer and its thread held all the while)."""
    timer = threading.Timer(call.time_remaining(), call.cancel)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _rich_status(code: str, message: str, reason: Reason, retry_after: float | None = None) -> status_pb2.Status:
    """gRPC's rich error model: the code and message, with ErrorInfo (and RetryInfo) in the details."""
    rich = status_pb2.Status(code=code_pb2.Code.Value(code), message=message)
    rich.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        rich.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rich


def _error_status(code: str, message: str, reason: Reason, retry_after: float | None = None) -> grpc.Status:
    return rpc_status.to_status(_rich_status(code, message, reason, retry_after))


def _worker_status(error: WorkerError) -> status_pb2.Status:
    return _rich_status(error.status, str(error), error.reason, error.retry_after)


def _batched(servicer, method: str, one: Callable, answer: type, result: type) -> Callable:
    """A batch RPC over ``one(item, context)``, the work of the unary call: the batch admitted as one call
    holding all its items' image bytes, each item then sized, given a worker turn and answered (or failed) as
    the unary call would be, one after another. An item's error is its result; only the batch's own refusal,
    its client leaving, or a bug outside the items fails the call. The metrics record each item as its unary
    call (its code, reason, time and bytes) and the batch call once, its bytes in its items."""

    def call(request, context: grpc.ServicerContext):
        state = servicer.state
        context = state.limited(context)
        items = request.items
        with _handled(servicer, method, context):
            if len(items) > state.max_batch_items:
                raise InvalidArgument(f"the batch holds {len(items)} items, over this worker's limit of "
                                      f"{state.max_batch_items} (worker serve --max-batch-items); send fewer per "
                                      "batch", Reason.BATCH_TOO_LARGE)
            sizes = [len(item.image) for item in items]  # each read of a bytes field copies it (not kept: memory)
            with state.admission.held(context, sum(sizes)):
                results, answered = _each(servicer, method, items, sizes, one, result, context)
                response = answer(results=results)
            # Counted from its items' answers: the whole answer's ByteSize() would serialise it once more.
            state.admission.hold_answer(context, answered)
        return response

    return call


def _each(servicer, method: str, items, sizes: list[int], one: Callable, result: type,
          context: _Limited) -> tuple[list, int]:
    """One result per item, in order, and the bytes of the items' answers in them (an error's few hundred bytes
    aside). Once the batch's time is up, the item at hand and those after it fail with
    CALL_EXPIRED; a client gone (Cancelled) ends the call."""
    state = servicer.state
    name, unary = f"{type(servicer).__name__}.{method}", method.removesuffix("Batch")
    results: list = []
    room = state.max_message_bytes  # the answer is one message: items whose answers would not fit are refused
    for index, item in enumerate(items):
        if len(results) > index:  # failed with the call's time
            break
        state._read.size = 0
        record = _Record()
        started = state.metrics.started()
        try:
            image = item.image  # read once: each read copies it
            state.check_size(image)
            response = state.admission.turn(one, item, context, image, call=context)
            sent = response.ByteSize()  # protobuf serialises the message to size it: once
            size = sent + 16  # its field's tag and length beside it
            if size > room:
                raise InvalidArgument(
                    f"this item's answer ({size:,} bytes) would take the batch's answer over this worker's limit "
                    f"of {state.max_message_bytes / 2**20:.0f} MiB (worker serve --max-message-mb); send it alone "
                    "or in a smaller batch", Reason.BATCH_TOO_LARGE)
            room -= size
            record.sent = sent
            results.append(result(response=response))
            state.count(unary)  # served: each item answered, as its unary call would count
        except Cancelled as e:
            record.code, record.reason = e.status, e.reason
            raise
        except Expired as e:
            log.info("%s from %s: out of time at item %d of %d: %s", name, context.peer(), index + 1, len(items), e)
            record.code, record.reason = e.status, e.reason
            results.extend(result(error=_worker_status(e)) for _ in range(len(items) - index))
            for left in sizes[index + 1:]:  # never started: each recorded as its call would be
                state.metrics.ended(unary, e.status, e.reason, state.metrics.started(), left, 0)
        except WorkerError as e:
            level = logging.DEBUG if isinstance(e, Busy) else logging.WARNING
            log.log(level, "%s from %s: item %d failed: %s: %s", name, context.peer(), index, e.status, e)
            record.code, record.reason = e.status, e.reason
            results.append(result(error=_worker_status(e)))
        except Exception:
            log.exception("%s from %s: item %d: internal error", name, context.peer(), index)
            record.code, record.reason = "INTERNAL", Reason.INTERNAL
            results.append(result(error=_rich_status("INTERNAL", f"internal error in {method}; see the worker's "
                                                     "log", Reason.INTERNAL)))
        finally:
            state.metrics.ended(unary, record.code, record.reason, started, sizes[index] + state._read.size,
                                record.sent)
    state._read.size = 0
    return results, state.max_message_bytes - room


class ImageWorkerServicer(imageworker_v1_pb2_grpc.ImageWorkerServicer):
    """imageworker.v1.ImageWorker: encoded image files in, encoded files or labels out."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.RotateBatch = _batched(self, "RotateBatch", self._rotate, imageworker_v1_pb2.RotateBatchResponse,
                                    imageworker_v1_pb2.RotateResult)
        self.ClassifyBatch = _batched(self, "ClassifyBatch", self._classify,
                                      imageworker_v1_pb2.ClassifyBatchResponse, imageworker_v1_pb2.ClassifyResult)

    @staticmethod
    def image_of(request) -> bytes:
        return request.image

    @rpc
    def Rotate(self, request, context, image: bytes):
        return self._rotate(request, context, image)

    def _rotate(self, request, context, image: bytes) -> imageworker_v1_pb2.RotateResponse:
        out = self._rotated(request, self.state.input_of(request, image), context)
        return self._rotate_response(out, self.state.deliver(request, out.data))

    def RotateStream(self, chunks, context):
        context = self.state.limited(context)
        with _streamed(self, "RotateStream", chunks, context) as (request, data, record):
            out = self.state.admission.turn(self._rotated, request, data, context, call=context)
            record.sent = len(out.data)
            with _cut_off(context):
                yield imageworker_v1_pb2.RotateChunk(response=self._rotate_response(out, b""), size=len(out.data))
                for start in range(0, len(out.data), CHUNK):  # gRPC asks for the next once this one is sent
                    yield imageworker_v1_pb2.RotateChunk(data=out.data[start:start + CHUNK])

    def _rotated(self, request, data: bytes, context) -> rotation.Rotated:
        # The decoder calls check at every block and frame: an abandoned call stops there, not at its end.
        options = {"format": request.format, "quality": request.quality, "max_pixels": self.state.max_pixels,
                   "check": functools.partial(admission.check, context)}
        if request.auto:
            def faces() -> int | None:  # only asked when the file has no EXIF orientation to apply
                model = self.state.ready_classifier(context)
                admission.check(context)
                return model.upright_turn(data, self.state.max_pixels)

            return rotation.auto_rotate(data, faces, **options)
        return rotation.rotate(data, request.degrees, **options)

    def _rotate_response(self, out: rotation.Rotated, image: bytes) -> imageworker_v1_pb2.RotateResponse:
        return imageworker_v1_pb2.RotateResponse(
            image=image,
            format=out.format,
            width=out.width,
            height=out.height,
            method=out.method,
            worker=self.state.identity,
            decided_by=out.decided_by,
            degrees=out.degrees,
            note=out.note,
            # What was written (answered, streamed or stored at `destination`): ~0.75 ms a MiB, small beside
            # the rotation, and the client cannot cheaply hash a file the worker wrote.
            output_bytes=len(out.data),
            output_sha256=hashlib.sha256(out.data).hexdigest(),
        )

    @rpc
    def Classify(self, request, context, image: bytes):
        return self._classify(request, context, image)

    def _classify(self, request, context, image: bytes) -> imageworker_v1_pb2.ClassifyResponse:
        return self._classified(self.state.input_of(request, image), context)

    def ClassifyStream(self, chunks, context):
        context = self.state.limited(context)
        with _streamed(self, "ClassifyStream", chunks, context) as (_, data, record):
            response = self.state.admission.turn(self._classified, data, context, call=context)
            record.sent = response.ByteSize()
        return response

    def _classified(self, data: bytes, context) -> imageworker_v1_pb2.ClassifyResponse:
        model = self.state.ready_classifier(context)
        admission.check(context)  # the model's load may have used up the call (dlib cannot be stopped midway)
        result = model.classify(data, self.state.max_pixels)
        return imageworker_v1_pb2.ClassifyResponse(
            label=result.label,
            confidence=result.confidence,
            faces=[
                imageworker_v1_pb2.Face(
                    box=imageworker_v1_pb2.Box(left=f.box[0], top=f.box[1], right=f.box[2], bottom=f.box[3]),
                    label=f.label,
                    score=f.score,
                )
                for f in result.faces
            ],
            model=model.name,
            model_version=model.version,
            width=result.width,
            height=result.height,
            orientation=result.orientation,
            worker=self.state.identity,
        )


# The legacy enum's values are quarter turns counter-clockwise.
_LEGACY_ROTATIONS = {v.number: v.number * 90 for v in abimage_pb2.ABImageRotateRequest.Rotation.DESCRIPTOR.values}


def _channels(image: abimage_pb2.ABImage) -> int:
    return 3 if image.color else 1


class ABImageServicer(abimage_pb2_grpc.ABImageServiceServicer):
    """The legacy ABImageService: raw pixels, kept wire-compatible for deployed clients."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state

    @staticmethod
    def image_of(request) -> bytes:
        return request.image.data

    @rpc
    def RotateImage(self, request, context, data: bytes):
        if request.rotation not in _LEGACY_ROTATIONS:
            raise InvalidArgument(
                f"unknown rotation enum value {request.rotation}; expected NONE=0, NINETY_DEG=1, "
                "ONE_EIGHTY_DEG=2 or TWO_SEVENTY_DEG=3",
                Reason.INVALID_ROTATION,
            )
        image = request.image
        degrees = _LEGACY_ROTATIONS[request.rotation]
        turned = rotation.rotate_pixels(data, image.width, image.height, _channels(image), degrees,
                                        max_pixels=self.state.max_pixels)
        width, height = (image.height, image.width) if degrees in (90, 270) else (image.width, image.height)
        return abimage_pb2.ABImage(color=image.color, data=turned, width=width, height=height)

    @rpc
    def RecognizeFace(self, request, context, data: bytes):
        image = request.image
        pixels = raw_pixels(data, image.width, image.height, _channels(image), self.state.max_pixels)
        label = self.state.ready_classifier(context).classify_legacy(pixels)
        return abimage_pb2.ABCustomImageEndpointResponse(classification=label)
