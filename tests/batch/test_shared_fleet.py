"""Four drivers adapting their calls in flight against one small fleet: each other's load makes the workers
refuse calls as busy, and no driver may turn those refusals into failed rows."""

from __future__ import annotations

import pytest

from tests.support.manifests import make_batch
from tests.support.processes import start_batch, worker_process
from tests.support.results import results

pytestmark = pytest.mark.slow  # real worker processes on loopback

DRIVERS = 4
ROWS = 60
HOSTS = ("127.0.0.2", "127.0.0.3")


@pytest.mark.timeout(420)
def test_four_adaptive_drivers_share_two_small_workers(tmp_path) -> None:
    # 1001 px is not whole MCUs: decoded and encoded again, so each call keeps a worker thread busy a while.
    manifests = [make_batch(tmp_path / f"d{i}", ROWS, size=1001) for i in range(DRIVERS)]
    # Two calls per worker at a time, the rest refused as busy at once; the drivers start at 16 calls each.
    with worker_process("--host", HOSTS[0], "--threads", "1", "--max-concurrent-rpcs", "2") as a, \
            worker_process("--host", HOSTS[1], "--threads", "1", "--max-concurrent-rpcs", "2") as b:
        fleet = f"{a.address},{b.address}"
        # --retries 1: a busy budget of one second, so that refusals counted as failures would fail rows here.
        drivers = [start_batch(m, "--worker", fleet, "--out", m.parent / "out", "--retries", "1", "-v",
                               log=m.parent / "driver.log") for m in manifests]
        codes = [d.wait(360) for d in drivers]
    logs = [(m.parent / "driver.log").read_text() for m in manifests]
    rows = [r for m in manifests for r in results(m.parent / "out")]
    assert all(r["status"] == "ok" for r in rows), [(r["id"], r["error"]) for r in rows if r["status"] != "ok"][:3]
    assert len(rows) == DRIVERS * ROWS
    assert codes == [0] * DRIVERS, [log[-1500:] for log in logs]
    # The fleet stayed busy: both workers answered every driver, and refusals were retried, not failed.
    ports = {a.address.rsplit(":", 1)[1], b.address.rsplit(":", 1)[1]}
    for m in manifests:
        # A worker names itself host:port/pid, its host being the machine's name.
        answered = {r["worker"].rsplit("/", 1)[0].rsplit(":", 1)[1] for r in results(m.parent / "out")}
        assert answered == ports, answered
    assert any(int(r["attempts"]) > 1 for r in rows), "the workers refused calls as busy"
    assert all("worker busy" in log for log in logs), "each driver was refused, and retried (-v logs it)"
