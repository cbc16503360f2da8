"""A bare gRPC echo server with the worker's server settings, to price the RPC layer alone.

``/bench.Echo/Rotate`` takes an ``imageworker.v1.RotateRequest`` and answers a
``RotateResponse`` carrying the same image bytes: the same messages, sizes and
(de)serialisation as the worker's Rotate, minus the image work.

The settings mirror ``worker.server`` by construction where it exposes them:
``ServerConfig`` gives the thread pool size, gRPC's cap on calls
(``maximum_concurrent_rpcs``: ``transport_rpc_limit``) and the transport message limits, and
``worker.server._reserve_port`` reserves the shared port; the processes are
forked before any grpc object exists and bind it with SO_REUSEPORT, as
``worker serve`` does. (``worker.server`` builds its grpc.Server inside
``_serve_in_this_process`` together with its servicers, so the builder cannot
be called for another service without copying these few lines.)

    python bench/echo_server.py [--port 0] [--processes N] [--threads 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from concurrent import futures

from worker.server import ServerConfig, _reserve_port


def _serve(config: ServerConfig, port: int, ready) -> None:
    import grpc

    from worker.api import imageworker_v1_pb2 as pb

    def echo(request: pb.RotateRequest, context) -> pb.RotateResponse:
        return pb.RotateResponse(image=request.image, format="JPEG", method="echo", worker=identity)

    identity = f"echo:{port}/{os.getpid()}"

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", config.transport_limit),
            ("grpc.max_send_message_length", config.transport_limit),
        ],
        maximum_concurrent_rpcs=config.transport_rpc_limit,
    )
    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=pb.RotateRequest.FromString,
        response_serializer=pb.RotateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Rotate": handler})])
    if server.add_insecure_port(f"{config.host}:{port}") != port:
        sys.exit(f"cannot bind {config.host}:{port}")
    server.start()
    ready.put(os.getpid())
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop(0).wait()
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ServerConfig()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--processes", type=int, default=defaults.processes)
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--max-concurrent-rpcs", type=int, default=None)
    ap.add_argument("--max-message-mb", type=int, default=defaults.max_message_mb)
    a = ap.parse_args()
    config = ServerConfig(host="127.0.0.1", port=a.port, processes=a.processes, threads=a.threads,
                          max_concurrent_rpcs=a.max_concurrent_rpcs, max_message_mb=a.max_message_mb)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # children inherit; sigwait
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    with _reserve_port(config.host, config.port) as port:
        children = [ctx.Process(target=_serve, args=(config, port, ready)) for _ in range(config.processes)]
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=30)
        print(f"LISTENING {config.host}:{port}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        for child in children:
            os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join()


if __name__ == "__main__":
    main()
