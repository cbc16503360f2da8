"""Starting local servers: launched first, waited for later (worker.local), as `batch run` does with its embedded
worker so that the worker's start-up overlaps the driver's own (reading and indexing the manifest)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main
from tests.support.images import jpeg
from tests.support.manifests import write_manifest
from worker.cli import main as worker_main
from worker.local import LocalServer, LocalWorker, LocalWorkerError


def _server(tmp_path: Path, code: str, timeout: float = 30) -> LocalServer:
    return LocalServer([sys.executable, "-c", code], tmp_path / "server.log", startup_timeout=timeout)


def test_wait_serving_returns_the_addresses_the_child_printed(tmp_path):
    server = _server(tmp_path, "import time; print('LISTENING unix:/a unix:/b', flush=True); time.sleep(60)")
    server.launch()
    try:
        assert server.wait_serving() == "unix:/a"
        assert server.addresses == ["unix:/a", "unix:/b"]
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_a_child_that_exits_before_serving_is_an_error_with_its_code_and_log(tmp_path):
    server = _server(tmp_path, "import sys; sys.stderr.write('cannot bind'); sys.exit(3)")
    server.launch()
    with pytest.raises(LocalWorkerError, match=r"exited with code 3 before serving(.|\n)*cannot bind"):
        server.wait_serving()


def test_a_child_that_prints_something_else_is_an_error_naming_it(tmp_path):
    server = _server(tmp_path, "import time; print('hello', flush=True); time.sleep(60)")
    server.launch()
    with pytest.raises(LocalWorkerError, match="printed 'hello' instead of LISTENING"):
        server.wait_serving()
    assert server.proc.returncode is not None  # stopped


def test_a_child_that_stays_silent_is_stopped_after_the_timeout(tmp_path):
    server = _server(tmp_path, "import time; time.sleep(60)", timeout=0.2)
    server.launch()
    with pytest.raises(LocalWorkerError, match="did not serve within"):
        server.wait_serving()
    assert server.proc.returncode is not None



def test_the_supervisor_imports_before_it_forks_what_a_server_process_serves_with_and_no_numpy():
    # A module missing from SERVING_MODULES would be imported again by every process after the fork; numpy
    # (~50 ms) is imported only by the work that needs it (raw pixels, mode conversions, faces).
    code = textwrap.dedent("""
        import sys
        from worker import server
        from worker.config import ServerConfig
        from worker.metrics import Metrics
        server._import_serving_modules()
        before = set(sys.modules)
        server.services(ServerConfig(host="127.0.0.1", port=0, processes=1), "127.0.0.1:0", Metrics())
        print(sorted(m for m in set(sys.modules) - before if not m.startswith("grpc._")), "numpy" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]


def test_terminate_signals_a_serving_child_once_without_waiting_and_stop_then_waits_for_it(tmp_path):
    # `batch run` terminates its embedded worker before writing the results table, then stops it (waits).
    signals = tmp_path / "signals"
    code = ("import pathlib, signal, sys, time\n"
            "got = []\n"
            "signal.signal(signal.SIGTERM, lambda *a: got.append(1))\n"
            "print('LISTENING unix:/a', flush=True)\n"
            "while not got: time.sleep(0.01)\n"
            "time.sleep(0.3)\n"  # draining: still there when terminate returns
            f"pathlib.Path({str(signals)!r}).write_text(str(len(got)))\n"
            "sys.exit(7)\n")
    server = _server(tmp_path, code)
    server.launch()
    server.wait_serving()
    server.terminate()
    server.terminate()
    assert server.proc.poll() is None
    assert server.stop() == 7
    assert signals.read_text() == "1"


@pytest.mark.slow
def test_a_worker_stopped_before_it_was_waited_for_leaves_no_process_and_no_socket_folder(tmp_path):
    worker = LocalWorker(2, tmp_path / "worker.log", private=True)
    worker.launch()
    worker.stop()
    assert worker.proc.returncode is not None
    assert not worker.socket_dir.exists()


@pytest.mark.slow
def test_a_run_with_nothing_to_do_keeps_the_earlier_worker_log(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(48, 32))
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "1", "path": "a.jpg", "op": "rotate", "rotation": "90"}])
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    log = (out / "worker.log").read_text()
    assert "serving" in log  # the embedded worker's log of the run that used it
    again = CliRunner().invoke(main, ["run", str(manifest), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert (out / "worker.log").read_text() == log
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".worker")) == []



@pytest.mark.slow
def test_batch_run_launches_its_embedded_worker_before_it_loads_grpc(tmp_path):
    # The worker's start and grpc's import (~40 ms) overlap only if the launch comes first.
    (tmp_path / "a.jpg").write_bytes(jpeg(48, 32))
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "1", "path": "a.jpg", "op": "rotate", "rotation": "90"}])
    code = textwrap.dedent("""
        import sys
        from worker import local
        launch = local.LocalWorker.launch
        def recorded(self):
            print("grpc loaded at launch:", "grpc" in sys.modules)
            launch(self)
        local.LocalWorker.launch = recorded
        from batch.cli import main
        main(sys.argv[1:])
    """)
    done = subprocess.run([sys.executable, "-P", "-c", code, "run", str(manifest), "--out", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "grpc loaded at launch: False"
    assert (tmp_path / "out" / "rotated" / "a.jpg").is_file()


def test_the_worker_command_imports_the_face_training_code_only_for_train_and_evaluate():
    # `worker serve` starts with every embedded run: the training code's imports are not on that path.
    check = ("import sys; from click.testing import CliRunner; from worker.cli import main; "
             "r = CliRunner().invoke(main, sys.argv[1:]); assert r.exit_code == 0, r.output; "
             "print('worker.faces.training.commands' in sys.modules)")
    for args, loaded in ((["--version"], "False"), (["train", "--help"], "True"), (["evaluate", "--help"], "True")):
        done = subprocess.run([sys.executable, "-P", "-c", check, *args], capture_output=True, text=True, check=True)
        assert done.stdout.split() == [loaded], (args, done.stdout)
    listed = CliRunner().invoke(worker_main, ["--help"]).output.split("Commands:")[1]
    assert [line.split()[0] for line in listed.splitlines() if line.strip()] == ["evaluate", "probe", "serve", "train"]
