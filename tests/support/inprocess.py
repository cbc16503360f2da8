"""The worker's real servicers in the test's own process on 127.0.0.1:0: the fast layer's worker.

As grpc's own example tests do: the servicers, admission, limits and error reasons are the shipped ones,
put together by ``worker.server.services`` exactly as `worker serve` does; only the face model is a small
stand-in (the real one takes seconds and ~100 MiB to load). Like a worker process it bounds images by
its own --max-pixels instead of Pillow's process-wide guard, which is put back when the block ends.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from click.testing import CliRunner
from grpc_health.v1 import health_pb2
from PIL import Image

from batch.cli import main as batch_main
from worker.classifier import Box, Classification, Classifier, FaceResult
from worker.config import ServerConfig
from worker.decode import upright, use_own_pixel_limit
from worker.metrics import Metrics
from worker.server import services, set_health
from worker.service import WorkerState


class StandInClassifier:
    """Says "face" for an image at least 32 pixels wide (one face in the middle), else "no_face". It decodes
    as the real model does (``worker.decode.upright``), so it refuses the same images for the same reasons."""

    name = "stand-in"
    version = "1"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate  # when given, each call waits for it: a test holds calls in flight as long as it likes

    def classify(self, data: bytes, max_pixels: int) -> Classification:
        if self.gate is not None:
            self.gate.wait()
        width, height = upright(data, max_pixels).size
        if width < 32:
            return Classification("no_face", 0.0, width, height)
        box = Box(width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        return Classification("face", 0.9, width, height, [FaceResult(box, "face", 0.9)])

    def upright_turn(self, data: bytes, max_pixels: int) -> int | None:
        """Its one face is always upright: 0 (None, no face, under 32 pixels wide)."""
        return 0 if self.classify(data, max_pixels).faces else None

    def classify_legacy(self, pixels) -> str:
        return "face"


class Recorder(Metrics):
    """The worker's metrics, which also count the reasons its calls ended with (the ErrorInfo reasons; "" for
    an answer), so that a test can wait for a refusal instead of sleeping until one is likely."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: Counter[str] = Counter()
        self._changed = threading.Condition()

    def ended(self, method: str, code: str, reason: str, *args, **kwargs) -> None:
        super().ended(method, code, reason, *args, **kwargs)
        with self._changed:
            self.reasons[reason] += 1
            self._changed.notify_all()

    def wait_for(self, reason: str, count: int = 1, timeout: float = 30.0) -> bool:
        """Whether ``count`` calls have ended with ``reason`` within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self.reasons[reason] >= count, timeout)


@dataclass
class InProcessWorker:
    address: str
    state: WorkerState  # its ``served`` counts the calls answered
    server: grpc.Server

    @property
    def recorder(self) -> Recorder:
        return self.state.metrics  # type: ignore[return-value]  # in_process_worker's

    def open_after(self, gate: threading.Event, reason: str, timeout: float = 30.0) -> None:
        """Set ``gate`` (a StandInClassifier's) once a call has ended with ``reason`` here, or after ``timeout``
        seconds without one (the test's assertions then say what did not happen)."""
        threading.Thread(target=lambda: (self.recorder.wait_for(reason, timeout=timeout), gate.set()),
                         daemon=True).start()


@contextmanager
def in_process_worker(classifier: Classifier | None = None, **config) -> Iterator[InProcessWorker]:
    """A worker serving in this process until the block ends, with the stand-in classifier unless given one (the
    shipped model: ``worker.faces.load_classifier()``); ``config`` are ServerConfig fields (limits,
    threads, ``data_roots``/``output_roots`` for reference mode)."""
    settings = ServerConfig(host="127.0.0.1", port=0, processes=1, **config)
    pillow_guard = Image.MAX_IMAGE_PIXELS
    use_own_pixel_limit()
    server, health, state = services(settings, "127.0.0.1:0", Recorder())
    classifier = classifier or StandInClassifier()
    state.classifier = lambda _remaining: classifier
    port = server.add_insecure_port("127.0.0.1:0")
    state.identity = f"{socket.gethostname()}:{port}/{os.getpid()}"  # as a worker process names itself
    server.start()
    set_health(health, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield InProcessWorker(f"127.0.0.1:{port}", state, server)
    finally:
        server.stop(0).wait()
        Image.MAX_IMAGE_PIXELS = pillow_guard


def run_cli(*args: object) -> tuple[int, str, str]:
    """`batch ARGS…` in this process (click's CliRunner): its exit code, stdout and stderr."""
    result = CliRunner().invoke(batch_main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr
