"""Optional features and the extra that installs each: a clear error, not an ImportError, when one is missing."""

from __future__ import annotations

import importlib.util

from batch.errors import BatchError


class MissingExtra(BatchError):
    """An optional feature was asked for whose packages are not installed."""


def require_pyarrow() -> None:
    """Raise MissingExtra unless pyarrow (Parquet results: writing, reading, resuming) can be imported."""
    if importlib.util.find_spec("pyarrow") is None:
        raise MissingExtra("Parquet results need pyarrow, which is not installed: "
                           "pip install 'imagebatch[parquet]' (or use --results-format csv)")
