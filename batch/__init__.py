"""imagebatch's driver: run a manifest of images through one or more workers, as a library or `batch run`.

    import batch
    frame = batch.run(paths, out="results/mine", concurrency=8)   # a CSV path, a DataFrame or dicts
    batch.report("results/mine")                                   # the figures of `batch report --json`

See batch/api.py; errors are ``batch.BatchError`` subclasses (batch/errors.py).
"""

import logging

# The report package first: importing it later would bind its name here over the function ``report``.
from batch import report as _report_package  # noqa: F401, I001
from batch.api import read_results, report, run, run_async
from batch.errors import BatchError, RunStopped, UsageError, WorkerStartError
from batch.extras import MissingExtra
from batch.manifest import ManifestError
from batch.progress import Tally
from batch.results import ResultsError

# A library prints nothing unless asked: its log goes where the application sends the "batch" logger's (the
# CLI: stderr), not to Python's last-resort handler.
logging.getLogger("batch").addHandler(logging.NullHandler())

__all__ = [
    "BatchError", "ManifestError", "MissingExtra", "ResultsError", "RunStopped", "Tally", "UsageError",
    "WorkerStartError", "read_results", "report", "run", "run_async",
]
