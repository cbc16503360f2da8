"""Building and running the gRPC server: services, health, reflection, limits, draining.

``serve`` checks the options (``worker.config``, ``worker.tls``) and runs
``serve_worker`` in each of the worker's processes (``worker.supervisor``).
With --metrics-port the parent also serves their Prometheus metrics, summed
(``worker.metrics``).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

from worker import metrics
from worker.config import ServerConfig, check_config, log, warn_about_environment
from worker.lazy_classifier import LazyClassifier
from worker.metrics import Metrics
from worker.storage import Roots
from worker.supervisor import EXIT_BROKEN, ServeOne, StopRequest, addresses_of, supervise

SERVICE_NAMES = ("imageworker.v1.ImageWorker", "ABImageService")
# Clients may ping this often (the driver pings every 30 s during calls); more often is gRPC's "too many pings".
MIN_CLIENT_PING_MS = 10_000


def serve(config: ServerConfig, announce=print, serve_one: ServeOne | None = None) -> int:
    """Run ``serve_one`` (default: the worker's services) in --processes processes until SIGTERM/SIGINT;
    return the exit code. They share the port, or each has its socket in --socket-dir; the LISTENING line
    names every address a client connects to (one port, or each socket)."""
    serve_one = serve_one or serve_worker
    check_config(config)
    warn_about_environment(config)
    if serve_one is serve_worker:
        from worker.memory import tune_malloc

        # Before any thread starts (--metrics-port's): a thread's first malloc gives it an arena of its own, and
        # one made before the cap escapes it. Processes forked later inherit the settings.
        tune_malloc(config.threads)  # keeps photos' buffers mapped between calls (worker/memory.py)
    with addresses_of(config) as addresses, metrics.exported(config.host, config.metrics_port):
        listening = "LISTENING " + " ".join(dict.fromkeys(addresses))
        if config.processes == 1:
            return serve_one(config, addresses[0], lambda: announce(listening))
        _import_serving_modules()
        return supervise(config, addresses, lambda: announce(listening), serve_one)


# What a server process imports to serve (``services``, ``serve_worker``); grpc.server() imports grpc's private
# modules itself.
SERVING_MODULES = ("concurrent.futures.thread", "grpc", "grpc_health.v1.health_pb2_grpc",
                   "grpc_reflection.v1alpha.reflection", "worker.admission", "worker.api.abimage_pb2_grpc",
                   "worker.api.imageworker_v1_pb2_grpc", "worker.health", "worker.service")


def _import_serving_modules() -> None:
    """Import once in the supervisor, before it forks, what every server process would import for itself.

    Each process then starts from the parent's modules: the embedded worker's two processes listened 163-210 ms
    after the fork, each importing the same ~100 ms of modules on a 2-core machine while the driver started
    too; now ~20 ms (docs/benchmarks.md). Importing grpc before a fork is safe (gRPC's own multiprocessing
    example does it): what must not exist before the fork is a grpc object, a server or channel, and none does.
    """
    for name in SERVING_MODULES:
        importlib.import_module(name)


def new_server(config: ServerConfig):
    """A grpc.Server with the worker's limits: RPC cap, message sizes, SO_REUSEPORT, keepalive and idle
    connections.

    A thread for every call gRPC admits, so no call waits where worker.admission
    cannot see it; --threads is enforced there, on the image work itself.
    Connections are the transport's to bound: one whose client stops answering
    pings (gone without a FIN, or frozen) is dropped with its calls, one without
    calls for --idle-connection-seconds is closed (GOAWAY: clients reconnect
    when they need to), and so is one that has not finished its handshake by
    then (a bare TCP connection holds a file descriptor too).
    """
    import grpc

    keepalive_ms = round(config.keepalive_seconds * 1000)
    idle_ms = round(config.idle_connection_seconds * 1000)
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.transport_rpc_limit, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", config.transport_limit),
            ("grpc.max_send_message_length", config.transport_limit),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.http2.ping_timeout_ms", keepalive_ms),
            # Ping however long the server has sent no data: a stream that is only receiving needs it most.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
            ("grpc.max_connection_idle_ms", idle_ms),
            ("grpc.server_handshake_timeout_ms", idle_ms),
        ],
        maximum_concurrent_rpcs=config.transport_rpc_limit,
    )


def bind(server, config: ServerConfig, address: str) -> None:
    """Serve ``address`` ("host:port" or "unix:path"), with TLS or in plaintext, on ``server``; OSError if it
    cannot."""
    import grpc

    if config.tls:
        creds = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
            root_certificates=Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None,
            require_client_auth=config.tls_client_ca is not None,
        )
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    # A port number for TCP (the reserved one), 1 for a Unix socket.
    if bound != (1 if address.startswith("unix:") else int(address.rsplit(":", 1)[1])):
        raise OSError(f"could not bind {address}")


def stop_requested() -> StopRequest:
    """A StopRequest set by the next SIGTERM or SIGINT."""
    stop = StopRequest()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def services(config: ServerConfig, address: str, recorder: Metrics):
    """A new grpc.Server (not bound, not started) with the worker's services: the image worker, the legacy
    ABImageService, health (NOT_SERVING until ``set_health``) and reflection; with the state they share,
    whose ``classifier`` the caller sets. The only place they are put together: ``serve_worker`` serves them,
    and the tests' in-process worker (tests/support/inprocess.py) too."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from worker.admission import Admission
    from worker.api import abimage_pb2_grpc, imageworker_v1_pb2_grpc
    from worker.health import HealthServicer
    from worker.service import ABImageServicer, ImageWorkerServicer, WorkerState

    server = new_server(config)
    state = WorkerState(
        # host:port/pid, or host:worker-K.sock/pid on a Unix socket
        identity=f"{socket.gethostname()}:{os.path.basename(address.rsplit(':', 1)[1])}/{os.getpid()}",
        max_message_bytes=config.max_message_bytes,
        max_image_bytes=config.max_image_bytes,
        max_pixels=config.max_pixels,
        admission=Admission(config.in_flight_limit, config.threads, config.unsent_limit,
                            config.unsent_per_connection, config.inflight_bytes_limit),
        stream_idle=config.stream_idle_seconds,
        max_call=config.max_call_seconds,
        max_batch_items=config.max_batch_items,
        roots=Roots.of(config.data_roots, config.output_roots),
        metrics=recorder,
    )
    health_servicer = HealthServicer()
    imageworker_v1_pb2_grpc.add_ImageWorkerServicer_to_server(ImageWorkerServicer(state), server)
    abimage_pb2_grpc.add_ABImageServiceServicer_to_server(ABImageServicer(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, health_servicer, state


def serve_worker(config: ServerConfig, address: str, ready: Callable[[], None]) -> int:
    """The worker's services at ``address`` in this process until a signal."""
    from grpc_health.v1 import health_pb2

    from worker.decode import use_own_pixel_limit

    use_own_pixel_limit()  # --max-pixels, not Pillow's process-wide default, bounds every image here
    recorder = metrics.ProcessMetrics() if config.metrics_port is not None else Metrics()
    server, health_servicer, state = services(config, address, recorder)

    try:
        bind(server, config, address)
    except (OSError, RuntimeError) as e:  # RuntimeError: grpc's own "failed to bind"
        log.error("%s", e)
        return 1
    stop = stop_requested()
    broken = threading.Event()

    def cannot_classify() -> None:  # health must not promise calls that cannot be answered
        broken.set()
        set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        stop.set()

    state.classifier = LazyClassifier(config.model, cannot_classify, recorder)
    server.start()
    set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving %s on %s (%s, %d threads, %d calls in flight at most; face model loaded at the first "
        "classify call)", ", ".join(SERVICE_NAMES), address,
        "TLS" + (" with client certificates" if config.tls_client_ca else "") if config.tls else "plaintext",
        config.threads, config.in_flight_limit,
    )
    ready()

    stop.wait()
    # Draining: health says NOT_SERVING so balancers move on, new calls are
    # refused, calls in flight get the grace period to finish.
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace).wait()
    log.info("stopped after serving %s", dict(sorted(state.served.items())) or "no calls")
    return EXIT_BROKEN if broken.is_set() else 0


def set_health(servicer, status) -> None:
    """``status`` for the whole server and each of its services."""
    for name in ("", *SERVICE_NAMES):
        servicer.set(name, status)
