"""Overload: four drivers at --concurrency 64 against one worker that takes 4 calls at a time.

The worker must answer the excess with RESOURCE_EXHAUSTED instead of queueing
it (so its memory stays bounded by its in-flight limit, measured here), the
drivers must retry, and every row of every driver must end ok.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.manifests import make_batch
from tests.support.processes import serving, start_batch, tree_rss_mb, worker_process
from tests.support.results import by_id, results

pytestmark = pytest.mark.slow  # real worker processes on loopback

DRIVERS = 4
ROWS = 32
IN_FLIGHT = 4  # --threads 2, --max-concurrent-rpcs 4


@pytest.mark.timeout(300)
def test_four_drivers_at_concurrency_64_against_one_small_worker(tmp_path, record_property):
    """4 drivers x --concurrency 64 vs a worker taking 4 calls at a time: all rows ok, worker RSS bounded"""
    # 1001 px is not whole MCUs: rotated by decoding and re-encoding, so every call holds pixels in memory
    manifests = [make_batch(tmp_path / f"d{i}", ROWS, size=1001) for i in range(DRIVERS)]
    with worker_process("--threads", "2", "--max-concurrent-rpcs", str(IN_FLIGHT)) as w:
        baseline = tree_rss_mb(w.proc.pid)
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss_mb(w.proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        drivers = [start_batch(m, "--worker", w.address, "--out", m.parent / "out", "--concurrency", "64",
                               "--retries", "12", "--quiet", log=m.parent / "driver.log") for m in manifests]
        codes = [d.wait(240) for d in drivers]
        stop.set()
        sampler.join()
        alive = w.proc.poll() is None and serving(w.address)
    tables = [by_id(results(m.parent / "out")) for m in manifests]
    rows = [r for t in tables for r in t.values()]
    retried = sum(int(r["attempts"]) > 1 for r in rows)
    extra = sum(int(r["attempts"]) - 1 for r in rows)
    record_property("expected", "no crash; RESOURCE_EXHAUSTED answered and retried; every row ok; worker RSS bounded "
                                "by its 4 calls in flight")
    record_property("observed", f"exits {codes}; {sum(r['status'] == 'ok' for r in rows)}/{DRIVERS * ROWS} ok; "
                                f"{retried} rows retried ({extra} refused calls); worker RSS {baseline:.0f} MiB idle, "
                                f"{peak[0]:.0f} MiB peak (+{peak[0] - baseline:.0f} MiB)")
    assert alive, "the worker survived and still serves"
    assert codes == [0] * DRIVERS, [(m.parent / "driver.log").read_text()[-1500:] for m in manifests]
    assert len(rows) == DRIVERS * ROWS and all(r["status"] == "ok" for r in rows)
    assert retried > 0, "past 4 calls in flight the worker refuses, and the drivers retry"
    # One 1001x1001 RGB image is 3 MiB decoded and 3 more rotated; with 4 in flight a generous bound is
    # 4 x 64 MiB. 256 calls queued at once, as without the limit, would need several times that.
    assert peak[0] - baseline < IN_FLIGHT * 64
