"""A bare gRPC echo server with the worker's server settings, to price the RPC layer alone.

``/bench.Echo/Rotate`` takes an ``imageworker.v1.RotateRequest`` and answers a
``RotateResponse`` carrying the same image bytes: the same messages, sizes and
(de)serialisation as the worker's Rotate, minus the image work. The same
handler also answers as ``/imageworker.v1.ImageWorker/Rotate``, so that a real
``batch run --worker`` can use it as a stand-in worker: a request by reference
(``destination`` set) is answered with the metadata only, as a worker that
wrote the file would. It answers ``RotateBatch`` too, each item as Rotate (one admission for the batch, as
the worker does), so that a driver's batched sending can be priced alone.

It runs on ``worker.server`` itself: ``serve`` reserves the port and forks the
processes (SO_REUSEPORT, signals, LISTENING line), and ``new_server``/``bind``
give the same thread pool, RPC cap and message limits, and ``worker.admission``
the same in-flight gate; only the service differs.

    python bench/echo_server.py [--host 127.0.0.1] [--port 0] [--processes N] [--threads 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable

from worker.admission import Admission
from worker.config import ServerConfig
from worker.errors import Busy
from worker.server import bind, new_server, serve, stop_requested


def serve_echo(config: ServerConfig, address: str, ready: Callable[[], None]) -> int:
    import grpc

    from worker.api import imageworker_v1_pb2 as pb

    identity = f"echo:{address.rsplit(':', 1)[1]}/{os.getpid()}"
    admission = Admission(config.in_flight_limit, config.threads)  # the worker's gate, as its servicers use it

    def answer(request: pb.RotateRequest) -> pb.RotateResponse:
        image = b"" if request.HasField("destination") else request.image
        # The worker's account of what it sent, as a real worker gives it (it hashes in its own processes):
        # without one the driver hashes the bytes itself, as it does for an older worker.
        return pb.RotateResponse(image=image, format="JPEG", method="echo", worker=identity, width=1, height=1,
                                 degrees=request.degrees % 360, output_bytes=len(image),
                                 output_sha256=hashlib.sha256(image).hexdigest())

    def echo(request: pb.RotateRequest, context) -> pb.RotateResponse:
        try:
            return admission.run(answer, request)
        except Busy as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    def answer_batch(request: pb.RotateBatchRequest) -> pb.RotateBatchResponse:
        return pb.RotateBatchResponse(results=[pb.RotateResult(response=answer(item)) for item in request.items])

    def echo_batch(request: pb.RotateBatchRequest, context) -> pb.RotateBatchResponse:
        try:
            return admission.run(answer_batch, request)
        except Busy as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    server = new_server(config)
    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=pb.RotateRequest.FromString,
        response_serializer=pb.RotateResponse.SerializeToString,
    )
    batch = grpc.unary_unary_rpc_method_handler(
        echo_batch, request_deserializer=pb.RotateBatchRequest.FromString,
        response_serializer=pb.RotateBatchResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Rotate": handler}),
                                     grpc.method_handlers_generic_handler("imageworker.v1.ImageWorker",
                                                                          {"Rotate": handler,
                                                                           "RotateBatch": batch})])
    bind(server, config, address)
    stop = stop_requested()
    server.start()
    ready()
    stop.wait()
    server.stop(0).wait()
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ServerConfig()
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.2 makes a second host)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--processes", type=int, default=defaults.processes)
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--max-concurrent-rpcs", type=int, default=None)
    ap.add_argument("--max-message-mb", type=int, default=defaults.max_message_mb)
    a = ap.parse_args()
    config = ServerConfig(host=a.host, port=a.port, processes=a.processes, threads=a.threads,
                          max_concurrent_rpcs=a.max_concurrent_rpcs, max_message_mb=a.max_message_mb)
    sys.exit(serve(config, announce=lambda line: print(line, flush=True), serve_one=serve_echo))


if __name__ == "__main__":
    main()
