"""What users expect of a click tool and of a package they install: help flags, logging, environment,
exit codes, signals, optional extras, the demo wherever it runs and a worker that rotates at once.

Through the real commands: click's CliRunner where nothing is served, real `worker serve` and
`batch run` processes on loopback otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from batch import demo
from batch.cli import main as batch_main
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.cli import main as worker_main

ROOT = Path(__file__).resolve().parents[1]
# -P: never import a `batch.py` or `worker.py` from the folder a test runs in.
PYTHON = [sys.executable, "-P"]
BATCH = [*PYTHON, "-m", "batch"]
WORKER = [*PYTHON, "-m", "worker"]


def _photo(path: Path, size: tuple[int, int] = (1024, 768)) -> Path:
    """A noisy (slow to rotate, like a real photo) JPEG."""
    Image.effect_noise(size, 60).convert("RGB").save(path, quality=90)
    return path


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "op", "rotation", "output"])
        writer.writerows([f"r{i}", p, op, deg, f"out{i}.jpg" if op == "rotate" else ""]
                         for i, (p, op, deg) in enumerate(rows))
    return path


def _results(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, float]]:
    """`worker serve ARGS` (one process, a free port unless ARGS or env name one): (address, seconds to LISTENING)."""
    env = {**os.environ, **(env or {})}
    if "--port" not in args and "WORKER_SERVE_PORT" not in env:
        args = ("--port", "0", *args)
    started = time.monotonic()
    proc = subprocess.Popen([*WORKER, "serve", "--processes", "1", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split()[1], time.monotonic() - started
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


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


def test_worker_serve_options_come_from_the_environment() -> None:
    # A usage error read from the environment proves the variable is an option...
    result = CliRunner().invoke(worker_main, ["serve"], env={"WORKER_SERVE_TLS_CERT": "setup.cfg"})
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output
    # ...and a real worker binds the port the environment names, the command line winning over it.
    port = _free_port()
    with _serving(env={"WORKER_SERVE_PORT": str(port), "WORKER_SERVE_THREADS": "2"}) as (address, _):
        assert address == f"127.0.0.1:{port}"
    other = _free_port()
    with _serving("--port", str(other), env={"WORKER_SERVE_PORT": str(port)}) as (address, _):
        assert address == f"127.0.0.1:{other}"


# -- the worker rotates at once; the face model loads when a classify call needs it --------------------

def test_worker_serves_rotation_at_once_and_classify_waits_for_the_model(tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.jpg", (320, 240)).read_bytes()
    with _serving() as (address, _), grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = v1_grpc.ImageWorkerStub(channel)
        assert stub.Rotate(v1.RotateRequest(image=image, degrees=90), timeout=10).width == 240
        # The first classify call right after start-up waits for the model instead of failing.
        reply = stub.Classify(v1.ClassifyRequest(image=image), timeout=60)
        assert reply.label == "no_face" and reply.model


def test_rotate_only_run_never_loads_the_face_model(tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg", (320, 240))
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", "rotate", "90")] * 3)
    out = tmp_path / "out"
    run = subprocess.run([*BATCH, "run", str(manifest), "--out", str(out), "--quiet"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    log = (out / "worker.log").read_text()
    assert "serving imageworker.v1.ImageWorker" in log and "face model" in log
    assert " loaded in " not in log


# -- driver logging --------------------------------------------------------------------------------

def test_batch_run_verbose_logs_retries_and_busy_refusals(tmp_path: Path) -> None:
    for i in range(12):
        _photo(tmp_path / f"p{i}.jpg")
    manifest = _manifest(tmp_path / "m.csv", [(f"p{i}.jpg", "rotate", "90") for i in range(12)])
    with _serving("--threads", "1", "--max-concurrent-rpcs", "1") as (address, _):
        quiet = subprocess.run([*BATCH, "run", str(manifest), "--worker", address, "--out", str(tmp_path / "q"),
                                "--concurrency", "6"], capture_output=True, text=True, timeout=120)
        loud = subprocess.run([*BATCH, "run", str(manifest), "--worker", address, "--out", str(tmp_path / "v"),
                               "--concurrency", "6", "-v"], capture_output=True, text=True, timeout=120)
        # A deadline no call can meet: every attempt is retried, then the row fails.
        late = subprocess.run([*BATCH, "run", str(manifest), "--worker", address, "--out", str(tmp_path / "t"),
                               "--timeout", "0.001", "--retries", "1", "--log-level", "info"],
                              capture_output=True, text=True, timeout=120)
    assert quiet.returncode == loud.returncode == 0, (quiet.stderr, loud.stderr)
    assert " INFO: " not in quiet.stderr
    assert "busy" in loud.stderr and "connected: " in loud.stderr
    assert late.returncode == 1
    assert "retry 1 of 1" in late.stderr and "DEADLINE_EXCEEDED" in late.stderr


# -- signals: results flushed, 130 for SIGINT, 143 for SIGTERM --------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_batch_run_stopped_by_a_signal(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    _photo(tmp_path / "p.jpg", (1920, 1080))
    manifest = _manifest(tmp_path / "m.csv", [("p.jpg", "rotate", "90")] * 400)
    out = tmp_path / "out"
    with _serving("--threads", "1") as (address, _):
        proc = subprocess.Popen([*BATCH, "run", str(manifest), "--worker", address, "--out", str(out),
                                 "--concurrency", "1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                (out / "results.csv").is_file() and len((out / "results.csv").read_text().splitlines()) > 3):
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (stdout, stderr)
    done = _results(out)  # the rows finished before the signal, each with its output
    assert 3 <= len(done) < 400
    assert all(r["status"] == "ok" and Path(r["output"]).is_file() for r in done)
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] and run["exit_code"] == code
    assert run["counts"]["ok"] == len(done) and run["counts"]["not_run"] == 400 - len(done)
    assert "interrupted" in stdout


# -- optional extras -------------------------------------------------------------------------------

def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", "rotate", "90")])
    # As if pyarrow were not installed: the import system then finds no such module.
    without = "import sys; sys.modules['pyarrow'] = None; from batch.cli import main; main()"
    run = subprocess.run([*PYTHON, "-c", without, "run", str(manifest), "--results-format", "parquet",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
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
    run = subprocess.run([*BATCH, "run", "manifests/demo.csv"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = _results(tmp_path / "results" / "demo")
    assert [r["status"] for r in rows] == ["ok"] * 5
    assert {r["label"] for r in rows if r["op"] == "classify"} == {"unknown", "no_face"}
