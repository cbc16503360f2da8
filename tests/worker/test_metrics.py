"""`worker serve --metrics-port`: /metrics reports what a run did, summed over the worker's processes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_status import rpc_status

from tests.support.images import jpeg
from tests.support.manifests import write_manifest
from tests.support.processes import free_port, run_batch, wait_for, worker_process
from tests.support.results import results
from tests.support.rpc import scrape, total
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.config import ConfigError, ServerConfig
from worker.metrics import FOLDER_ENV, exported
from worker.server import serve

pytestmark = pytest.mark.slow  # real worker and driver processes on loopback

def rotate_until_both_processes_answer(address: str) -> int:
    """Rotations on fresh connections until both processes of the worker have answered one; how many it took."""
    seen: set[str] = set()
    calls = 0
    while len(seen) < 2:
        assert calls < 64, f"only {seen} answered"
        with grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)]) as ch:
            reply = v1_grpc.ImageWorkerStub(ch).Rotate(v1.RotateRequest(image=jpeg(16, 16), degrees=90), timeout=30)
        seen.add(reply.worker)
        calls += 1
    return calls


def test_metrics_after_a_run_are_its_calls_summed_over_both_processes(tmp_path: Path):
    """A run of rotations, classifications and one unreadable image: calls by method, code and reason, bytes in
    and out, the model ready in the process that classified; a process killed and replaced keeps its counts."""
    rows = [{"id": f"rot{i}", "path": f"r{i}.jpg", "op": "rotate", "rotation": "90"} for i in range(4)]
    rows += [{"id": f"cls{i}", "path": f"c{i}.jpg", "op": "classify"} for i in range(2)]
    rows.append({"id": "bad", "path": "bad.jpg", "op": "rotate", "rotation": "90"})
    for i, row in enumerate(rows):
        (tmp_path / row["path"]).write_bytes(jpeg(40, 24, seed=i) if row["id"] != "bad" else b"not an image")
    write_manifest(tmp_path / "manifest.csv", rows)
    metrics_port = free_port()

    with worker_process("--metrics-port", str(metrics_port), processes=2) as w:
        extra = rotate_until_both_processes_answer(w.address)
        run_batch(tmp_path / "manifest.csv", "--worker", w.address, "--out", tmp_path / "out", "--quiet")
        done = {r["id"]: r for r in results(tmp_path / "out")}
        assert {i: r["status"] for i, r in done.items()} == {r["id"]: "error" if r["id"] == "bad" else "ok"
                                                               for r in rows}
        samples = scrape(metrics_port)

        calls = "imageworker_calls_total"
        assert total(samples, calls, method="Rotate", code="OK", reason="") == 4 + extra
        assert total(samples, calls, method="Rotate", code="INVALID_ARGUMENT", reason="UNSUPPORTED_FORMAT") == 1
        assert total(samples, calls, method="Classify", code="OK", reason="") == 2
        for op, method in (("rotate", "Rotate"), ("classify", "Classify")):
            mine = [r for r in done.values() if r["op"] == op]
            attempts = sum(int(r["attempts"]) for r in mine)
            assert total(samples, calls, method=method) == attempts + (extra if op == "rotate" else 0)
            assert total(samples, "imageworker_call_duration_seconds_count", method=method) == \
                total(samples, calls, method=method)
            sent_images = sum(int(r["attempts"]) * (tmp_path / r["path"]).stat().st_size for r in mine)
            extra_bytes = extra * len(jpeg(16, 16)) if op == "rotate" else 0
            assert total(samples, "imageworker_received_bytes_total", method=method) == sent_images + extra_bytes
        rotated = sum(p.stat().st_size for p in (tmp_path / "out").rglob("r*.jpg"))
        assert total(samples, "imageworker_sent_bytes_total", method="Rotate") > rotated  # images plus fields
        assert total(samples, "imageworker_images_in_flight") == 0
        assert total(samples, "imageworker_busy_refusals_total") == 0
        states = {labels["pid"]: value for name, labels, value in samples if name == "imageworker_model_state"}
        children = {str(c.pid) for c in psutil.Process(w.proc.pid).children()}
        assert set(states) == children and 2 in states.values()  # the process(es) that classified: ready

        # A process that dies: the parent replaces it; its counts stay in the sum, its gauges leave it.
        killed = next(pid for pid, state in states.items() if state == 2)
        psutil.Process(int(killed)).kill()
        assert wait_for(lambda: len({c.pid for c in psutil.Process(w.proc.pid).children()} - {int(killed)}) == 2)
        after = scrape(metrics_port)
        assert total(after, calls) == total(samples, calls)
        assert killed not in {labels["pid"] for name, labels, _ in after if name == "imageworker_model_state"}
        assert w.stop() == 0


def test_a_busy_refusal_is_counted_as_its_clients_saw_it():
    """One image call at a time, ten at once on one connection: the refusals the clients got are the metric's."""
    metrics_port = free_port()
    image = jpeg(1001, 1001)  # not whole MCUs: re-encoded, so each call keeps the one slot a while
    with worker_process("--threads", "1", "--max-concurrent-rpcs", "1", "--metrics-port", str(metrics_port)) as w, \
            grpc.insecure_channel(w.address) as ch:
        stub = v1_grpc.ImageWorkerStub(ch)

        def call(_) -> str:
            try:
                stub.Rotate(v1.RotateRequest(image=image, degrees=90), timeout=60)
                return "OK"
            except grpc.RpcError as e:
                # gRPC's own cap may refuse one first, before any servicer (no ErrorInfo): not ours to count
                status = rpc_status.from_call(e)
                return "WORKER_BUSY" if status and status.details else e.code().name

        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(call, range(10)))
        refused = codes.count("WORKER_BUSY")
        assert refused and refused + codes.count("OK") + codes.count("RESOURCE_EXHAUSTED") == 10
        samples = scrape(metrics_port)
        assert total(samples, "imageworker_busy_refusals_total", method="Rotate") == refused
        assert total(samples, "imageworker_calls_total", method="Rotate", code="RESOURCE_EXHAUSTED",
                     reason="WORKER_BUSY") == refused
        assert total(samples, "imageworker_calls_total", method="Rotate", code="OK") == codes.count("OK")
        assert total(samples, "imageworker_model_state") == 0  # no classify call: not loaded


def test_without_metrics_port_the_worker_listens_on_its_grpc_port_only():
    with worker_process(processes=2) as w:
        tree = [psutil.Process(w.proc.pid), *psutil.Process(w.proc.pid).children()]
        listening = {c.laddr.port for p in tree for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listening == {w.port}


def test_the_endpoint_and_its_folder_last_as_long_as_the_worker():
    port = free_port()
    with exported("127.0.0.1", port):
        folder = Path(os.environ[FOLDER_ENV])
        assert folder.is_dir() and scrape(port) == []  # no process has recorded anything yet
    assert FOLDER_ENV not in os.environ and not folder.exists()
    with pytest.raises(OSError):
        scrape(port)


def test_the_metrics_port_cannot_be_the_grpc_port():
    port = free_port()
    with pytest.raises(ConfigError, match="--metrics-port"):
        serve(ServerConfig(port=port, metrics_port=port))


def test_a_file_read_by_reference_counts_as_received(tmp_path: Path):
    data = jpeg(40, 24)
    (tmp_path / "a.jpg").write_bytes(data)
    metrics_port = free_port()
    with worker_process("--data-root", str(tmp_path), "--metrics-port", str(metrics_port)) as w, \
            grpc.insecure_channel(w.address) as ch:
        request = v1.RotateRequest(source=v1.ImageRef(path=str(tmp_path / "a.jpg")), degrees=90)
        reply = v1_grpc.ImageWorkerStub(ch).Rotate(request, timeout=30)
        samples = scrape(metrics_port)
    assert total(samples, "imageworker_received_bytes_total", method="Rotate") == len(data)
    assert total(samples, "imageworker_sent_bytes_total", method="Rotate") == reply.ByteSize()
