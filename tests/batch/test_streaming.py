"""Images of any size: RotateStream/ClassifyStream, the driver streaming file to file, limits on images.

The large images are made here: a 10000x10000 RGB scan as uncompressed TIFF
(286 MiB) and a 100 MP PNG of smooth gradients (small on disk, 286 MiB of
pixels decoded). Each test frees its arrays before the next is made.
"""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from PIL import Image

from batch import stream
from tests.support.faces import BUSH, held_out_photo, needs_lfw
from tests.support.images import jpeg
from tests.support.inprocess import in_process_worker
from tests.support.manifests import write_manifest
from tests.support.processes import free_port, kill, run_batch, start_batch, tree_rss_mb, wait_for, worker_process
from tests.support.results import by_id, results, stray_temporaries
from tests.support.rpc import reason
from worker import service
from worker.admission import Admission
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.errors import Busy

SIDE = 10_000
# Stated bounds (docs/operations.md, "Sizing memory"): the driver streams file to file whatever the size; a
# worker process holds the image, its pixels, the turned pixels and the new file at once.
DRIVER_PEAK_MB = 200
WORKER_GROWTH_PER_IMAGE = {"TIFF": 1600, "PNG": 1200}  # MiB over idle for one 100 MP RGB image (measured 1342, 767)


def scan(seed: int = 0) -> np.ndarray:
    """A 10000x10000 RGB scan's pixels (286 MiB): noise, so nothing about it compresses."""
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def gradients() -> np.ndarray:
    """100 MP of smooth, low-entropy RGB: a PNG of tens of MiB (streamed) that decodes to 286 MiB."""
    x = np.arange(SIDE, dtype=np.uint16)
    rgb = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
    rgb[..., 0] = x[None, :] // 40
    rgb[..., 1] = x[:, None] // 40
    rgb[..., 2] = np.random.default_rng(2).integers(0, 4, (SIDE, SIDE), dtype=np.uint8)  # 2 bits of noise
    return rgb


def save(pixels: np.ndarray, path: Path, fmt: str) -> Path:
    Image.fromarray(pixels).save(path, fmt, **({"compression": None} if fmt == "TIFF" else {}))
    return path


class Peaks:
    """Peak RSS (MiB) of a driver's tree and of a worker, sampled every 50 ms until ``stop``."""

    def __init__(self, driver: int, worker: int) -> None:
        self.driver = self.worker = 0.0
        self.worker_idle = psutil.Process(worker).memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(driver, worker), daemon=True)
        self._thread.start()

    def _run(self, driver: int, worker: int) -> None:
        while not self._stop.wait(0.05):
            try:
                self.driver = max(self.driver, tree_rss_mb(driver))
                self.worker = max(self.worker, tree_rss_mb(worker))
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rotate_through_batch(tmp_path: Path, image: Path, fmt: str) -> tuple[dict, Peaks]:
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "path": str(image), "op": "rotate",
                                                    "rotation": "90"}])
    out = tmp_path / "out"
    with worker_process() as w:  # the worker's defaults: streamed, not by reference
        driver = start_batch(manifest, "--out", out, "--worker", w.address, log=tmp_path / "batch.log")
        peaks = Peaks(driver.pid, w.proc.pid)
        driver.wait(600)
        peaks.stop()
    assert driver.returncode == 0, (tmp_path / "batch.log").read_text()
    row = by_id(results(out))["a"]
    assert row["status"] == "ok" and row["format"] == fmt and (row["width"], row["height"]) == (str(SIDE),) * 2
    assert not stray_temporaries(out)
    return row, peaks


def assert_turned(output: Path, pixels: np.ndarray) -> None:
    with Image.open(output) as img:
        assert img.size == (SIDE, SIDE)
        assert np.array_equal(np.asarray(img), np.rot90(pixels))


@pytest.mark.slow
@pytest.mark.parametrize("fmt, pixels", [("TIFF", scan), ("PNG", gradients)], ids=["300 MB TIFF", "100 MP PNG"])
def test_a_large_image_rotates_pixel_exact_within_the_memory_bounds(tmp_path, fmt, pixels):
    image = save(pixels(), tmp_path / f"image.{fmt.lower()}", fmt)
    assert image.stat().st_size > (300 * 10**6 if fmt == "TIFF" else stream.STREAM_MIN)  # streamed either way
    gc.collect()
    row, peaks = rotate_through_batch(tmp_path, image, fmt)
    print(f"{fmt}: driver peak {peaks.driver:.0f} MiB, worker {peaks.worker_idle:.0f} -> {peaks.worker:.0f} MiB")
    assert peaks.driver < DRIVER_PEAK_MB
    assert peaks.worker - peaks.worker_idle < WORKER_GROWTH_PER_IMAGE[fmt]
    assert_turned(Path(row["output"]), pixels())


@pytest.mark.slow
def test_a_stream_cut_by_a_killed_worker_is_retried_and_finishes(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6000, 6000, 3), dtype=np.uint8)
    image = save(pixels, tmp_path / "scan.tiff", "TIFF")  # 103 MiB
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "path": str(image), "op": "rotate",
                                                    "rotation": "90"}])
    out = tmp_path / "out"
    port = free_port()
    with worker_process("--processes", "1", port=port) as w:
        idle = tree_rss_mb(w.proc.pid)
        driver = start_batch(manifest, "--out", out, "--worker", w.address, log=tmp_path / "batch.log")
        # Killed while the image is coming in: the worker has taken some of it, not all.
        assert wait_for(lambda: tree_rss_mb(w.proc.pid) > idle + 30, 60, 0.02)
        kill(w)
    with worker_process("--processes", "1", port=port):
        assert driver.wait(300) == 0, (tmp_path / "batch.log").read_text()
    row = by_id(results(out))["a"]
    assert row["status"] == "ok" and int(row["attempts"]) >= 2
    assert not stray_temporaries(out)
    with Image.open(row["output"]) as img:
        assert np.array_equal(np.asarray(img), np.rot90(pixels))


def chunks(header, chunk_type, total: int, sent: list[int]):
    yield header
    for _ in range(total // 2**20):
        sent.append(1)
        yield chunk_type(data=bytes(2**20))


def test_an_image_over_max_image_mb_is_refused_before_its_bytes():
    """Refused on the stream's header (the driver's side of it: test_batch_run's over-the-limit rows)"""
    with in_process_worker(max_image_mb=16, max_message_mb=4) as w, grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        sent: list[int] = []
        header = v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=200 * 2**20)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.RotateStream(chunks(header, v1.RotateChunk, 200 * 2**20, sent), timeout=60))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(refused.value) == "IMAGE_TOO_LARGE" and "--max-image-mb" in refused.value.details()
    assert len(sent) < 100  # refused on the header: most of the 200 chunks were never sent


def test_streams_that_break_their_rules_end_with_stream_invalid(live, monkeypatch):
    # A stream that ends short is the client's mistake once gRPC has had CANCEL_GRACE to say it was cancelled
    # instead: here 0.05 s rather than the worker's 0.5 (the same in-process worker reads it).
    monkeypatch.setattr(service, "CANCEL_GRACE", 0.05)
    image = jpeg(640, 480)
    with grpc.insecure_channel(live.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        cases = {
            "longer than declared": [v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=len(image) - 1),
                                     v1.RotateChunk(data=image)],
            "shorter than declared": [v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=len(image) + 1),
                                      v1.RotateChunk(data=image)],
            "no request first": [v1.RotateChunk(data=image)],
            "the request twice": [v1.RotateChunk(request=v1.RotateRequest(), size=len(image))] * 2,
            "image bytes in the request": [v1.RotateChunk(request=v1.RotateRequest(image=image), size=len(image))],
        }
        for what, messages in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.RotateStream(iter(messages), timeout=30))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert reason(refused.value) == "STREAM_INVALID", what
        # And a well-formed stream, both RPCs, in 1 MiB chunks back.
        answer = list(stub.RotateStream(iter([v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=len(image)),
                                              v1.RotateChunk(data=image)]), timeout=30))
        assert answer[0].response.width == 480 and answer[0].size == sum(len(c.data) for c in answer[1:])
        faces = stub.ClassifyStream(iter([v1.ClassifyChunk(request=v1.ClassifyRequest(), size=len(image)),
                                          v1.ClassifyChunk(data=image[:1000]), v1.ClassifyChunk(data=image[1000:])]),
                                    timeout=60)
        assert (faces.width, faces.height) == (640, 480)


def test_admission_counts_image_bytes_in_flight():
    gate = Admission(limit=8, workers=8, bytes_limit=100)
    with gate.held(size=80):
        assert gate.image_bytes == 80
        with gate.held(size=20):  # exactly at the bound
            with pytest.raises(Busy, match="MiB of images in flight"):
                with gate.held(size=1):
                    pass
    assert gate.image_bytes == 0
    with gate.held(size=500):  # alone, an image over the bound is still admitted: never busy for good
        assert gate.admitted == 1


def test_small_files_stay_unary(tmp_path):
    small = tmp_path / "small.jpg"
    small.write_bytes(jpeg())
    big = tmp_path / "big.jpg"
    big.write_bytes(bytes(stream.STREAM_MIN))
    assert stream.streamed_size(small) is None and stream.streamed_size(tmp_path) is None
    assert stream.streamed_size(big) == stream.STREAM_MIN
    assert stream.streamed_size(tmp_path / "missing.jpg") is None  # the unary path names the problem



@pytest.mark.slow
@needs_lfw
def test_a_large_photo_is_classified_by_stream_with_boxes_in_its_own_pixels(tmp_path):
    """A 36 MP photo (streamed) of a held-out Bush: classified Bush, its box in the big image's coordinates"""
    face = Image.open(held_out_photo(BUSH, 1)).convert("RGB")
    big = face.resize((6000, 6000), Image.Resampling.BICUBIC)  # 24x: the detector scans a reduced copy
    big.save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size >= stream.STREAM_MIN
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "c", "path": "big.png", "op": "classify"}])
    with worker_process() as w:
        done = run_batch(manifest, "--worker", w.address, "--out", tmp_path / "out", "--quiet", timeout=180)
    assert done.returncode == 0, done.stderr
    (row,) = results(tmp_path / "out")
    assert row["label"] == BUSH and (row["width"], row["height"]) == ("6000", "6000")
    left, top, right, bottom = json.loads(row["faces"])[0]["box"]
    assert 1000 < right - left < 6000 and left >= 0 and bottom <= 6000  # a face of the upscaled photo, not of a copy
