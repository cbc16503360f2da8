"""The driver's error kinds: one base that ``batch`` commands catch and turn into exit status 2.

Each concern raises its own subclass (a manifest, a results folder, a worker
address, the embedded worker) so that tests and callers can tell them apart;
the CLI needs only the base. Row-level failures are not errors of the run:
they end as a row's outcome (``batch.results.Outcome``), never as these.
"""

from __future__ import annotations


class BatchError(Exception):
    """The run cannot start or go on; the message says why and what to do (exit code 2)."""


class UsageError(BatchError):
    """An option, a worker address or a TLS file that cannot work."""
