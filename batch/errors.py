"""The driver's error kinds: one base that callers catch, and that ``batch`` commands turn into exit status 2.

    BatchError            the run cannot start or go on; the message says why and what to do
    ├── UsageError        an option, a worker address or a TLS file that cannot work
    ├── ManifestError     the manifest as a whole (batch/manifest.py): not CSV, no path column, duplicate ids
    ├── ResultsError      a results folder that cannot be read, resumed or written (batch/results.py)
    ├── MissingExtra      an optional feature whose packages are not installed (batch/extras.py)
    ├── WorkerStartError  the embedded worker did not start
    └── RunStopped        no worker answered for many rows in a row: the run stopped early, keeping its results

Each concern raises its own subclass so that tests and callers can tell them apart; the CLI needs only the
base (and maps RunStopped, which ends a run that did start, to exit 1 with its summary line). Row-level
failures are not errors of the run: they end as a row's outcome (``batch.results.Outcome``), never as these.
"""

from __future__ import annotations

from pathlib import Path


class BatchError(Exception):
    """The run cannot start or go on; the message says why and what to do (exit code 2)."""


class UsageError(BatchError):
    """An option, a worker address or a TLS file that cannot work."""


class WorkerStartError(BatchError):
    """The embedded worker did not start; the message carries the end of its log."""


class RunStopped(BatchError):
    """The run stopped early because no worker answered; ``results`` is the results folder, which keeps every
    row finished (the same call again finishes the rest)."""

    def __init__(self, message: str, results: Path) -> None:
        super().__init__(message)
        self.results = results
