"""The driver's retry schedule (batch.runner): ordinary failures back off from 1 s, busy refusals from 50 ms,
doubling to 1 s, and a row waits out busy refusals while the fleet answers, or for no longer than --retries ordinary
retries would take when it answers nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from batch.channel import Pool
from batch.concurrency import AdaptiveLimit
from batch.manifest import Row
from batch.results import Outcome
from batch.retry import backoff
from batch.runner import fan_out
from batch.settings import Settings
from tests.support.images import jpeg
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc


def test_ordinary_retries_double_from_one_second_up_to_the_cap_with_jitter():
    settings = Settings(timeout=1, retries=6)
    for retry, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 20), (9, 20)]:
        waits = [backoff(retry, settings) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (retry, min(waits), max(waits))


def test_busy_refusals_are_retried_within_milliseconds_at_first():
    settings = Settings(timeout=1, retries=6)
    first = [backoff(1, settings, busy=True) for _ in range(200)]
    assert all(0.025 <= w <= 0.05 for w in first)
    later = [backoff(12, settings, busy=True) for _ in range(200)]
    assert all(0.5 <= w <= 1 for w in later)  # capped short: a slot frees within a call's time


def test_busy_budget_is_what_the_ordinary_retries_would_wait_at_most_or_a_call_may_take():
    assert Settings(timeout=1, retries=6).busy_budget == 1 + 2 + 4 + 8 + 16 + 20
    # Never below a call's --timeout: other drivers' calls may hold the fleet's slots that long.
    assert Settings(timeout=90, retries=6).busy_budget == 90
    assert Settings(timeout=1, retries=0).busy_budget == 1


# --- busy refusals through a real gRPC server in this process ------------------------------------------------


class Crowded(v1_grpc.ImageWorkerServicer):
    """A worker whose slots others' calls hold: rows ``refuse`` are refused as busy for ``seconds`` from the first
    refusal (for good when None), the rest answered after ``delay``."""

    def __init__(self, refuse: set[str], seconds: float | None, delay: float = 0.02) -> None:
        self.refuse, self.seconds, self.delay = refuse, seconds, delay
        self.refused: list[float] = []

    async def Rotate(self, request, context):
        if str(request.degrees) in self.refuse and (
                self.seconds is None or not self.refused or time.monotonic() - self.refused[0] < self.seconds):
            self.refused.append(time.monotonic())
            rich = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="worker busy: test")
            rich.details.add().Pack(error_details_pb2.ErrorInfo(reason="WORKER_BUSY", domain="imageworker.v1"))
            await context.abort_with_status(rpc_status.to_status(rich))
        await asyncio.sleep(self.delay)
        return v1.RotateResponse(image=request.image, format="JPEG", width=1, height=1, worker="crowded",
                                 degrees=request.degrees)


def rows(folder: Path, degrees: Iterable[int]) -> Iterator[Row]:
    source = folder / "in.jpg"
    source.write_bytes(jpeg(16, 16))
    for i, d in enumerate(degrees):
        yield Row(line=i + 2, id=f"r{i}", path="in.jpg", op="rotate", rotation=str(d), output="",
                  input_path=source, degrees=d, output_path=folder / f"out{i}.jpg")


async def run_rows(servicer: Crowded, todo: Iterable[Row], settings: Settings,
                   outcomes: dict[str, Outcome] | None = None) -> dict[str, Outcome]:
    """``todo`` (consumed as the run goes, so it may look at ``outcomes``) run at two calls at a time."""
    server = grpc.aio.server()
    v1_grpc.add_ImageWorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = Pool([f"127.0.0.1:{port}"], 2)
    outcomes = {} if outcomes is None else outcomes
    try:
        await pool.connect()
        await fan_out(todo, pool, settings, lambda row, outcome: outcomes.__setitem__(row.id, outcome),
                      AdaptiveLimit(2, 2, adaptive=False))
    finally:
        await pool.close()
        await server.stop(None)
    return outcomes


def test_a_row_refused_while_the_fleet_answers_others_waits_its_turn(tmp_path: Path) -> None:
    # A busy budget of 0.3 s, busy waits of at most 30 ms; the row is refused for 0.5 s while the rest of the
    # run (rows of 20 ms, one at a time beside it) goes on until it has its outcome. It would fail only if no
    # other row were answered for 0.27 s.
    settings = Settings(timeout=0.3, retries=1, backoff_base=0.3, busy_backoff_base=0.01, busy_backoff_cap=0.03,
                        out_root=str(tmp_path), batch_rows=1)
    assert settings.busy_budget == 0.3
    servicer = Crowded({"90"}, seconds=0.5)
    outcomes: dict[str, Outcome] = {}

    def others() -> Iterator[int]:
        for _ in range(5000):  # a bound, should the row never get its outcome
            if "r0" in outcomes:
                return
            yield 180

    asyncio.run(run_rows(servicer, rows(tmp_path, itertools.chain([90], others())), settings, outcomes))
    assert all(o.status == "ok" for o in outcomes.values()), outcomes["r0"].error
    assert outcomes["r0"].attempts == len(servicer.refused) + 1 > 2
    assert servicer.refused[-1] - servicer.refused[0] > settings.busy_budget  # refused past the budget, not failed


def test_a_fleet_that_answers_nothing_fails_the_row_as_overloaded(tmp_path: Path) -> None:
    settings = Settings(timeout=0.2, retries=1, backoff_base=0.2, out_root=str(tmp_path))
    assert settings.busy_budget == 0.2
    outcomes = asyncio.run(run_rows(Crowded({"90"}, seconds=None), rows(tmp_path, [90]), settings))
    assert outcomes["r0"].status == "error" and outcomes["r0"].gave_up
    assert outcomes["r0"].error.startswith("worker overloaded after")
