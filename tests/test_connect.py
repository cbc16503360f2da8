"""Reaching the workers, through the real `batch run`: an address where nothing listens or a name that does not
exist ends the wait after the start grace (not the whole connect timeout), saying which; a worker that starts
while the driver waits is used."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from batch.channel import CONNECT_TIMEOUT, START_GRACE
from tests.support.fleet import dns_server
from tests.support.manifests import make_batch
from tests.support.processes import free_port, run_batch, start_batch, worker_process
from tests.support.results import results


def error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("batch run: error: "), stderr
    return lines[-1]


@pytest.mark.slow
def test_a_closed_port_ends_the_wait_after_the_grace_saying_refused(tmp_path: Path) -> None:
    """exit 2 with one error line naming the refused address; the wait is the grace, not the connect timeout
    (a bound on behaviour: 30 s would mean it waited the whole timeout); run.json records exit 2"""
    port = free_port()
    started = time.monotonic()
    done = run_batch(make_batch(tmp_path, 3), "--worker", f"127.0.0.1:{port}", "--out", tmp_path / "out")
    waited = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert error_line(done.stderr) == (
        f"batch run: error: no worker answered at ipv4:127.0.0.1:{port}: nothing listens at 127.0.0.1:{port} "
        f"(connection refused), still after {START_GRACE:.0f} s: is `worker serve` running there, and is the "
        "address right?")
    assert re.search(r"WARNING: nothing listens at .* \(connection refused\): waiting up to \d+ s more for a "
                     "worker to start", done.stderr), done.stderr
    assert waited < CONNECT_TIMEOUT
    assert json.loads((tmp_path / "out" / "run.json").read_text())["exit_code"] == 2


@pytest.mark.slow
def test_a_name_that_does_not_exist_ends_the_wait_saying_so(tmp_path: Path) -> None:
    """A name the (loopback) DNS server answers NXDOMAIN for: exit 2 naming it, not a connect timeout"""
    with dns_server() as (_records, dns_port):
        done = run_batch(make_batch(tmp_path, 3), "--worker", f"dns://127.0.0.1:{dns_port}/nosuch.test:50051",
                         "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr)
    assert "the name nosuch.test does not exist (NXDOMAIN), still after" in line, line
    assert "within" not in line


@pytest.mark.slow
def test_a_worker_started_after_the_driver_is_used(tmp_path: Path) -> None:
    """The driver starts first and is told nothing listens yet; the worker starts 3 s later on that port and
    every row is done by it"""
    port = free_port()
    log = tmp_path / "driver.log"
    driver = start_batch(make_batch(tmp_path, 6), "--worker", f"127.0.0.1:{port}", "--out", tmp_path / "out",
                         log=log)
    try:
        time.sleep(3)
        with worker_process(port=port):
            assert driver.wait(90) == 0, log.read_text()
    finally:
        driver.kill()
    text = log.read_text()
    assert f"nothing listens at 127.0.0.1:{port} (connection refused): waiting up to" in text
    rows = results(tmp_path / "out")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
