"""Errors raised by the worker's pure image and model code.

Each carries the gRPC status it maps to, by name only (this module imports no
grpc), and a stable ``reason``: the servicers send ``err.status`` as the
status code, ``str(err)`` unchanged as its message and ``err.reason`` as the
``google.rpc.ErrorInfo`` reason that clients decide on. The reasons are
documented in proto/imageworker_v1.proto (enum ErrorReason).
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """The ErrorInfo reasons the worker sends: exactly the names of imageworker.v1.ErrorReason."""

    WORKER_BUSY = "WORKER_BUSY"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    PIXEL_LIMIT = "PIXEL_LIMIT"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    CORRUPT_IMAGE = "CORRUPT_IMAGE"
    EMPTY_IMAGE = "EMPTY_IMAGE"
    INVALID_ROTATION = "INVALID_ROTATION"
    INVALID_PIXELS = "INVALID_PIXELS"
    MODEL_LOADING = "MODEL_LOADING"
    CALL_EXPIRED = "CALL_EXPIRED"
    CALL_CANCELLED = "CALL_CANCELLED"
    WORK_LIMIT = "WORK_LIMIT"
    REFERENCES_OFF = "REFERENCES_OFF"
    OUTSIDE_ROOTS = "OUTSIDE_ROOTS"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    FILE_UNREADABLE = "FILE_UNREADABLE"
    FILE_UNWRITABLE = "FILE_UNWRITABLE"
    INVALID_FORMAT = "INVALID_FORMAT"
    INVALID_QUALITY = "INVALID_QUALITY"
    CONVERSION_REFUSED = "CONVERSION_REFUSED"
    STREAM_INVALID = "STREAM_INVALID"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    INTERNAL = "INTERNAL"


class WorkerError(Exception):
    """Base class: a request the worker refuses, with a specific message. Raise a subclass."""

    status: str
    reason: Reason
    retry_after: float | None = None  # seconds a client should wait before retrying, when retrying helps

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:  # one class, several reasons: the raise site says which
            self.reason = reason


class InvalidArgument(WorkerError):
    """The request itself is wrong; the reason says how (corrupt by default)."""

    status = "INVALID_ARGUMENT"
    reason = Reason.CORRUPT_IMAGE


class TooLarge(WorkerError):
    """The request is over a configured size limit (--max-message-mb for a message, --max-image-mb for an image)."""

    status = "RESOURCE_EXHAUSTED"
    reason = Reason.IMAGE_TOO_LARGE


class Busy(WorkerError):
    """The process holds as many image calls, or answers not yet sent, as it may; a retry later may succeed."""

    status = "RESOURCE_EXHAUSTED"
    reason = Reason.WORKER_BUSY
    retry_after = 0.05  # a slot frees within milliseconds: the driver's own first busy backoff


class NotReady(WorkerError):
    """The worker cannot serve yet (the face model is loading)."""

    status = "UNAVAILABLE"
    reason = Reason.MODEL_LOADING


class Expired(WorkerError):
    """The call's deadline passed before its work was done: the rest is not started (the client gave up)."""

    status = "DEADLINE_EXCEEDED"
    reason = Reason.CALL_EXPIRED


class Cancelled(WorkerError):
    """The client cancelled the call or went away: its work stops at the next point that can stop."""

    status = "CANCELLED"
    reason = Reason.CALL_CANCELLED
