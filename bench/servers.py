"""Starting a real `worker serve` (or the bench echo server) on a free loopback port, and a gRPC load client."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.local import LocalServer, python_command

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def running(cmd: list[str], timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server that prints 'LISTENING host:port' when ready (worker.local's launcher); yield
    (address, process); SIGTERM it after."""
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp, \
            LocalServer([*cmd, "--port", "0"], Path(tmp) / "server.log", timeout) as server:
        yield server.address, server.proc


def worker_cmd(*extra: str) -> list[str]:
    return python_command("-m", "worker", "serve", "--log-level", "WARNING", *extra)


def echo_cmd(*extra: str) -> list[str]:
    return python_command(str(HERE / "echo_server.py"), *extra)


@dataclass
class Load:
    calls: int
    seconds: float
    latencies: list[float]  # seconds per call
    per_process: Counter  # answering process -> calls
    rejected: int  # RESOURCE_EXHAUSTED answers (server's in-flight limit), retried

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def load(address: str, method: str, images: list[bytes], calls: int, concurrency: int,
         processes: int = 1, connections: int = 1) -> Load:
    """Make ``calls`` unary Rotate calls (90 degrees), ``concurrency`` in flight, over balanced connections.

    A multi-process server on a SO_REUSEPORT port gets each *connection* on
    one process, chosen by a hash: to give every process its share we open
    connections until each of ``processes`` server processes holds
    ``connections`` of them (their answers name the process).
    """
    return asyncio.run(_load(address, method, images, calls, concurrency, processes, connections))


async def _balanced(address: str, method: str, probe, processes: int, per_process: int):
    import grpc

    from worker.api import imageworker_v1_pb2 as pb

    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 * 2**20),
               ("grpc.max_send_message_length", 256 * 2**20)]
    kept: dict[str, list] = {}
    for _ in range(64 * processes * per_process):
        channel = grpc.aio.insecure_channel(address, options=options)
        stub = channel.unary_unary(method, request_serializer=pb.RotateRequest.SerializeToString,
                                   response_deserializer=pb.RotateResponse.FromString)
        who = (await stub(probe, wait_for_ready=True)).worker
        if len(kept.get(who, [])) < per_process:
            kept.setdefault(who, []).append((channel, stub))
        else:
            await channel.close()
        if len(kept) >= processes and all(len(v) >= per_process for v in kept.values()):
            break
    else:
        raise RuntimeError(f"could not reach {processes} server processes with {per_process} connections each: "
                           f"{ {k: len(v) for k, v in kept.items()} }")
    # interleave, so consecutive clients use different processes
    pairs = [pair for group in zip(*kept.values(), strict=False) for pair in group]
    return [c for c, _ in pairs], [s for _, s in pairs]


async def _load(address, method, images, calls, concurrency, processes, connections) -> Load:
    import grpc

    from worker.api import imageworker_v1_pb2 as pb

    requests = [pb.RotateRequest(image=data, degrees=90) for data in images]
    channels, stubs = await _balanced(address, method, requests[0], processes, connections)
    latencies: list[float] = []
    who: Counter = Counter()
    next_call = 0
    rejected = 0

    async def client(k: int) -> None:
        nonlocal next_call, rejected
        while next_call < calls:
            i = next_call
            next_call += 1
            t = time.perf_counter()
            while True:
                try:
                    answer = await stubs[k % len(stubs)](requests[i % len(requests)], timeout=60)
                    break
                except grpc.aio.AioRpcError as e:
                    # The server frees an in-flight slot a little after the client has its answer,
                    # so a client at the limit is sometimes refused: count it, retry.
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    rejected += 1
                    await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - t)
            who[answer.worker] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    seconds = time.perf_counter() - start
    for ch in channels:
        await ch.close()
    return Load(calls, seconds, latencies, who, rejected)
