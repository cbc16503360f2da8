"""Errors raised by the worker's pure image and model code.

Each carries the gRPC status it maps to by name only (this module imports no
grpc): the servicers turn ``err.status`` into a ``grpc.StatusCode`` and
``str(err)`` into the status details, unchanged.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class: a request the worker refuses, with a specific message."""

    status = "INVALID_ARGUMENT"


class InvalidArgument(WorkerError):
    """The request itself is wrong (bad rotation, corrupt or unsupported image...)."""

    status = "INVALID_ARGUMENT"


class TooLarge(WorkerError):
    """The request is over a configured size limit (message size)."""

    status = "RESOURCE_EXHAUSTED"


class Busy(WorkerError):
    """The process holds as many image calls as it may (--max-concurrent-rpcs); a retry later may succeed."""

    status = "RESOURCE_EXHAUSTED"


class NotReady(WorkerError):
    """The worker cannot serve yet or any more (models loading, draining)."""

    status = "UNAVAILABLE"
