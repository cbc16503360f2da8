"""What a new user trips over, through the real `batch run`: an address where nothing listens or a name that does
not exist ends the wait after the start grace (not the whole connect timeout), saying which, and a worker that
starts while the driver waits is used; TLS by IP and by name with the documented certificates, --tls-server-name,
a failed handshake in one line; results that name the address called and say whether a JPEG was turned
losslessly; the start line of a run with nothing left to do."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from batch.channel import CONNECT_TIMEOUT, START_GRACE
from tests.support.certificates import make_pki
from tests.support.fleet import dns_server
from tests.support.images import jpeg
from tests.support.inprocess import run_cli
from tests.support.manifests import make_batch, write_manifest
from tests.support.processes import ROOT, free_port, run_batch, start_batch, worker_process
from tests.support.results import results
from worker.local import python_command


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


# --- TLS by address ---------------------------------------------------------------------------------------

OPERATIONS = ROOT / "docs" / "operations.md"


def certificate_recipe() -> str:
    """The openssl commands of docs/operations.md's TLS section, as a user would paste them."""
    text = OPERATIONS.read_text()
    start = text.index("```\n", text.index("A private CA, a worker certificate")) + 4
    return text[start:text.index("```", start)]


@pytest.mark.slow
def test_the_documented_certificates_are_accepted_by_ip_and_by_name(tmp_path: Path) -> None:
    """The recipe, run as written, makes a worker certificate a driver accepts by 127.0.0.1 and by localhost
    (and that names ::1); under mTLS too, with its client certificate"""
    from cryptography import x509

    made = subprocess.run(["bash", "-euo", "pipefail", "-c", certificate_recipe()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "worker.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    manifest = make_batch(tmp_path / "job", 3)
    with worker_process("--tls-cert", str(tmp_path / "worker.pem"), "--tls-key", str(tmp_path / "worker.key"),
                        "--tls-client-ca", str(tmp_path / "ca.pem")) as w:
        for host in ("127.0.0.1", "localhost"):
            done = run_batch(manifest, "--worker", f"{host}:{w.port}", "--out", tmp_path / host, "--tls-ca",
                             tmp_path / "ca.pem", "--tls-cert", tmp_path / "client.pem", "--tls-key",
                             tmp_path / "client.key", "--quiet")
            assert done.returncode == 0, (host, done.stderr)
            assert [r["status"] for r in results(tmp_path / host)] == ["ok"] * 3


@pytest.mark.slow
def test_tls_server_name_names_what_a_certificate_without_the_ip_bears_and_a_failure_is_one_line(
        tmp_path: Path) -> None:
    """A worker whose certificate names only elsewhere.example, called by IP: refused in one line that points to
    --tls-server-name, with none of gRPC's own log lines on either side (unless -vv); with --tls-server-name
    elsewhere.example every row is done"""
    pki = make_pki(tmp_path)
    manifest = make_batch(tmp_path / "job", 3)
    with worker_process("--tls-cert", str(pki.elsewhere_server_cert), "--tls-key",
                        str(pki.elsewhere_server_key)) as w:
        args = (manifest, "--worker", w.address, "--tls-ca", pki.ca)
        refused = run_batch(*args, "--out", tmp_path / "refused")
        assert refused.returncode == 2, refused.stderr
        assert error_line(refused.stderr) == (
            f"batch run: error: no worker answered at ipv4:{w.address}: TLS handshake failed: the worker's "
            "certificate does not bear the IP address given to --worker: connect by a name it bears, or name it "
            "with --tls-server-name NAME")
        assert len(refused.stderr.splitlines()) == 2, refused.stderr  # the start line and ours
        assert "Handshake failed" not in w.log.read_text()

        # Trusting another CA: gRPC's core logs each failed verification, unless quiet (the default).
        for extra, lines in (((), 2), (("-vv",), None)):
            other = run_batch(manifest, "--worker", w.address, "--tls-ca", pki.other_ca, "--out",
                              tmp_path / "other", *extra)
            assert other.returncode == 2, other.stderr
            assert "not signed by the CA in --tls-ca" in error_line(other.stderr)
            if lines is not None:
                assert len(other.stderr.splitlines()) == lines, other.stderr
            else:
                assert "Handshake failed" in other.stderr  # what the quiet default hides
        assert "Handshake failed" not in w.log.read_text()

        named = run_batch(*args, "--tls-server-name", "elsewhere.example", "--out", tmp_path / "named")
        assert named.returncode == 0, named.stderr
        assert [r["status"] for r in results(tmp_path / "named")] == ["ok"] * 3


# --- results that say who did what --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_worker_column_names_the_address_called(tmp_path: Path) -> None:
    """Two workers of one machine on 127.0.0.2 and 127.0.0.3, one port: the results and run.json tell them apart
    by the address called (their host name and port are the same), each with its process id"""
    port = free_port()
    manifest = make_batch(tmp_path, 24)
    with worker_process("--host", "127.0.0.2", port=port) as a, worker_process("--host", "127.0.0.3", port=port) as b:
        assert (a.address, b.address) == (f"127.0.0.2:{port}", f"127.0.0.3:{port}")
        # One row per call: 24 small rows would otherwise be two batch calls, which may both go to one address.
        done = run_batch(manifest, "--worker", f"{a.address},{b.address}", "--out", tmp_path / "out", "--quiet",
                         "--batch-rows", "1")
        pids = {a.address: a.proc.pid, b.address: b.proc.pid}
    assert done.returncode == 0, done.stderr
    named = {r["worker"] for r in results(tmp_path / "out")}
    assert {name.rpartition("/")[0] for name in named} == set(pids), named
    answered = json.loads((tmp_path / "out" / "run.json").read_text())["workers"]["answered"]
    assert set(answered) == named and sum(answered.values()) == 24
    for name in named:  # the process behind each address (one process each: the worker's own pid)
        address, _, pid = name.rpartition("/")
        assert int(pid) == pids[address]


def test_the_lossless_column_says_whether_a_jpeg_was_turned_losslessly(tmp_path: Path, live) -> None:
    """64x48 (whole 16-pixel MCUs) turns in the DCT domain: true; 65x47 (partial MCUs) is decoded and re-encoded:
    false; a PNG and a classify row leave it empty. libturbojpeg must be installed (the worker says so at start)"""
    from tests.support.images import png_bytes

    (tmp_path / "whole.jpg").write_bytes(jpeg(64, 48, seed=1))
    (tmp_path / "partial.jpg").write_bytes(jpeg(65, 47, seed=2))
    (tmp_path / "p.png").write_bytes(png_bytes((20, 10)))
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "whole", "path": "whole.jpg", "op": "rotate", "rotation": "90"},
        {"id": "partial", "path": "partial.jpg", "op": "rotate", "rotation": "90"},
        {"id": "png", "path": "p.png", "op": "rotate", "rotation": "90"},
        {"id": "faces", "path": "whole.jpg", "op": "classify"},
    ])
    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", tmp_path / "out", "--quiet",
                              "--results-format", "parquet")
    assert code == 0, stderr
    import pyarrow.parquet as pq

    table = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert {k: table[k]["lossless"] for k in table} == {"whole": True, "partial": False, "png": None,
                                                       "faces": None}
    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", tmp_path / "csv", "--quiet")
    assert code == 0, stderr
    assert {r["id"]: r["lossless"] for r in results(tmp_path / "csv")} == {"whole": "true", "partial": "false",
                                                                          "png": "", "faces": ""}


def test_a_run_with_nothing_left_to_do_says_so(tmp_path: Path, live) -> None:
    """The same command again: its first line says nothing runs and why, not "running 3 rows on no worker";
    a row that cannot run as written is counted apart"""
    manifest = make_batch(tmp_path, 3)
    run = ("run", manifest, "--worker", live.address, "--out", tmp_path / "out")
    assert run_cli(*run)[0] == 0
    code, _, stderr = run_cli(*run)
    assert code == 0, stderr
    assert stderr.splitlines()[0] == (f"batch: nothing to run: 3 of 3 rows already done (--restart does "
                                            f"them again); results in {tmp_path / 'out'}")
    with open(manifest, "a") as f:
        f.write("bad,img/00000.jpg,rotate,45\n")
    code, _, stderr = run_cli(*run)
    assert code == 1, stderr
    assert stderr.splitlines()[0].startswith("batch: nothing to run: 3 of 4 rows already done (--restart "
                                                   "does them again), 1 cannot run as written (the error column "
                                                   "says why); results in ")


# --- worker probe: grpcurl's lines with what the user has -------------------------------------------------------

PROBE = python_command("-m", "worker", "probe")


def probe(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*PROBE, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.slow
def test_worker_probe_checks_health_lists_services_and_rotates_a_file(tmp_path: Path) -> None:
    """`worker probe` against a real worker: SERVING, the services reflection lists, one Rotate whose image is
    written; over TLS by IP with --tls-server-name; a closed port is exit 1 with one line"""
    from PIL import Image

    (tmp_path / "in.jpg").write_bytes(jpeg(64, 48, seed=3))
    with worker_process() as w:
        done = probe(w.address, "--rotate", tmp_path / "in.jpg", "--out", tmp_path / "out.jpg")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{w.address}: SERVING (health check, ")
    assert lines[1] == ("services: ABImageService, grpc.health.v1.Health, grpc.reflection.v1alpha.ServerReflection, "
                        "imageworker.v1.ImageWorker")
    assert lines[2].startswith(f"rotated {tmp_path / 'in.jpg'} by 90: JPEG 48x64, ")
    assert ", lossless, by " in lines[2]
    assert Image.open(tmp_path / "out.jpg").size == (48, 64)

    pki = make_pki(tmp_path)
    with worker_process("--tls-cert", str(pki.elsewhere_server_cert), "--tls-key",
                        str(pki.elsewhere_server_key)) as w:
        tls = probe(w.address, "--tls-ca", pki.ca, "--tls-server-name", "elsewhere.example")
    assert tls.returncode == 0, tls.stderr
    assert tls.stdout.startswith(f"{w.address}: SERVING")

    nobody = f"127.0.0.1:{free_port()}"
    closed = probe(nobody, "--timeout", "1")
    assert closed.returncode == 1
    assert closed.stderr.splitlines() == [f"Error: {nobody}: no answer within 1 s (DEADLINE_EXCEEDED: Deadline "
                                          "Exceeded)"]
