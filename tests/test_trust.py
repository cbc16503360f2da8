"""Who can reach a worker, and what references let them do: another local user during a batch, named workers
serving references without client certificates, folders raced into links, idle metrics connections."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from tests.support.images import photo
from tests.support.manifests import write_manifest
from tests.support.processes import ROOT, start_batch, wait_for, worker_process
from worker.cli import main
from worker.local import python_command

AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening(processes: list[psutil.Process]) -> tuple[list[int], list[str]]:
    """The loopback-or-any TCP ports and the Unix socket paths these processes listen on."""
    ports, paths = set(), set()
    for p in processes:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    ports.add(c.laddr.port)
            for c in p.net_connections(kind="unix"):
                if c.laddr and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE):
                    paths.add(c.laddr)
        except psutil.NoSuchProcess:
            continue
    return sorted(ports), sorted(paths)


def _nobody_can_run_python() -> str | None:
    """Why the probe cannot run as nobody here, or None."""
    if os.geteuid() != 0:
        return "needs root, to run a probe as the user nobody (setpriv); run the suite as root, as CI does"
    probe = subprocess.run([*AS_NOBODY, *python_command("-c", "import grpc, worker.api")], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd="/")
    if probe.returncode != 0:
        return f"nobody cannot run this interpreter on this checkout: {probe.stderr.strip()[-300:]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_another_user_cannot_use_the_embedded_worker_while_a_batch_runs(tmp_path: Path, record_property) -> None:
    """As nobody during a batch: the embedded worker has no TCP port and its sockets refuse; the folder goes"""
    if reason := _nobody_can_run_python():
        pytest.skip(reason)
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "private").mkdir(parents=True)
    (data / "private").chmod(0o700)
    photo(640, 480, seed=1).save(data / "private" / "secret.png")
    photo(640, 480, seed=2).save(data / "p.png")
    # Rows enough to outlast the probe by far; the run is interrupted once the probe is done.
    manifest = write_manifest(data / "m.csv", [{"id": f"r{i}", "path": "p.png", "op": "rotate", "rotation": "90",
                                                "output": f"o/{i}.png"} for i in range(20000)])
    log = tmp_path / "batch.log"
    batch = start_batch(manifest, "--out", out, "--concurrency", "2", log=log)
    try:
        assert wait_for(lambda: "batch: running" in log.read_text() or batch.poll() is not None, 180), log.read_text()
        started = re.search(r"on (.*?), \d+ calls in flight", log.read_text())
        assert started and batch.poll() is None, log.read_text()
        named = re.search(r"Unix sockets in (\S+)\)", started.group(1))
        folder = Path(named.group(1)) if named else None
        ports, paths = _listening(_tree(batch.pid))
        mode = folder.stat().st_mode & 0o777 if folder else None
        plant = out / "o" / "planted.png"  # a row's output would do as well: the worker would replace it
        probe = subprocess.run(
            [*AS_NOBODY, *python_command("-m", "tests.support.intruder", "--secret", str(data / "private" /
                                                                                            "secret.png"),
                                         "--plant", str(plant)),
             *(f"--tcp={p}" for p in ports), *(f"--unix={p}" for p in paths)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd="/")
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        still_running = batch.poll() is None
        batch.send_signal(signal.SIGINT)
        code = batch.wait(120)
    finally:
        if batch.poll() is None:
            batch.kill()
    record_property("observed", f"start line: {started.group(0)}; TCP ports of the batch: {ports}; its sockets: "
                                f"{len(paths)} in a folder of mode {mode and oct(mode)}; as nobody: "
                                f"{seen['tried']}; exit {code} after SIGINT; socket folder left: "
                                f"{folder and folder.exists()}")
    assert still_running, "the batch ended before the probe did: give it more rows"
    for attempt in seen["tried"]:
        assert attempt["connect"] in ("EACCES", "EPERM"), attempt
        assert attempt["health"] != "SERVING" and attempt["rotate"] != "OK", attempt
    assert not plant.exists()
    assert not ports, f"the batch listens on TCP ports {ports}"
    assert folder is not None and paths and all(Path(p).parent == folder for p in paths), (folder, paths)
    assert mode == 0o700, oct(mode)
    assert code == 130, log.read_text()[-2000:]
    assert not folder.exists(), "the private socket folder outlived the run"


@pytest.mark.parametrize("mode", [0o755, 0o701, 0o770])
def test_a_socket_folder_others_may_enter_stops_the_worker(tmp_path: Path, mode: int) -> None:
    """worker serve --socket-dir on a folder others may enter: one line saying why, exit 2"""
    folder = tmp_path / "sockets"
    folder.mkdir()
    folder.chmod(mode)
    result = CliRunner().invoke(main, ["serve", "--socket-dir", str(folder), "--processes", "1"])
    assert result.exit_code == 2, result.output
    assert f"--socket-dir {folder} must belong to this user and be closed to everyone else" in result.output
    assert not any(folder.iterdir())


# --- named workers serving references -------------------------------------------------------------------------

def _serve(*args: str) -> subprocess.CompletedProcess:
    """`worker serve ARGS` as an operator runs it, for a configuration it refuses before serving."""
    return subprocess.run(python_command("-m", "worker", "serve", "--port", "0", "--processes", "1", *args),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["data root", "output root", "TLS without client certificates", "an address"])
def test_references_on_a_network_address_without_client_certificates_are_refused(tmp_path: Path, pki, case: str,
                                                                                   record_property) -> None:
    """worker serve --host 0.0.0.0 with roots and no --tls-client-ca: exit 2, one line naming what to add"""
    roots = {"output root": ["--output-root", str(tmp_path)]}.get(case, ["--data-root", str(tmp_path)])
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)] if case.startswith("TLS") else []
    host = "192.0.2.1" if case == "an address" else "0.0.0.0"  # refused before binding: TEST-NET-1 is never used
    done = _serve("--host", host, *roots, *tls)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    record_property("observed", f"exit {done.returncode}: {errors}")
    assert done.returncode == 2 and "LISTENING" not in done.stdout
    assert errors == [f"Error: --data-root/--output-root on {host} without client certificates would let anyone who "
                      "can reach the port read and overwrite files under those roots: require client certificates "
                      "(--tls-cert, --tls-key and --tls-client-ca), serve on loopback or --socket-dir, or add "
                      "--allow-unauthenticated-references"], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mTLS", "said so", "loopback", "no roots"])
def test_a_worker_serves_references_where_its_clients_are_known_or_the_operator_says_so(
        tmp_path: Path, pki, case: str, record_property) -> None:
    """mTLS, --allow-unauthenticated-references (warned), loopback, no roots: the worker serves"""
    args = {"mTLS": ["--host", "0.0.0.0", "--data-root", str(tmp_path), "--tls-cert", str(pki.server_cert),
                     "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)],
            "said so": ["--host", "0.0.0.0", "--data-root", str(tmp_path), "--allow-unauthenticated-references"],
            "loopback": ["--data-root", str(tmp_path), "--output-root", str(tmp_path)],
            "no roots": ["--host", "0.0.0.0"]}[case]
    with worker_process(*args) as w:
        log = w.log.read_text()
    warned = "anyone who can reach this address can read files under --data-root" in log
    record_property("observed", f"served at {w.address}; warned about references: {warned}")
    assert warned == (case == "said so"), log
