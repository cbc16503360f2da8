"""Calls and connections a client leaves hanging, over real gRPC with generated stubs and no deadline: streams
that stop sending, trickle, or are cancelled; connections that go quiet or never finish their handshake. Each is
bounded by the worker's own limits, and what it held is released when it ends."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.support.images import jpeg
from tests.support.processes import free_port, rotates, wait_for, worker_process
from tests.support.rpc import reason, scrape, total
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.memory import TRIM_THRESHOLD

pytestmark = pytest.mark.slow  # real worker processes on loopback

MiB = 2**20


def paused_stream(stub, declared: int, send_mib: int, resume: threading.Event,
                  every: float | None = None) -> tuple[grpc.Call, threading.Event]:
    """A RotateStream without a deadline declaring ``declared`` bytes, sending ``send_mib`` MiB of them, then
    nothing until ``resume`` (or, with ``every``, 1 KiB each ``every`` seconds until then); the call and an event
    set once the MiB are sent."""
    sent = threading.Event()

    def chunks() -> Iterator[v1.RotateChunk]:
        yield v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=declared)
        for _ in range(send_mib):
            yield v1.RotateChunk(data=bytes(MiB))
        sent.set()
        while every is not None and not resume.wait(every):
            yield v1.RotateChunk(data=bytes(1024))
        resume.wait(120)

    return stub.RotateStream(chunks()), sent


def ended(call: grpc.Call, within: float) -> grpc.Call:
    """``call`` once it has ended by itself, which must be within ``within`` seconds."""
    assert wait_for(call.done, within), f"the call was still open after {within} s"
    return call


def test_streams_that_declare_much_and_send_nothing_hold_nothing_and_end_when_idle():
    with worker_process("--stream-idle-seconds", "6") as w, grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        resume = threading.Event()
        try:
            calls = [paused_stream(stub, 512 * MiB, 0, resume)[0] for _ in range(2)]
            for call in calls:
                call.initial_metadata()  # admitted: the worker asks for the image
            # 2 x 512 MiB declared is --max-inflight-mb's 1024, but nothing received: other calls still get in.
            reply = stub.Rotate(v1.RotateRequest(image=jpeg(64, 32), degrees=90), timeout=30)
            assert (reply.width, reply.height) == (32, 64)
            for call in calls:
                ended(call, 30)
                assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED, call.details()
                assert reason(call) == "CALL_EXPIRED" and "--stream-idle-seconds" in call.details()
        finally:
            resume.set()


def test_a_stream_that_pauses_holds_what_it_sent_until_its_idle_limit_then_releases_it():
    with worker_process("--stream-idle-seconds", "8", "--max-inflight-mb", "100") as w, \
            grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        worker = psutil.Process(w.proc.pid)
        base = worker.memory_info().rss
        resume = threading.Event()
        try:
            call, sent = paused_stream(stub, 200 * MiB, 80, resume)
            assert sent.wait(60)
            assert wait_for(lambda: worker.memory_info().rss > base + 70 * MiB, 30)
            # What it received counts against --max-inflight-mb: 80 + 30 MiB is over 100.
            with pytest.raises(grpc.RpcError) as busy:
                stub.Rotate(v1.RotateRequest(image=bytes(30 * MiB), degrees=90), timeout=30)
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(busy.value) == "WORKER_BUSY"
            held = worker.memory_info().rss
            ended(call, 30)
            assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reason(call) == "CALL_EXPIRED"
        finally:
            resume.set()
        # Released: the process shrinks back, and the same request is admitted (and found not to be an image).
        assert wait_for(lambda: worker.memory_info().rss < held - 60 * MiB, 10), (held - worker.memory_info().rss) / MiB
        with pytest.raises(grpc.RpcError) as refused:
            stub.Rotate(v1.RotateRequest(image=bytes(30 * MiB), degrees=90), timeout=30)
        assert reason(refused.value) == "UNSUPPORTED_FORMAT"


def test_a_stream_that_trickles_without_a_deadline_ends_at_max_call_seconds():
    with worker_process("--stream-idle-seconds", "3", "--max-call-seconds", "6") as w, \
            grpc.insecure_channel(w.address) as channel:
        resume = threading.Event()
        try:
            call, _ = paused_stream(v1_grpc.ImageWorkerStub(channel), 64 * MiB, 1, resume, every=0.5)
            ended(call, 30)
        finally:
            resume.set()
        assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reason(call) == "CALL_EXPIRED"
        assert "--max-call-seconds" in call.details()
        assert rotates(w.address)


def test_an_answer_its_client_never_reads_is_dropped_at_max_call_seconds():
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "BMP")  # 9 MiB each way: far more than the client's window
    image = out.getvalue()
    messages = [v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=len(image))]
    messages += [v1.RotateChunk(data=image[i:i + MiB]) for i in range(0, len(image), MiB)]
    metrics_port = free_port()
    with worker_process("--max-call-seconds", "4", "--metrics-port", str(metrics_port)) as w, \
            grpc.insecure_channel(w.address) as channel:
        call = v1_grpc.ImageWorkerStub(channel).RotateStream(iter(messages))  # no deadline, and never read
        try:
            assert wait_for(lambda: total(scrape(metrics_port), "imageworker_calls_total", method="RotateStream",
                                          code="DEADLINE_EXCEEDED", reason="CALL_EXPIRED") == 1, 30)
        finally:
            call.cancel()
        assert rotates(w.address)


# What a worker may keep after a big call by design (worker/memory.py): up to TRIM_THRESHOLD free at the top of
# each malloc arena's heap, one arena per --threads (malloc_trim at a stream's end does not shrink a thread arena's
# heap); --threads is pinned so that this is known. Plus gRPC's and Python's own buffers: 4-15 MiB after eight
# such streams with malloc untuned.
THREADS = 1
KEPT_BY_DESIGN = THREADS * TRIM_THRESHOLD + 32 * MiB
# Each stream is larger than that: a worker that kept any one of them is above the bound.
CANCELLED_STREAM = KEPT_BY_DESIGN + 32 * MiB


def test_cancelled_streams_are_cancelled_quietly_and_their_memory_released():
    """Eight big streams cancelled by their client one after another (150 MiB each took a worker to 1.1 GiB)."""
    metrics_port = free_port()
    with worker_process("--threads", str(THREADS), "--max-inflight-mb", str(CANCELLED_STREAM // MiB + 50),
                        "--metrics-port", str(metrics_port)) as w, grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        worker = psutil.Process(w.proc.pid)
        base = worker.memory_info().rss
        grown: list[float] = []
        for _ in range(8):
            resume = threading.Event()
            call, sent = paused_stream(stub, CANCELLED_STREAM + 1, CANCELLED_STREAM // MiB, resume)
            try:
                assert sent.wait(60)
                assert wait_for(lambda: worker.memory_info().rss > base + CANCELLED_STREAM - 10 * MiB, 30)
                call.cancel()
                # The call's end is recorded after its handler has released what it held.
                assert wait_for(lambda: total(scrape(metrics_port), "imageworker_calls_total") == len(grown) + 1, 30)
            finally:
                resume.set()
            grown.append(round((worker.memory_info().rss - base) / MiB, 1))
            # Checked after each: a worker that keeps them stops the test at the first, not at 1.5 GiB.
            assert grown[-1] < KEPT_BY_DESIGN / MiB, \
                f"MiB above the start after each cancelled {CANCELLED_STREAM // MiB} MiB stream: {grown}"
        samples = scrape(metrics_port)
        assert total(samples, "imageworker_calls_total", code="CANCELLED", reason="CALL_CANCELLED") == 8
        assert total(samples, "imageworker_calls_total") == 8
        assert rotates(w.address)
        log = w.log.read_text()
        assert "ERROR" not in log and "Traceback" not in log and "WARNING" not in log, log


def test_quiet_connections_are_closed_and_a_frozen_client_is_dropped_with_its_call():
    metrics_port = free_port()
    with worker_process("--idle-connection-seconds", "2", "--keepalive-seconds", "1", "--stream-idle-seconds",
                        "300", "--metrics-port", str(metrics_port)) as w:
        host, port = w.address.rsplit(":", 1)
        # A connection that never sends its side of the handshake is closed (after the server's own SETTINGS).
        with socket.create_connection((host, int(port)), timeout=20) as bare:
            while bare.recv(4096):
                pass

        # A connection whose calls are over is closed (GOAWAY): the channel goes idle by itself.
        with grpc.insecure_channel(w.address) as channel:
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append)
            v1_grpc.ImageWorkerStub(channel).Rotate(v1.RotateRequest(image=jpeg(16, 16), degrees=90), timeout=30)
            assert wait_for(lambda: grpc.ChannelConnectivity.READY in states, 10), states
            assert wait_for(lambda: states[-1] == grpc.ChannelConnectivity.IDLE, 20), states
            channel.unsubscribe(states.append)

        # A client frozen mid-stream (SIGSTOP: its kernel still acknowledges TCP, its gRPC answers no ping) is
        # dropped with its call well before --stream-idle-seconds.
        client = subprocess.Popen([sys.executable, "-c", FROZEN_CLIENT, w.address], stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "sent"
            client.send_signal(signal.SIGSTOP)
            assert wait_for(lambda: total(scrape(metrics_port), "imageworker_calls_total", method="RotateStream",
                                          code="CANCELLED") == 1, 30)
        finally:
            client.kill()
            client.wait(30)
        assert rotates(w.address)


# A RotateStream without a deadline that sends its request and one chunk, says so, and waits.
FROZEN_CLIENT = """
import sys, threading
import grpc
from worker.api import imageworker_v1_pb2 as v1, imageworker_v1_pb2_grpc as v1_grpc

def chunks():
    yield v1.RotateChunk(request=v1.RotateRequest(degrees=90), size=2 * 2**20)
    yield v1.RotateChunk(data=bytes(2**20))
    threading.Event().wait()

call = v1_grpc.ImageWorkerStub(grpc.insecure_channel(sys.argv[1])).RotateStream(chunks())
call.initial_metadata()
print("sent", flush=True)
threading.Event().wait()
"""
