"""The face model a worker process loads in the background at the first call that needs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker import admission
from worker.config import log
from worker.errors import NotReady
from worker.metrics import Metrics, ModelState

if TYPE_CHECKING:
    from worker.admission import Call
    from worker.classifier import Classifier


class LazyClassifier:
    """The face model, loaded in a thread of its own at the first call that needs it.

    Rotation never waits for it, and a worker that only rotates never pays its
    start-up (~0.6 s of CPU and ~100 MiB per process). A classify call waits
    for the load while it lasts (until its deadline, if it has one, or its
    client leaves); calls arriving meanwhile wait for the same load.
    """

    def __init__(self, path: str | None, failed: Callable[[], None], recorder: Metrics) -> None:
        self._path = path
        self._failed = failed
        self._metrics = recorder
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._loader: threading.Thread | None = None
        self._model: Classifier | None = None

    def __call__(self, call: Call) -> Classifier:
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load, name="face-model", daemon=True)
                self._metrics.model(ModelState.LOADING)
                self._loader.start()
        admission.wait(self._done, call)
        if self._model is None:
            raise NotReady("the face model could not be loaded; this worker process is stopping (see its log)")
        return self._model

    def _load(self) -> None:
        from worker.faces import load_classifier
        from worker.faces.artifact import ModelError

        started = time.monotonic()
        try:
            self._model = load_classifier(self._path)
            log.info("face model %s %s loaded in %.1f s", self._model.name, self._model.version,
                     time.monotonic() - started)
        except ModelError as e:  # named by the artifact's checks: no traceback to add
            log.error("cannot load the face model: %s", e)
            self._failed()
        except Exception:
            log.exception("cannot load the face model %s", self._path or "(shipped default)")
            self._failed()
        finally:
            self._metrics.model(ModelState.FAILED if self._model is None else ModelState.READY)
            self._done.set()
