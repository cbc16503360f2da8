"""Who can reach a worker, and what references let them do: another local user during a batch, named workers
serving references without client certificates, folders raced into links, idle metrics connections."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from click.testing import CliRunner
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support import intruder
from tests.support.images import jpeg, photo
from tests.support.manifests import write_manifest
from tests.support.processes import ROOT, free_port, start_batch, wait_for, worker_process
from tests.support.rpc import scrape
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.cli import main
from worker.local import LocalServer, python_command
from worker.scrape import SCRAPE_CONNECTIONS, SCRAPE_READ_TIMEOUT

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


@pytest.fixture
def as_nobody() -> Iterator[list[str] | str]:
    """The intruder's command as the user nobody, from a copy in a public folder, or why it cannot run here.

    The copy and a base interpreter in isolated mode make the probe independent of the permissions of the
    checkout and its virtual environment (a CI checkout may live in a private folder)."""
    if os.geteuid() != 0:
        yield "needs root, to run a probe as the user nobody (setpriv); run the suite as root, as CI does"
        return
    if shutil.which("setpriv") is None:
        yield "needs setpriv (util-linux) to run a probe as the user nobody"
        return
    public = Path(tempfile.mkdtemp(prefix="imagebatch-intruder-"))
    try:
        public.chmod(0o755)
        script = public / "intruder.py"
        shutil.copyfile(intruder.__file__, script)
        script.chmod(0o644)
        for python in dict.fromkeys(filter(None, [os.path.realpath(sys.executable), shutil.which("python3")])):
            if subprocess.run([*AS_NOBODY, python, "-I", "-c", "import socket"], capture_output=True,
                              cwd="/").returncode == 0:
                yield [*AS_NOBODY, python, "-I", str(script)]
                break
        else:
            yield "no Python interpreter here that the user nobody may run"
    finally:
        shutil.rmtree(public)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_another_user_cannot_use_the_embedded_worker_while_a_batch_runs(tmp_path: Path, stop: signal.Signals,
                                                                        as_nobody: list[str] | str,
                                                                        record_property) -> None:
    """As nobody during a batch: the embedded worker has no TCP port and its sockets refuse; the folder goes"""
    if isinstance(as_nobody, str):
        pytest.skip(as_nobody)
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
            [*as_nobody, "--secret", str(data / "private" / "secret.png"), "--plant", str(plant),
             *(f"--tcp={p}" for p in ports), *(f"--unix={p}" for p in paths)],
            capture_output=True, text=True, timeout=120, cwd="/")
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        still_running = batch.poll() is None
        batch.send_signal(stop)
        code = batch.wait(120)
        # The worker goes with its driver, however that ends, and takes its folder with it.
        gone = wait_for(lambda: not folder.exists(), 60) if folder else False
    finally:
        if batch.poll() is None:
            batch.kill()
    record_property("observed", f"start line: {started.group(0)}; TCP ports of the batch: {ports}; its sockets: "
                                f"{len(paths)} in a folder of mode {mode and oct(mode)}; as nobody: "
                                f"{seen['tried']}; exit {code} after {stop.name}; socket folder removed: {gone}")
    assert still_running, "the batch ended before the probe did: give it more rows"
    for attempt in seen["tried"]:
        assert attempt["connect"] in ("EACCES", "EPERM"), attempt
        assert attempt["health"] != "SERVING" and attempt["rotate"] != "OK", attempt
    assert not plant.exists()
    assert not ports, f"the batch listens on TCP ports {ports}"
    assert folder is not None and paths and all(Path(p).parent == folder for p in paths), (folder, paths)
    assert mode == 0o700, oct(mode)
    assert code == (-stop if stop == signal.SIGKILL else 128 + stop), log.read_text()[-2000:]
    assert gone, "the private socket folder outlived the run"


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_an_existing_socket_folder_stops_the_worker(tmp_path: Path, mode: int) -> None:
    """worker serve --socket-dir on a folder that exists (whoever made it, whatever its mode): exit 2, one line"""
    folder = tmp_path / "sockets"
    folder.mkdir()
    folder.chmod(mode)
    result = CliRunner().invoke(main, ["serve", "--socket-dir", str(folder), "--processes", "1"])
    assert result.exit_code == 2, result.output
    assert f"--socket-dir {folder} already exists: name a folder for the worker to make" in result.output
    assert folder.exists() and not any(folder.iterdir())


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


# --- an output's folder swapped for a link between the check and its making --------------------------------------

# `worker serve` with an audit hook (PEP 578) that, at the first file event under $SWAP_ROOT after a request's
# check (the worker opening or making anything there), puts a link to $SWAP_TO where the folder $SWAP_NAME is
# (moving the folder aside if it exists): the race of a local user, at the worst moment, every time.
SWAPPING_WORKER = """
import os, sys
root, name, to = os.environ["SWAP_ROOT"], os.environ["SWAP_NAME"], os.environ["SWAP_TO"]
done = []
def hook(event, args):
    if done or event not in ("open", "os.mkdir") or not isinstance(args[0], str) or not args[0].startswith(root):
        return
    done.append(event)
    target = os.path.join(root, name)
    if os.path.isdir(target):
        os.rename(target, target + ".held")
    os.symlink(to, target)
sys.addaudithook(hook)
from worker.cli import main
sys.argv[0] = "worker"
main()
"""


def _exchange(a: Path, b: Path) -> str | None:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE); why it failed, or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _reason(error: grpc.RpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(error).details[0].Unpack(info)
    return info.reason


@pytest.mark.slow
@pytest.mark.parametrize("case", ["an existing folder", "a folder being made"])
def test_a_folder_swapped_for_a_link_after_the_check_is_refused_and_nothing_is_made_outside(
        tmp_path: Path, case: str, record_property) -> None:
    """An output's folder turned into a link to elsewhere after the check: OUTSIDE_ROOTS, nothing made outside"""
    data, out, elsewhere = tmp_path / "data", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (data, out, elsewhere):
        folder.mkdir()
    (data / "p.jpg").write_bytes(jpeg(32, 32))
    if case == "an existing folder":
        (out / "swap").mkdir()
    env = {**os.environ, "SWAP_ROOT": str(out), "SWAP_NAME": "swap", "SWAP_TO": str(elsewhere)}
    command = python_command("-c", SWAPPING_WORKER, "serve", "--port", "0", "--processes", "1",
                             "--data-root", str(data), "--output-root", str(out))
    request = v1.RotateRequest(degrees=90, source=v1.ImageRef(path=str(data / "p.jpg")),
                               destination=v1.ImageRef(path=str(out / "swap" / "sub" / "x.jpg")))
    with LocalServer(command, tmp_path / "worker.log", env=env) as w, grpc.insecure_channel(w.address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            v1_grpc.ImageWorkerStub(channel).Rotate(request, timeout=30)
    record_property("observed", f"{e.value.code().name} {_reason(e.value)}: {e.value.details()}; made outside: "
                                f"{sorted(p.name for p in elsewhere.rglob('*'))}")
    assert (out / "swap").is_symlink(), "the hook did not swap the folder: the test proves nothing"
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(e.value) == "OUTSIDE_ROOTS", e.value
    assert not any(elsewhere.iterdir())
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_folder_swapped_back_and_forth_during_writes_never_leads_outside(tmp_path: Path, record_property) -> None:
    """A thread swaps an output folder and a link to elsewhere while 300 writes go there: OK or OUTSIDE_ROOTS"""
    data, out, elsewhere = tmp_path / "data", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (data, out, elsewhere):
        folder.mkdir()
    (data / "p.jpg").write_bytes(jpeg(32, 32))
    swap, link = out / "swap", out / "link"
    swap.mkdir()
    link.symlink_to(elsewhere)
    if problem := _exchange(swap, link):
        pytest.skip(f"renameat2(RENAME_EXCHANGE) is not available here: {problem}")
    stop = threading.Event()

    def swapper() -> None:  # "swap" is the folder, then the link, then the folder..., until told to stop
        while not stop.is_set():
            _exchange(swap, link)

    answers: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}  # one message of each kind
    with worker_process("--data-root", str(data), "--output-root", str(out)) as w, \
            grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        thread = threading.Thread(target=swapper)
        thread.start()
        try:
            for i in range(300):
                request = v1.RotateRequest(degrees=90, source=v1.ImageRef(path=str(data / "p.jpg")),
                                           destination=v1.ImageRef(path=str(swap / f"d{i % 7}" / f"{i}.jpg")))
                try:
                    stub.Rotate(request, timeout=30)
                    answers["OK"] += 1
                except grpc.RpcError as e:
                    kind = f"{e.code().name} {_reason(e) if e.code() != grpc.StatusCode.INTERNAL else ''}"
                    answers[kind] += 1
                    details.setdefault(kind, e.details())
        finally:
            stop.set()
            thread.join()
        log = w.log.read_text()
    record_property("observed", f"{dict(answers)}; made outside: {sorted(p.name for p in elsewhere.rglob('*'))}")
    assert set(answers) <= {"OK", "PERMISSION_DENIED OUTSIDE_ROOTS"}, (answers, details, log[-3000:])
    assert answers["PERMISSION_DENIED OUTSIDE_ROOTS"], "no call met the link: the race was not run"
    assert not any(elsewhere.iterdir())
    assert "Traceback" not in log


# --- idle connections to the metrics port ----------------------------------------------------------------------

def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_idle_connections_to_the_metrics_port_hold_a_bounded_number_of_threads(record_property) -> None:
    """50 idle connections to --metrics-port: the parent's threads stay bounded, each is closed, /metrics answers"""
    metrics_port = free_port()
    with worker_process("--metrics-port", str(metrics_port), processes=2) as w, contextlib.ExitStack() as idle:
        parent = psutil.Process(w.proc.pid)
        assert scrape(metrics_port)
        before = parent.num_threads()
        sockets = [idle.enter_context(socket.create_connection(("127.0.0.1", metrics_port), timeout=10))
                   for _ in range(50)]
        peak, until = before, time.monotonic() + 2
        while time.monotonic() < until:  # the threads a connection gets start at once
            peak = max(peak, parent.num_threads())
            time.sleep(0.05)
        closed = sum(_closed_by_peer(s, SCRAPE_READ_TIMEOUT + 30) for s in sockets)
        samples = scrape(metrics_port)  # the idle connections still open on this side
        after = parent.num_threads()
    record_property("observed", f"threads of the parent: {before} before, at most {peak} with 50 idle "
                                f"connections, {after} after; {closed} of 50 closed by the worker; /metrics answered "
                                f"{len(samples)} samples")
    assert peak <= before + SCRAPE_CONNECTIONS, (before, peak)
    assert closed == 50
    assert samples and after <= before + 1, (before, after)
