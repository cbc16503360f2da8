"""A fleet behind one DNS name, kept busy without tuning: stand-in workers 25 ms away on 127.0.0.2-5 and a DNS
server on loopback (tests/support/fleet.py), through the real `batch run`."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.fleet import FLEET_NAME, dns_server, stand_ins
from tests.support.manifests import make_batch
from tests.support.processes import BATCH, batch_env, free_port
from tests.support.results import results

pytestmark = pytest.mark.slow

DELAY = 0.025


def run(manifest: Path, out: Path, target: str, *extra: str, timeout: float = 120) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([*BATCH, "run", str(manifest), "--worker", target, "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True, timeout=timeout, env=batch_env())
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert all(r["status"] == "ok" for r in results(out))
    return wall, json.loads((out / "run.json").read_text())


def test_defaults_behind_one_name_adapt_up_and_use_every_worker(tmp_path: Path, record_property) -> None:
    """Three workers 25 ms away behind one DNS name, no --concurrency: the limit in flight grows past its start
    (8 per address) and every worker answers. How close the defaults come to a hand-tuned limit is a speed, so
    bench/bench_fleet.py measures it, not this test."""
    manifest = make_batch(tmp_path, 3000, size=16)
    port = free_port()
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with dns_server() as (records, dns_port), stand_ins(hosts, port, DELAY, tmp_path):
        records.addresses = hosts
        _, info = run(manifest, tmp_path / "out", f"dns://127.0.0.1:{dns_port}/{FLEET_NAME}:{port}")
    settings = info["settings"]
    record_property("observed", f"limit peaked at {settings['concurrency_peak']}; "
                                f"answered per worker {sorted(info['workers']['answered'].values())}")
    assert settings["concurrency_adaptive"] is True
    assert settings["concurrency_peak"] > 8 * len(hosts)
    assert len({w.split("/")[0] for w in info["workers"]["answered"]}) == len(hosts)


def test_a_worker_that_joins_the_name_mid_run_gets_calls(tmp_path: Path, record_property) -> None:
    """A fourth address added to the name 1 s into a run gets calls before the run ends"""
    manifest = make_batch(tmp_path, 3000, size=16)
    port = free_port()
    with dns_server() as (records, dns_port), stand_ins(["127.0.0.2", "127.0.0.5"], port, DELAY, tmp_path):
        records.addresses = ["127.0.0.2"]
        joined = threading.Timer(1.0, lambda: records.addresses.append("127.0.0.5"))
        joined.start()
        try:
            _, info = run(manifest, tmp_path / "out", f"dns://127.0.0.1:{dns_port}/{FLEET_NAME}:{port}",
                          "--resolve-every", "0.3")
        finally:
            joined.cancel()
    per_host: dict[str, int] = {}
    for worker, calls in info["workers"]["answered"].items():
        host = worker.split(":")[0]
        per_host[host] = per_host.get(host, 0) + calls
    record_property("observed", f"calls per worker: {per_host}")
    assert per_host.get("127.0.0.5", 0) > 100, per_host
