"""imagebatch's gRPC image worker, and its image and face work as plain functions for in-process use.

    import worker
    rotated = worker.rotate(data, 90)            # a Rotated: .data, .format, .width, .height, ...
    upright = worker.auto_rotate(data, lambda: None)
    answer = worker.classify(data)               # a Classification: .label, .confidence, .faces, ...

The functions take and return encoded image bytes and raise ``worker.WorkerError`` subclasses carrying a
``reason`` (a ``worker.Reason``), as the gRPC servicers do. They are imported on first use, so that
``import worker`` (as the driver does for its embedded worker) does not load Pillow or the face model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.classifier import Classification
    from worker.errors import Reason, WorkerError
    from worker.faces import classify
    from worker.rotation import Rotated, auto_rotate, rotate

_EXPORTS = {
    "rotate": "worker.rotation", "auto_rotate": "worker.rotation", "Rotated": "worker.rotation",
    "classify": "worker.faces", "Classification": "worker.classifier",
    "WorkerError": "worker.errors", "Reason": "worker.errors",
}
__all__ = ["Classification", "Reason", "Rotated", "WorkerError", "auto_rotate", "classify", "rotate"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
