"""Several rows per call (batch/batching.py), through batch.run against the real servicers in-process: the
same results table as one row per call, each row settled, retried and counted alone; an older worker without
the batch calls, and a worker whose batches are smaller than the driver's, get the rows alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import batch
from batch.batching import BATCH_SECONDS
from tests.support.hostile import truncated
from tests.support.images import jpeg
from tests.support.inprocess import StandInClassifier, in_process_worker
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.service import ImageWorkerServicer

# What differs between two runs of the same rows: when, how fast, by which process.
VARYING = ["latency_ms", "worker", "attempts", "finished_at", "started_at"]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for i in range(12):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(40 + i, 24, seed=i))
    (tmp_path / "img" / "cut.jpg").write_bytes(truncated(jpeg(64, 64), 0.5))
    (tmp_path / "img" / "junk.jpg").write_bytes(b"not an image")
    big = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "img" / "big.png")  # over batching.SMALL: one call of its own
    return tmp_path


def mixed() -> pd.DataFrame:
    paths = [f"img/{i}.jpg" for i in range(12)] + ["img/cut.jpg", "img/junk.jpg", "img/missing.jpg", "img/big.png",
                                                   "img/0.jpg"]
    ops = ["rotate"] * 10 + ["classify"] * 2 + ["rotate"] * 5
    rotation = [90, 180, 270, "auto", 90, 45, 90, 90, 90, 90, "", ""] + [90] * 5
    return pd.DataFrame({"id": [f"r{k}" for k in range(len(paths))], "path": paths, "op": ops,
                         "rotation": rotation, "output": [""] * 16 + ["again.jpg"]})


def comparable(results: pd.DataFrame, out: Path) -> pd.DataFrame:
    table = results.drop(columns=[c for c in VARYING if c in results]).set_index("id")
    table["output"] = table["output"].map(lambda p: str(Path(p).relative_to(out)) if isinstance(p, str) and p
                                          else p)
    return table


def test_batched_rows_give_the_same_table_and_files_as_single_calls(here: Path) -> None:
    with in_process_worker() as w:
        batched = batch.run(mixed(), out=here / "batched", workers=[w.address])
        calls = dict(w.state.served)
        single = batch.run(mixed(), out=here / "single", workers=[w.address], batch_rows=1)
    assert calls.get("RotateBatch", 0) >= 1 and calls.get("ClassifyBatch", 0) >= 1
    assert calls["RotateBatch"] + calls["ClassifyBatch"] < 12  # 12 small rows to call (one twice over), fewer calls
    # Each good row once: ten small rotations in batches (r5's rotation is refused by the driver), the big one
    # alone, two classifications.
    assert calls.get("Rotate") == 11 and calls.get("Classify") == 2
    assert comparable(batched, here / "batched").equals(comparable(single, here / "single"))
    reasons = dict(zip(batched["id"], batched["reason"], strict=True))
    assert (reasons["r5"], reasons["r12"], reasons["r13"], reasons["r14"]) == (
        "INVALID_ROW", "CORRUPT_IMAGE", "UNSUPPORTED_FORMAT", "INPUT_NOT_FOUND")
    assert (batched.set_index("id").loc[["r12", "r13"], "attempts"] == 1).all()  # permanent: never retried
    written = [Path(p) for p in batched["output"] if isinstance(p, str) and p]
    assert len(written) == 11
    for rotated in written:  # byte for byte what single calls wrote
        assert rotated.read_bytes() == (here / "single" / rotated.relative_to(here / "batched")).read_bytes()


class OlderWorker(v1_grpc.ImageWorkerServicer):
    """A worker from before the batch calls: Rotate and Classify only (the rest UNIMPLEMENTED, as grpc does)."""

    def __init__(self, current: ImageWorkerServicer) -> None:
        self.Rotate, self.Classify = current.Rotate, current.Classify


def test_an_older_worker_gets_one_row_per_call(here: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from worker.service import WorkerState

    with in_process_worker() as w, ThreadPoolExecutor(4) as threads:
        server = grpc.server(threads)
        state: WorkerState = w.state
        v1_grpc.add_ImageWorkerServicer_to_server(OlderWorker(ImageWorkerServicer(state)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            results = batch.run(mixed(), out=here / "out", workers=[f"127.0.0.1:{port}"])
        finally:
            server.stop(0).wait()
        assert "RotateBatch" not in w.state.served and w.state.served["Rotate"] == 11
    statuses = results.set_index("id")["status"]
    assert (statuses == "ok").sum() == 13 and (results["attempts"] <= 2).all()


def test_a_worker_with_smaller_batches_gets_the_rows_alone_then_in_smaller_batches(here: Path) -> None:
    frame = pd.DataFrame({"path": [f"img/{i % 12}.jpg" for i in range(64)], "op": "rotate", "rotation": 90,
                          "output": [f"o{i}.jpg" for i in range(64)]})
    with in_process_worker(max_batch_items=2) as w:
        results = batch.run(frame, out=here / "out", workers=[w.address], concurrency=1)
    assert (results["status"] == "ok").all() and (results["attempts"] == 1).all()
    # 16 rows refused as a batch go alone; the batches after them halve until the worker takes them.
    assert w.state.served["Rotate"] == 64 and w.state.served.get("RotateBatch", 0) >= 1


def test_a_busy_batch_has_each_row_retried_alone(here: Path) -> None:
    gate = threading.Event()
    frame = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(8)], "op": "classify"})
    with in_process_worker(StandInClassifier(gate), max_concurrent_rpcs=1, threads=1) as one_slot:
        one_slot.open_after(gate, "WORKER_BUSY")  # the first batch holds the only slot until another is refused
        results = batch.run(frame, out=here / "out", workers=[one_slot.address], concurrency=4, batch_rows=2)
    assert (results["status"] == "ok").all() and (results["label"] == "face").all()
    assert results["attempts"].sum() > 8  # refused as busy (WORKER_BUSY), each row retried, then answered


def test_the_rows_of_one_refused_batch_cut_the_limit_once() -> None:
    from batch.concurrency import AdaptiveLimit

    limit = AdaptiveLimit(100, 100)
    batch_refusal, other = object(), object()
    for _ in range(16):  # each row of the batch reports the one error its call failed with
        limit.refused(batch_refusal)
    assert limit.limit == pytest.approx(90)
    limit.refused(other)
    limit.refused()
    assert limit.limit == pytest.approx(90 * 0.9 * 0.9)


class CostlyClassifier(StandInClassifier):
    """The stand-in, taking longer per image than a full batch is sized to (a face search on a photo)."""

    def classify(self, data: bytes, max_pixels: int):
        time.sleep(1.5 * BATCH_SECONDS)
        return super().classify(data, max_pixels)


def test_costly_rows_go_one_per_call_so_no_process_holds_a_lump_of_them(here: Path) -> None:
    frame = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(6)], "op": "classify"})
    with in_process_worker(CostlyClassifier()) as w:
        results = batch.run(frame, out=here / "out", workers=[w.address], concurrency=1)
    assert (results["label"] == "face").all()
    assert w.state.served["ClassifyBatch"] == w.state.served["Classify"] == 6


def test_cheap_classify_rows_go_alone_until_answers_show_them_cheap_then_in_batches(here: Path) -> None:
    frame = pd.DataFrame({"path": [f"img/{i % 12}.jpg" for i in range(96)], "op": "classify"})
    with in_process_worker() as w:
        results = batch.run(frame, out=here / "out", workers=[w.address], concurrency=2)
    assert (results["status"] == "ok").all()
    assert w.state.served["Classify"] == 96 and w.state.served["ClassifyBatch"] < 96 - 16
