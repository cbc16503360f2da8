"""The worker's real servicers in the test's own process on 127.0.0.1:0: the fast layer's worker.

As grpc's own example tests do: the servicers, admission, limits and error reasons are the shipped ones,
put together by ``worker.server.services`` exactly as `worker serve` does; only the face model is a small
stand-in (the real one takes seconds and ~100 MiB to load), and nothing process-wide is changed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from PIL import Image, UnidentifiedImageError

from worker.classifier import Box, Classification, FaceResult
from worker.errors import InvalidArgument, Reason
from worker.metrics import Metrics
from worker.server import ServerConfig, services, set_health
from worker.service import WorkerState


class StandInClassifier:
    """Says "face" for an image at least 32 pixels wide (one face in the middle), else "no_face"; refuses
    what Pillow cannot open as the real model does (CORRUPT_IMAGE)."""

    name = "stand-in"
    version = "1"

    def classify(self, data: bytes, max_pixels: int) -> Classification:
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidArgument(f"not an image the stand-in can read: {e}", Reason.CORRUPT_IMAGE) from None
        if width < 32:
            return Classification("no_face", 0.0, width, height)
        box = Box(width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        return Classification("face", 0.9, width, height, [FaceResult(box, "face", 0.9)])

    def classify_legacy(self, pixels) -> str:
        return "face"


@dataclass
class InProcessWorker:
    address: str
    state: WorkerState  # its ``served`` counts the calls answered
    server: grpc.Server


@contextmanager
def in_process_worker(**config) -> Iterator[InProcessWorker]:
    """A worker serving in this process until the block ends; ``config`` are ServerConfig fields (limits,
    threads, ``data_roots``/``output_roots`` for reference mode)."""
    settings = ServerConfig(host="127.0.0.1", port=0, processes=1, **config)
    server, health, state = services(settings, "127.0.0.1:0", Metrics())
    classifier = StandInClassifier()
    state.classifier = lambda _remaining: classifier
    port = server.add_insecure_port("127.0.0.1:0")
    state.identity = f"in-process:{port}"
    server.start()
    set_health(health, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield InProcessWorker(f"127.0.0.1:{port}", state, server)
    finally:
        server.stop(0).wait()
