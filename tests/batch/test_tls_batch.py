"""TLS and mTLS end to end: `batch run` against `worker serve --tls-…`, certificates made in the test.

A driver that speaks plaintext to a TLS worker, trusts the wrong CA, or has no
client certificate for an mTLS worker must be refused, with a message on the
driver's side that points at TLS.
"""

from __future__ import annotations

import datetime
import subprocess
import time

import pytest

from tests.support.certificates import issue_server_cert
from tests.support.manifests import make_batch
from tests.support.processes import BATCH, ROOT, batch_env, run_batch, worker_process
from tests.support.results import by_id, results

pytestmark = pytest.mark.slow  # real worker processes on loopback


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_batch(tmp_path_factory.mktemp("tls"), 12, classify_every=4)


@pytest.fixture(scope="module")
def tls_worker(pki):
    with worker_process("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--threads", "2") as w:
        yield w


@pytest.fixture(scope="module")
def mtls_worker(pki):
    with worker_process("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                        "--tls-client-ca", str(pki.ca), "--threads", "2") as w:
        yield w


def _all_ok(out) -> bool:
    rows = by_id(results(out))
    return len(rows) == 12 and all(r["status"] == "ok" for r in rows.values())


@pytest.mark.timeout(120)
def test_batch_over_tls(tls_worker, pki, manifest, tmp_path, record_property):
    """batch run --tls-ca against a TLS worker: every row ok"""
    done = run_batch(manifest, "--worker", f"localhost:{tls_worker.port}", "--tls-ca", pki.ca,
                     "--out", tmp_path / "out", "--quiet")
    record_property("observed", f"exit {done.returncode}: {done.stdout.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert _all_ok(tmp_path / "out")


@pytest.mark.timeout(120)
def test_batch_over_mtls(mtls_worker, pki, manifest, tmp_path, record_property):
    """batch run --tls-ca --tls-cert --tls-key against an mTLS worker: every row ok"""
    done = run_batch(manifest, "--worker", f"localhost:{mtls_worker.port}", "--tls-ca", pki.ca,
                     "--tls-cert", pki.client_cert, "--tls-key", pki.client_key, "--out", tmp_path / "out", "--quiet")
    record_property("observed", f"exit {done.returncode}: {done.stdout.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert _all_ok(tmp_path / "out")


REFUSALS = ["plaintext driver to a TLS worker", "driver trusting another CA", "no client certificate under mTLS"]
# What each refusal must say: the cause, and the option that fixes it.
REASONS = {
    REFUSALS[0]: "it probably requires TLS (give its CA with --tls-ca",
    REFUSALS[1]: "TLS handshake failed: the worker's certificate is not signed by the CA in --tls-ca",
    REFUSALS[2]: "it probably requires a client certificate (mTLS: --tls-cert and --tls-key)",
}


@pytest.fixture(scope="module")
def refusals(tls_worker, mtls_worker, pki, manifest, tmp_path_factory):
    """The three refused runs, started together."""
    folder = tmp_path_factory.mktemp("refused")
    args = {
        REFUSALS[0]: ["--worker", f"localhost:{tls_worker.port}"],
        REFUSALS[1]: ["--worker", f"localhost:{tls_worker.port}", "--tls-ca", str(pki.other_ca)],
        REFUSALS[2]: ["--worker", f"localhost:{mtls_worker.port}", "--tls-ca", str(pki.ca)],
    }
    procs = {name: subprocess.Popen([*BATCH, "run", str(manifest), *a, "--out", str(folder / str(i)), "--quiet"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    env=batch_env())
             for i, (name, a) in enumerate(args.items())}
    done = {}
    for i, (name, p) in enumerate(procs.items()):
        out, err = p.communicate(timeout=150)
        done[name] = (p.returncode, out, err, folder / str(i))
    return done


@pytest.mark.timeout(200)
@pytest.mark.parametrize("case", REFUSALS)
def test_wrong_tls_is_refused_with_a_clear_message(refusals, record_property, case):
    code, out, err, folder = refusals[case]
    message = (err.strip().splitlines() or [""])[-1]
    record_property("expected", f"refused at once: no row runs, exit 2, '{REASONS[case]}'")
    record_property("observed", f"exit {code}: {message}")
    assert code == 2, err
    assert all(r["status"] != "ok" for r in results(folder))
    assert REASONS[case] in message


# TLS files and certificates that cannot work: named at once, never a 30 s wait or gRPC's raw handshake text.
BAD_TLS = {
    "expired worker certificate": ("expired", [], "TLS handshake failed: the worker's certificate has expired"),
    "worker certificate for another name": (
        "elsewhere", [], "TLS handshake failed: the worker's certificate does not bear the name given to --worker"),
    "expired client certificate": (
        "mtls", ["--tls-cert", "expired_client_cert", "--tls-key", "expired_client_key"],
        "it does not accept our client certificate (--tls-cert has expired, or is not signed by the CA"),
    "client key not matching its certificate": (
        "mtls", ["--tls-cert", "client_cert", "--tls-key", "server_key"], "is not the key of --tls-cert"),
    "a key given as the client certificate": (
        "mtls", ["--tls-cert", "client_key", "--tls-key", "client_key"],
        "are not a PEM certificate and its private key"),
    "garbage as the CA": ("plain-ca", [], "holds no PEM certificate"),
}


@pytest.fixture(scope="module")
def bad_tls_workers(pki, mtls_worker, tmp_path_factory):
    # A worker refuses an expired certificate at start-up: this one expires while it serves.
    expires = time.time() + 8  # time enough for the worker to start on a loaded machine
    cert, key = issue_server_cert(pki, tmp_path_factory.mktemp("expiring"), datetime.timedelta(seconds=8))
    with worker_process("--tls-cert", str(cert), "--tls-key", str(key), "--threads", "1") as expired, \
            worker_process("--tls-cert", str(pki.elsewhere_server_cert), "--tls-key",
                           str(pki.elsewhere_server_key), "--threads", "1") as elsewhere:
        time.sleep(max(0.0, expires + 1 - time.time()))
        yield {"expired": expired, "elsewhere": elsewhere, "mtls": mtls_worker, "plain-ca": mtls_worker}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(BAD_TLS))
def test_unusable_tls_is_named(bad_tls_workers, pki, manifest, tmp_path, record_property, case):
    which, files, expected = BAD_TLS[case]
    ca = pki.ca
    if which == "plain-ca":
        ca = tmp_path / "garbage.pem"
        ca.write_text("not a certificate\n")
    args = [str(getattr(pki, f)) if i % 2 else f for i, f in enumerate(files)]
    done = run_batch(manifest, "--worker", f"localhost:{bad_tls_workers[which].port}", "--tls-ca", ca, *args,
                     "--out", tmp_path / "out", "--quiet", timeout=60)
    message = (done.stderr.strip().splitlines() or [""])[-1]
    record_property("expected", f"exit 2 within seconds: '{expected}'")
    record_property("observed", f"exit {done.returncode}: {message}")
    assert done.returncode == 2, done.stderr
    assert expected in message
