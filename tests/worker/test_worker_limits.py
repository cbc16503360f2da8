"""The worker's time and memory per call through real processes, and `worker serve`'s start-up checks (in this
process: they refuse before a port is bound).

Abandoned calls stop (deadline passed, client gone), answers a client never reads are bounded, the legacy
service has the same size limit, a port held by another worker is refused, and unusable TLS files, an empty
--host and a model that does not load are each named in one line (exit 2).
"""

from __future__ import annotations

import base64
import io
import re
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from google.rpc import error_details_pb2, status_pb2
from PIL import Image

from tests.support.certificates import Pki
from tests.support.images import jpeg, photo
from tests.support.inprocess import in_process_worker
from tests.support.processes import BIG_MESSAGES, ROOT, rotates, tree_rss_mb, worker_process
from worker.api import abimage_pb2, abimage_pb2_grpc
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.cli import main as worker_main
from worker.local import python_command


def served(log: str) -> dict[str, int]:
    """The calls a stopped worker says it answered (its last log line)."""
    found = re.search(r"stopped after serving (\{.*\})", log)
    assert found, log[-2000:]
    return eval(found.group(1))  # noqa: S307 - a dict literal the worker wrote


def slow_png() -> bytes:
    """A PNG whose rotation costs about 2.5 s of CPU (re-encoded at its own level 9 compression)."""
    buf = io.BytesIO()
    photo(3000, 2000).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


# --- time: work nobody waits for is stopped ----------------------------------------------------------------


@pytest.mark.slow  # real worker processes
def test_calls_expired_or_cancelled_while_waiting_for_a_turn_are_never_started(record_property):
    """Calls whose deadline passes (or whose client cancels) while they wait for the one thread never run."""
    slow = slow_png()
    with worker_process("--threads", "1", "--max-concurrent-rpcs", "8") as w, \
            grpc.insecure_channel(w.address, BIG_MESSAGES) as channel:
        rotate = v1_grpc.ImageWorkerStub(channel).Rotate
        busy = rotate.future(v1.RotateRequest(image=slow, degrees=90), timeout=60)
        time.sleep(0.5)  # it holds the only turn
        late = [rotate.future(v1.RotateRequest(image=jpeg(), degrees=90), timeout=0.5) for _ in range(4)]
        gone = rotate.future(v1.RotateRequest(image=jpeg(), degrees=90), timeout=60)
        time.sleep(0.3)
        gone.cancel()
        assert busy.result().width == 2000
        codes = Counter(f.exception().code() for f in late)
        w.stop()
        log = w.log.read_text()
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED: 4}
    assert served(log) == {"Rotate": 1}, "only the call that had its turn in time was worked on"
    assert log.count("failed: DEADLINE_EXCEEDED") == 4 and log.count("failed: CANCELLED") == 1, log[-3000:]
    record_property("observed", "5 calls queued behind a 2.5 s rotation: 4 expired, 1 cancelled, 0 started")


@pytest.mark.slow  # real worker processes
def test_a_call_abandoned_mid_decode_stops_within_its_deadline(record_property):
    """A rotation whose deadline passes while it re-encodes stops there: the worker does not finish it."""
    slow = slow_png()
    with worker_process("--threads", "1") as w, grpc.insecure_channel(w.address, BIG_MESSAGES) as channel:
        rotate = v1_grpc.ImageWorkerStub(channel).Rotate
        cpu = psutil.Process(w.proc.pid)
        before = sum(cpu.cpu_times()[:2])
        with pytest.raises(grpc.RpcError) as refused:
            rotate(v1.RotateRequest(image=slow, degrees=90), timeout=0.3)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(3)  # the whole rotation would be done by now
        spent = sum(cpu.cpu_times()[:2]) - before
        assert rotates(w.address)
        w.stop()
        log = w.log.read_text()
    # Past its deadline gRPC also marks the call inactive: either test may be the one that stops it.
    assert re.search(r"Rotate from .* failed: (DEADLINE_EXCEEDED|CANCELLED)", log), log[-3000:]
    assert served(log) == {"Rotate": 1}, "only the check after it was answered"
    assert spent < 1.5, f"the worker spent {spent:.1f} s of CPU on a call abandoned after 0.3 s (all of it: ~2.5 s)"
    record_property("observed", f"deadline 0.3 s into a ~2.5 s rotation: {spent:.2f} s of worker CPU in all")


# --- memory: answers a client never reads ---------------------------------------------------------------------


class ZeroWindowClient:
    """Raw HTTP/2 on a plain socket: gRPC calls sent, their answers never let in (stream window 0)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.sock.sendall(self.conn.data_to_send())
        self.reasons: Counter[str] = Counter()  # refusals by ErrorInfo reason ("" for gRPC's own cap)

    def rotate(self, image: bytes) -> None:
        body = v1.RotateRequest(image=image, degrees=90).SerializeToString()
        message = b"\0" + len(body).to_bytes(4, "big") + body
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [
            (":method", "POST"), (":scheme", "http"), (":path", "/imageworker.v1.ImageWorker/Rotate"),
            (":authority", self.address), ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        sent = 0
        while sent < len(message):  # as the worker's own windows allow
            room = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if room == 0:
                self.pump(0.05)
                continue
            self.conn.send_data(stream, message[sent:sent + room])
            sent += room
        self.conn.end_stream(stream)
        self.sock.sendall(self.conn.data_to_send())
        self.pump(0)

    def pump(self, wait: float) -> None:
        """Read what the worker sent (headers, trailers and settings; data stays at the window it has)."""
        self.sock.settimeout(wait or 0.001)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(10)
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                headers = dict(event.headers)
                if headers.get(b"grpc-status", b"0") != b"0":
                    self.reasons[_reason(headers.get(b"grpc-status-details-bin"))] += 1
        self.sock.sendall(self.conn.data_to_send())


def _reason(details: bytes | None) -> str:
    if details is None:
        return ""
    status = status_pb2.Status.FromString(base64.b64decode(details + b"=" * (-len(details) % 4)))
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def noise_jpeg(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.slow  # real worker processes
def test_answers_a_client_never_reads_are_bounded_and_other_clients_are_served(record_property):
    """400 calls on one connection that never opens its window: memory stops growing, the rest are refused busy."""
    image = noise_jpeg(800, 600)  # ~0.55 MiB, answered with as many bytes

    def send(client: ZeroWindowClient, calls: int) -> None:
        for _ in range(calls):
            client.rotate(image)
        for _ in range(20):
            client.pump(0.05)

    # --max-message-mb 4: answers waiting are bounded at 16 MiB per connection, 64 MiB per process.
    with worker_process("--max-message-mb", "4") as w:
        assert rotates(w.address)
        before = tree_rss_mb(w.proc.pid)
        client = ZeroWindowClient(w.address)
        send(client, 100)
        first = tree_rss_mb(w.proc.pid) - before
        send(client, 300)
        more = tree_rss_mb(w.proc.pid) - before - first
        assert rotates(w.address), "a client that reads its answers is still served"
        client.sock.close()
    unread = 300 * len(image) / 2**20
    # Unbounded, the worker would hold those 300 answers too (about twice their bytes: message and its slices).
    assert more < 60, f"worker grew {more:.0f} MiB more for {unread:.0f} MiB more of answers never read"
    # Refused as busy: WORKER_BUSY, or gRPC's own cap in a burst (RESOURCE_EXHAUSTED either way: retried).
    refused = sum(client.reasons.values())
    assert refused >= 300 and set(client.reasons) <= {"WORKER_BUSY", ""}, client.reasons
    record_property("observed", f"worker +{first:.0f} MiB after 100 calls never read, +{more:.0f} MiB more after "
                                f"300 more ({unread:.0f} MiB of answers); {refused} of 400 refused busy")


def test_legacy_service_has_the_same_message_limit():
    """ABImageService refuses raw pixels over --max-message-mb like ImageWorker (IMAGE_TOO_LARGE)."""
    side = 1100  # 1100 x 1100 grey = 1.15 MiB, over 1 MiB
    image = abimage_pb2.ABImage(color=False, data=bytes(side * side), width=side, height=side)
    with in_process_worker(max_message_mb=1) as w, grpc.insecure_channel(w.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            abimage_pb2_grpc.ABImageServiceStub(channel).RotateImage(
                abimage_pb2.ABImageRotateRequest(rotation=1, image=image), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1.2 MiB" in refused.value.details() and "--max-message-mb" in refused.value.details()


# --- operations: the port, TLS files, options ------------------------------------------------------------------


@pytest.mark.slow  # real worker processes
def test_a_port_another_worker_holds_is_refused(record_property):
    """A second `worker serve` on a port a worker serves exits 1 ('Address already in use'), taking nothing."""
    with worker_process(processes=2) as first:
        second = subprocess.run([*python_command("-m", "worker", "serve", "--port", str(first.port)),
                                 "--processes", "1"], capture_output=True, text=True, timeout=60)
        assert rotates(first.address)
    assert second.returncode == 1, second.stderr
    assert "Address already in use" in second.stderr and "LISTENING" not in second.stdout
    record_property("observed", second.stderr.strip().splitlines()[-1])


def _serve(*args: str | Path) -> subprocess.CompletedProcess:
    """`worker serve ARGS…` in this process (click's CliRunner), as a finished process: only for options it
    refuses at start-up, before it binds a port (an exception would be exit 1, not 2)."""
    result = CliRunner().invoke(worker_main, ["serve", "--processes", "1", "--port", "0", *map(str, args)])
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("case, files, expected", [
    ("key of another certificate", lambda p: (p.server_cert, p.client_key),
     "is not the private key of --tls-cert"),
    ("garbage as certificate", lambda p: (ROOT / "setup.cfg", p.server_key), "holds no PEM certificate"),
    ("a key given as certificate", lambda p: (p.server_key, p.server_key), "is a private key, not a certificate"),
    ("a certificate given as key", lambda p: (p.server_cert, p.server_cert), "is not a PEM private key"),
    ("expired certificate", lambda p: (p.expired_server_cert, p.expired_server_key), "has expired: valid from"),
])
def test_unusable_tls_files_are_named_in_one_line(pki: Pki, case: str, files, expected: str, record_property):
    """Unusable TLS files: `worker serve` names the file and the problem in one line, exit 2, no traceback."""
    cert, key = files(pki)
    result = _serve("--tls-cert", cert, "--tls-key", key)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    record_property("observed", result.stderr.strip())


def test_an_expired_certificate_is_named_with_its_dates(pki: Pki):
    """The refusal of an expired certificate quotes its validity dates as the certificate states them."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pki.expired_server_cert.read_bytes())
    result = _serve("--tls-cert", pki.expired_server_cert, "--tls-key", pki.expired_server_key)
    assert f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}" in result.stderr
    assert f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}" in result.stderr


@pytest.mark.slow  # real worker processes
def test_a_certificate_for_another_name_is_a_warning_naming_both(pki: Pki, record_property):
    """A certificate not naming --host serves, with a warning naming the host and the certificate's names."""
    with worker_process("--tls-cert", str(pki.elsewhere_server_cert), "--tls-key",
                        str(pki.elsewhere_server_key)) as w:
        log = w.log.read_text()
    warning = next(line for line in log.splitlines() if "WARNING" in line and "--tls-cert" in line)
    assert "elsewhere.example" in warning and "127.0.0.1" in warning
    record_property("observed", warning.split(": ", 1)[1])


@pytest.mark.parametrize("args, expected", [
    (("--host", ""), "--host is empty"),
    (("--model", ROOT / "setup.cfg"), "--model: "),
])
def test_an_empty_host_or_a_model_that_does_not_load_is_a_one_line_usage_error(args, expected):
    """`--host ''` and a --model that does not load: one line naming the option, exit 2."""
    result = _serve(*args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
