"""What users expect of a click tool and of a package they install: help flags, logging, environment,
exit codes, signals, optional extras, the demo wherever it runs and a worker that rotates at once.

Through the real commands: click's CliRunner where nothing is served, real `worker serve` and
`batch run` processes on loopback otherwise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from batch import demo
from batch.cli import main as batch_main
from tests.support.images import jpeg, photo
from tests.support.inprocess import StandInClassifier, in_process_worker, run_cli
from tests.support.manifests import write_manifest
from tests.support.processes import BATCH, ROOT, batch_env, run_batch, run_python, start_batch, worker_process
from tests.support.results import results
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.cli import main as worker_main
from worker.local import LocalWorker


def _rotations(path: Path, images: list[str]) -> Path:
    return write_manifest(path, [{"id": f"r{i}", "path": image, "op": "rotate", "rotation": "90",
                                  "output": f"out{i}.jpg"} for i, image in enumerate(images)])


# -- help, usage errors, environment ------------------------------------------------------------------

@pytest.mark.parametrize("main, args", [
    (batch_main, []), (batch_main, ["run"]), (batch_main, ["report"]), (batch_main, ["demo"]),
    (worker_main, []), (worker_main, ["serve"]),
])
def test_dash_h_is_help(main, args: list[str]) -> None:
    runner = CliRunner()
    short, long = runner.invoke(main, [*args, "-h"]), runner.invoke(main, [*args, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.output == long.output and "Usage:" in short.output


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "setup.cfg"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "setup.cfg"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "setup.cfg"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--port", "70000"], "--port"),
    (["--no-such-option"], "No such option"),
    (["--stream-idle-seconds", "0"], "--stream-idle-seconds"),
    (["--max-call-seconds", "inf"], "--max-call-seconds must be more than 0 and at most"),
    (["--keepalive-seconds", "nan"], "--keepalive-seconds must be more than 0 and at most"),
    (["--idle-connection-seconds", "1e12"], "--idle-connection-seconds must be more than 0 and at most"),
    (["--grace", "inf"], "--grace must be from 0 to"), (["--grace", "nan"], "--grace must be from 0 to"),
    (["--threads", "100000"], "--threads must be from 1 to 1024"),
    (["--processes", "5000"], "--processes and --threads must be from 1 to 1024"),
])
def test_worker_serve_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(worker_main, ["serve", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_batch_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["run", str(tmp_path / "missing.csv")], ["run", "m.csv", "--no-such-option"],
                 ["run", "m.csv", "--worker", "not an address"], ["report", str(tmp_path / "none")]):
        result = runner.invoke(batch_main, args, catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,op\na.jpg,classify\n")
    for option, value, bound in (("--batch-rows", "5000", "between 1 and 4096"),
                                 ("--concurrency", "100001", "between 1 and 100000")):
        result = runner.invoke(batch_main, ["run", str(manifest), option, value], catch_exceptions=False)
        assert result.exit_code == 2 and f"{option} must be {bound}" in result.output, result.output


@pytest.mark.slow
def test_worker_serve_options_come_from_the_environment(tmp_path: Path) -> None:
    # A usage error read from the environment proves the variable is an option...
    result = CliRunner().invoke(worker_main, ["serve"], env={"WORKER_SERVE_TLS_CERT": "setup.cfg"})
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output
    # ...and a real worker takes its limits from it, an option on the command line winning over it.
    image = jpeg(64, 64)  # 4,096 pixels
    env = {"WORKER_SERVE_MAX_PIXELS": "1000"}
    for args, refused in (((), True), (("--max-pixels", "100000"), False)):
        with LocalWorker(1, tmp_path / "worker.log", args=args, env=env) as w, \
                grpc.insecure_channel(w.address) as channel:
            call = v1_grpc.ImageWorkerStub(channel).Rotate
            if refused:
                with pytest.raises(grpc.RpcError, match="1,000|1000"):
                    call(v1.RotateRequest(image=image, degrees=90), timeout=10)
            else:
                assert call(v1.RotateRequest(image=image, degrees=90), timeout=10).width == 64


# -- the worker rotates at once; the face model loads when a classify call needs it --------------------

@pytest.mark.slow
def test_worker_serves_rotation_at_once_and_classify_waits_for_the_model() -> None:
    image = jpeg(320, 240)
    with worker_process() as w, grpc.insecure_channel(w.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = v1_grpc.ImageWorkerStub(channel)
        assert stub.Rotate(v1.RotateRequest(image=image, degrees=90), timeout=10).width == 240
        # The first classify call right after start-up waits for the model instead of failing.
        reply = stub.Classify(v1.ClassifyRequest(image=image), timeout=60)
        assert reply.label == "no_face" and reply.model


@pytest.mark.slow
def test_rotate_only_run_never_loads_the_face_model(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(320, 240))
    manifest = _rotations(tmp_path / "m.csv", ["a.jpg"] * 3)
    out = tmp_path / "out"
    run = run_batch(manifest, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    log = (out / "worker.log").read_text()
    assert "serving imageworker.v1.ImageWorker" in log and "face model" in log
    assert " loaded in " not in log


@pytest.mark.slow
def test_the_embedded_worker_ignores_worker_serve_options_in_the_environment(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(64, 48))
    manifest = _rotations(tmp_path / "m.csv", ["a.jpg"])
    env = dict(batch_env(), WORKER_SERVE_TLS_CERT=str(tmp_path / "none.pem"), WORKER_SERVE_PORT="1")
    run = subprocess.run([*BATCH, "run", str(manifest), "--out", str(tmp_path / "out"), "--quiet"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr


# -- driver logging --------------------------------------------------------------------------------

def test_batch_run_verbose_logs_retries_and_busy_refusals(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"p{i}.jpg").write_bytes(jpeg(64, 48, seed=i))
    photo(1920, 1080).save(tmp_path / "big.jpg", quality=90)  # milliseconds to turn: never within 1 ms
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"c{i}", "path": f"p{i}.jpg", "op": "classify"}
                                                   for i in range(6)])
    runs = {}
    for name, flags in (("quiet", ()), ("loud", ("-v",))):
        # Six calls at once for one slot, whose first call is held until another was refused as busy: both
        # runs see busy refusals, and only the verbose one logs them.
        gate = threading.Event()
        with in_process_worker(StandInClassifier(gate), threads=1, max_concurrent_rpcs=1) as w:
            w.open_after(gate, "WORKER_BUSY")
            # One row per call: six small photos would otherwise go as one batch, in one call.
            code, _, stderr = run_cli("run", manifest, "--worker", w.address, "--concurrency", "6",
                                      "--batch-rows", "1", "--out", tmp_path / name, *flags)
            runs[name] = code, stderr, w.recorder.reasons["WORKER_BUSY"]
    (quiet_code, quiet, quiet_refused), (loud_code, loud, loud_refused) = runs["quiet"], runs["loud"]
    # A deadline no call can meet: every attempt is retried, then the row fails.
    with in_process_worker() as w:
        late_code, _, late = run_cli("run", _rotations(tmp_path / "one.csv", ["big.jpg"]), "--worker", w.address,
                                     "--out", tmp_path / "t",
                                     "--timeout", "0.001", "--retries", "1", "--log-level", "info")
    assert quiet_code == loud_code == 0, (quiet, loud)
    assert quiet_refused > 0 and loud_refused > 0
    assert " INFO: " not in quiet
    assert "busy" in loud and loud.count("connected: ") == 1  # once, though this process ran `batch run` before
    assert late_code == 1
    assert "retry 1 of 1" in late and "DEADLINE_EXCEEDED" in late


# -- signals: results flushed, 130 for SIGINT, 143 for SIGTERM --------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_batch_run_stopped_by_a_signal(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    photo(1920, 1080).save(tmp_path / "p.jpg", quality=90)
    manifest = _rotations(tmp_path / "m.csv", ["p.jpg"] * 400)
    out = tmp_path / "out"
    with worker_process("--threads", "1") as w:
        proc = start_batch(manifest, "--worker", w.address, "--out", out, "--concurrency", "1", "--quiet",
                           log=tmp_path / "batch.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(results(out)) < 3:
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(60)
    output = (tmp_path / "batch.log").read_text()
    assert proc.returncode == code, output
    done = results(out)  # the rows finished before the signal, each with its output
    assert 3 <= len(done) < 400
    assert all(r["status"] == "ok" and Path(r["output"]).is_file() for r in done)
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] and run["exit_code"] == code
    assert run["counts"]["ok"] == len(done) and run["counts"]["not_run"] == 400 - len(done)
    assert "interrupted" in output


# -- optional extras -------------------------------------------------------------------------------

def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    manifest = _rotations(tmp_path / "m.csv", ["a.jpg"])
    # As if pyarrow were not installed: the import system then finds no such module.
    without = "import sys; sys.modules['pyarrow'] = None; from batch.cli import main; main()"
    run = run_python(without, "run", str(manifest), "--results-format", "parquet", "--out", str(tmp_path / "out"),
                     timeout=60)
    assert run.returncode == 2
    assert "pip install 'imagebatch[parquet]'" in run.stderr
    assert not (tmp_path / "out").exists()


# -- the demo, wherever it runs --------------------------------------------------------------------

def test_repository_demo_manifest_is_the_shipped_one() -> None:
    assert demo.is_demo(ROOT / "manifests" / "demo.csv")


def test_batch_demo_writes_the_manifest_and_its_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(batch_main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert demo.is_demo(tmp_path / "manifests" / "demo.csv")
    for name in demo.NAMES:
        Image.open(tmp_path / "manifests" / "demo-images" / name).verify()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "demo.csv").write_text("path,op\n")
    refused = runner.invoke(batch_main, ["demo", "other"])
    assert refused.exit_code == 2 and "is not the demo manifest" in refused.output


@pytest.mark.slow
def test_demo_runs_in_an_empty_folder_with_decoys(tmp_path: Path) -> None:
    """The README's command where there is no checkout: the demo is written, every row ok; and a `batch.py`
    and `worker.py` in that folder are never imported (by the driver or its embedded worker)."""
    for decoy in ("batch.py", "worker.py"):
        (tmp_path / decoy).write_text("raise SystemExit('decoy imported')\n")
    run = run_batch("manifests/demo.csv", cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = results(tmp_path / "results" / "demo")
    assert [r["status"] for r in rows] == ["ok"] * 5
    assert {r["label"] for r in rows if r["op"] == "classify"} == {"unknown", "no_face"}
