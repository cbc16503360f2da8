"""A fleet on loopback: stand-in workers on 127.0.0.x that answer after a set delay (a worker "25 ms away",
doing no image work), and a DNS server on loopback whose records the test changes while a run goes on.

    python -P -m tests.support.fleet --host 127.0.0.2 --delay 0.025   # one stand-in (prints LISTENING)
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dnslib
from dnslib.server import BaseResolver, DNSServer

from tests.support.processes import ROOT, free_port
from worker.local import LocalServer, python_command

FLEET_NAME = "workers.test"


class Records(BaseResolver):
    """A records for one name, changed by the test while a driver resolves it; any other name does not exist
    (NXDOMAIN)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname).rstrip(".") != self.name:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif request.q.qtype == dnslib.QTYPE.A:
            with self.lock:
                for ip in self.addresses:
                    reply.add_answer(dnslib.RR(self.name, dnslib.QTYPE.A, rdata=dnslib.A(ip), ttl=1))
        return reply


@contextmanager
def dns_server(name: str = FLEET_NAME) -> Iterator[tuple[Records, int]]:
    """A DNS server on 127.0.0.1 (UDP) answering for ``name``; yields its records and its port."""
    records = Records(name)
    port = free_port()
    server = DNSServer(records, address="127.0.0.1", port=port, logger=_Quiet())
    # Not server.start_thread(): its serve_forever looks for shutdown() every 0.5 s, which each test waited out.
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield records, port
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join()


class _Quiet:
    """dnslib logs every query by default."""

    def __getattr__(self, _name):
        return lambda *args, **kwargs: None


@contextmanager
def stand_ins(hosts: list[str], port: int, delay: float, log_dir: Path) -> Iterator[list[LocalServer]]:
    """One stand-in worker process per loopback ``host``, all on ``port`` (so one DNS name covers them)."""
    with ExitStack() as stack:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # -P keeps the current folder off the path: name the checkout
        yield [stack.enter_context(LocalServer(
            python_command("-m", "tests.support.fleet", "--host", h, "--port", str(port), "--delay", str(delay)),
            log_dir / f"stand-in-{h}.log", env=env)) for h in hosts]


def _serve(host: str, port: int, delay: float) -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    from worker.api import imageworker_v1_pb2 as v1
    from worker.api import imageworker_v1_pb2_grpc as v1_grpc

    identity = f"{host}:{port}/{os.getpid()}"

    class StandIn(v1_grpc.ImageWorkerServicer):
        def Rotate(self, request, context):
            time.sleep(delay)
            return v1.RotateResponse(image=request.image, format="JPEG", width=1, height=1, method="copy",
                                     worker=identity, degrees=request.degrees % 360)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    v1_grpc.add_ImageWorkerServicer_to_server(StandIn(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"LISTENING {host}:{bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.025)
    a = ap.parse_args()
    _serve(a.host, a.port, a.delay)
