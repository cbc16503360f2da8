"""Building and running the gRPC server: services, health, reflection, TLS, limits, processes.

``serve`` reserves the port in the parent, then forks one server process per
CPU *before any grpc object exists*; each binds the same port with
SO_REUSEPORT, so the kernel spreads connections over them and CPU work is not
serialised by one interpreter's GIL. With --socket-dir there is no TCP port:
each process serves a Unix domain socket of its own in that private folder,
and a client connects to each. With --metrics-port the parent also serves
their Prometheus metrics, summed (``worker.metrics``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worker import admission, metrics
from worker.decode import DEFAULT_MAX_PIXELS
from worker.errors import NotReady
from worker.metrics import Metrics, ModelState
from worker.storage import Roots

if TYPE_CHECKING:
    from worker.admission import Call
    from worker.classifier import Classifier

log = logging.getLogger("worker.server")

# A server process exits with this when it cannot serve as configured (its face model does not load):
# the supervisor stops instead of restarting it, which could not help.
EXIT_BROKEN = 3


class ConfigError(ValueError):
    """Options that cannot work together (a usage error: `worker serve` exits 2)."""

SERVICE_NAMES = ("imageworker.v1.ImageWorker", "ABImageService")
# The longest of the worker's own time limits: a year, well within what gRPC's millisecond options hold.
MAX_SECONDS = 365 * 24 * 3600
MAX_PROCESSES = 1024
# Clients may ping this often (the driver pings every 30 s during calls); more often is gRPC's "too many pings".
MIN_CLIENT_PING_MS = 10_000
# Calls gRPC admits beyond the image calls: health checks, the first answer of
# a health Watch stream (an open stream holds no slot after it) and reflection.
CONTROL_HEADROOM = 8


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    processes: int = os.cpu_count() or 1
    threads: int = 4
    max_concurrent_rpcs: int | None = None  # default: 4 x threads
    max_message_mb: int = 64  # a unary call's image (and answer); larger ones stream
    max_image_mb: int = 512  # any image, streamed or not: a 10000x10000 RGB scan as raw TIFF is 286 MiB
    max_inflight_mb: int = 1024  # images held by the calls in flight per process (worker.admission)
    max_pixels: int = DEFAULT_MAX_PIXELS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    grace: float = 15.0
    model: str | None = None
    # Reference mode: folders whose files requests may name instead of sending bytes (off when both are empty).
    data_roots: tuple[Path, ...] = ()
    output_roots: tuple[Path, ...] = ()
    metrics_port: int | None = None  # Prometheus /metrics of the whole worker (off when None)
    # Unix domain sockets in this private folder, one per process, instead of --host/--port (None: TCP).
    socket_dir: Path | None = None
    allow_unauthenticated_references: bool = False
    stream_idle_seconds: float = 30.0  # longest wait for a stream's next message
    max_call_seconds: float = 600.0  # longest any call lasts, whatever its deadline (or none)
    max_batch_items: int = 64  # items one RotateBatch or ClassifyBatch call may carry
    keepalive_seconds: float = 60.0  # ping a connection quiet this long; drop it when unanswered as long again
    idle_connection_seconds: float = 300.0  # close a connection without calls this long (and unfinished handshakes)

    @property
    def in_flight_limit(self) -> int:
        """Image calls per process, working or waiting for a thread.

        Four per thread by default: room for one driver's default 8 calls per
        address, unevenly spread, against a one-process worker, and for calls
        still in transit; a waiting call holds only its request bytes.
        """
        return self.max_concurrent_rpcs or 4 * self.threads

    @property
    def transport_rpc_limit(self) -> int:
        # gRPC's cap counts every call; image calls are held to in_flight_limit
        # by worker.admission, so this only keeps health checks answerable when
        # the image calls are at their limit.
        return self.in_flight_limit + CONTROL_HEADROOM

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 2**20

    @property
    def max_image_bytes(self) -> int:
        # Never below the unary limit: an image one call may carry is one the worker accepts.
        return max(self.max_image_mb, self.max_message_mb) * 2**20

    @property
    def inflight_bytes_limit(self) -> int:
        return self.max_inflight_mb * 2**20

    @property
    def transport_limit(self) -> int:
        # gRPC's own limit sits above ours so that most oversized images reach
        # the servicer, which answers with a message naming the flag; the
        # transport limit still caps what one call can make us buffer.
        return self.max_message_bytes + max(self.max_message_bytes, 16 * 2**20)

    @property
    def unsent_per_connection(self) -> int:
        """Bytes of answers one connection may leave unread before its new calls are refused as busy.

        One largest answer (at least 16 MiB, so ordinary answers in transit never trip it): a client reads
        its answers, or gets no more of them.
        """
        return max(self.max_message_bytes, 16 * 2**20)

    @property
    def unsent_limit(self) -> int:
        """Bytes of answers not yet sent per process before every new call is refused as busy: four
        connections' worth, so one that stops reading cannot starve the rest, and several cannot grow the
        process without bound (docs/operations.md, "Sizing memory")."""
        return 4 * self.unsent_per_connection

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


# One server process: serves at the gRPC address ("host:port" or "unix:path") until a signal, calls ready() once
# it answers, returns its exit code.
ServeOne = Callable[["ServerConfig", str, Callable[[], None]], int]
SOCKET_NAME = "worker-{}.sock"  # --socket-dir: process K's socket
_SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sockaddr_un.sun_path, less its NUL)


def serve(config: ServerConfig, announce=print, serve_one: ServeOne | None = None) -> int:
    """Run ``serve_one`` (default: the worker's services) in --processes processes until SIGTERM/SIGINT;
    return the exit code. They share the port, or each has its socket in --socket-dir; the LISTENING line
    names every address a client connects to (one port, or each socket)."""
    serve_one = serve_one or serve_worker
    _check_config(config)
    _warn_about_environment(config)
    with _addresses(config) as addresses, metrics.exported(config.host, config.metrics_port):
        listening = "LISTENING " + " ".join(dict.fromkeys(addresses))
        if config.processes == 1:
            return serve_one(config, addresses[0], lambda: announce(listening))
        return _supervise(config, addresses, lambda: announce(listening), serve_one)


@contextlib.contextmanager
def _addresses(config: ServerConfig) -> Iterator[list[str]]:
    """Each process's gRPC address: the one reserved port, or its own socket in --socket-dir."""
    if config.socket_dir is not None:
        with _private_folder(Path(config.socket_dir)) as folder:
            yield [f"unix:{folder / SOCKET_NAME.format(k)}" for k in range(config.processes)]
        return
    with reserve_port(config.host, config.port) as port:
        host = f"[{config.host}]" if ":" in config.host else config.host
        yield [f"{host}:{port}"] * config.processes


def _check_config(config: ServerConfig) -> None:
    if not config.host:
        raise ConfigError("--host is empty: give an address to bind (127.0.0.1, or 0.0.0.0 for every interface)")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and not config.tls:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    for path in (config.tls_cert, config.tls_key, config.tls_client_ca):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    if not (1 <= config.processes <= MAX_PROCESSES and 1 <= config.threads <= MAX_PROCESSES):
        raise ConfigError(f"--processes and --threads must be from 1 to {MAX_PROCESSES}")
    if not 0 <= config.grace <= MAX_SECONDS:  # nan fails too
        raise ConfigError(f"--grace must be from 0 to {MAX_SECONDS:,} seconds (a year): got {config.grace:g}")
    for flag, seconds in (("--stream-idle-seconds", config.stream_idle_seconds),
                          ("--max-call-seconds", config.max_call_seconds),
                          ("--keepalive-seconds", config.keepalive_seconds),
                          ("--idle-connection-seconds", config.idle_connection_seconds)):
        if not 0 < seconds <= MAX_SECONDS:
            raise ConfigError(f"{flag} must be more than 0 and at most {MAX_SECONDS:,} (a year): got {seconds:g}")
    if config.metrics_port is not None and config.metrics_port == config.port and config.socket_dir is None:
        raise ConfigError(f"--metrics-port {config.metrics_port} is the --port: give the metrics a port of their own")
    if config.socket_dir is not None:
        _check_socket_dir(Path(config.socket_dir), config.processes)
    if config.tls:
        _check_tls(config)
    if config.model is not None:
        _check_model(config.model)
    try:
        Roots.of(config.data_roots, config.output_roots)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_reference_clients(config)


@contextlib.contextmanager
def _private_folder(folder: Path) -> Iterator[Path]:
    """--socket-dir, made here with mode 700 (so nobody else can enter it, whatever was there before: an
    existing one is refused) and removed with its sockets at the end, however the worker stops short of
    SIGKILL (a driver that embeds it and dies sends it SIGTERM)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise ConfigError(f"--socket-dir {folder} already exists: name a folder for the worker to make "
                          "(it makes it private and removes it when it stops)") from None
    except OSError as e:
        raise ConfigError(f"cannot make --socket-dir {folder}: {e.strerror}") from None
    try:
        yield folder
    finally:
        for socket_file in folder.glob(SOCKET_NAME.format("*")):  # a process that died leaves its socket
            socket_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else was put there: left as it is
            folder.rmdir()


def _check_socket_dir(folder: Path, processes: int) -> None:
    """Room in a socket address for the longest socket name in --socket-dir."""
    longest = os.path.join(os.fsencode(folder), os.fsencode(SOCKET_NAME.format(processes - 1)))
    if len(longest) > _SUN_PATH_MAX:
        raise ConfigError(f"--socket-dir {folder} is too long for a Unix socket address ({len(longest)} bytes "
                          f"with the socket's name, at most {_SUN_PATH_MAX}): choose a shorter path")


def _check_reference_clients(config: ServerConfig) -> None:
    """References let a client read and write files under the roots as this worker's user: offered only
    where every client is known (loopback, a private socket folder, or client certificates), or when the
    operator accepts the risk by name."""
    if not (config.data_roots or config.output_roots) or config.allow_unauthenticated_references:
        return
    if config.socket_dir is not None or _is_loopback(config.host) or config.tls_client_ca is not None:
        return
    raise ConfigError(
        f"--data-root/--output-root on {config.host} without client certificates would let anyone who can reach "
        "the port read and overwrite files under those roots: require client certificates (--tls-cert, --tls-key "
        "and --tls-client-ca), serve on loopback or --socket-dir, or add --allow-unauthenticated-references")


def _check_model(path: str) -> None:
    """The --model artifact loads (its .npz and .json beside it): a bad one is a usage error now, not a
    traceback at the first classify call."""
    from worker.faces.artifact import ModelError, load

    try:
        load(path)
    except ModelError as e:
        raise ConfigError(f"--model: {e}") from None


def _check_tls(config: ServerConfig) -> None:
    """The TLS files are a PEM certificate valid now and its key (and a CA bundle): each problem named here,
    before gRPC fails on them without saying which. A certificate not naming --host is only warned about:
    clients may connect by another of its names."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(option: str, path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {option} {path}: {e.strerror}") from None

    def certificates(option: str, path: Path) -> list[x509.Certificate]:
        data = read(option, path)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            if _private_key(data) is not None:
                raise ConfigError(f"{option} {path} is a private key, not a certificate") from None
            raise ConfigError(f"{option} {path} holds no PEM certificate") from None

    cert, key = config.tls_cert, config.tls_key
    leaf = certificates("--tls-cert", cert)[0]  # the server's own; any others are its chain
    private_key = _private_key(read("--tls-key", key))
    if private_key is None:
        raise ConfigError(f"--tls-key {key} is not a PEM private key (unencrypted: the worker asks no passphrase)")
    raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise ConfigError(f"--tls-key {key} is not the private key of --tls-cert {cert}")
    if config.tls_client_ca is not None:
        certificates("--tls-client-ca", config.tls_client_ca)
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    dates = f"valid from {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
    now = datetime.datetime.now(datetime.UTC)
    if now < start:
        raise ConfigError(f"--tls-cert {cert} is not valid yet: {dates}")
    if now > end:
        raise ConfigError(f"--tls-cert {cert} has expired: {dates}")
    names = _certificate_names(leaf)
    if not _covers(names, config.host):
        log.warning("--tls-cert %s names %s, not --host %s: clients connecting by %s will refuse it "
                    "(fine if they connect by one of its names)", cert, ", ".join(names) or "nothing",
                    config.host, config.host)


def _private_key(data: bytes):
    """The unencrypted PEM private key in ``data``, or None."""
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # not a key; encrypted (TypeError: a password is needed)
        return None


def _certificate_names(cert) -> list[str]:
    """The subjectAltName DNS names and IPs of ``cert`` (its common name when it has none, as old clients read)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]


def _covers(names: list[str], host: str) -> bool:
    """Whether a client connecting by ``host`` accepts a certificate for ``names`` (one-label wildcards)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.lower().rstrip(".").split(".")
        return any(_dns_match(name.lower().rstrip(".").split("."), labels) for name in names)
    if address.is_unspecified:  # every interface: clients connect by names and addresses we cannot know
        return True
    return any(name == str(address) for name in names)


def _dns_match(pattern: list[str], labels: list[str]) -> bool:
    return len(pattern) == len(labels) and pattern[0] in ("*", labels[0]) and pattern[1:] == labels[1:]


def _warn_about_environment(config: ServerConfig) -> None:
    from worker.rotation import lossless_jpeg_available

    if not lossless_jpeg_available():
        log.warning(
            "lossless JPEG rotation is unavailable (libturbojpeg not found; on Debian/Ubuntu: "
            "apt-get install libturbojpeg0): JPEGs will be re-encoded with their own quantisation tables"
        )
    if config.allow_unauthenticated_references and not _is_loopback(config.host) and config.socket_dir is None \
            and config.tls_client_ca is None and (config.data_roots or config.output_roots):
        log.warning("serving references on %s without client certificates (--allow-unauthenticated-references): "
                    "anyone who can reach this address can read files under --data-root and overwrite files under "
                    "--output-root", config.host)
    if not config.tls and not _is_loopback(config.host):
        log.warning(
            "serving on %s WITHOUT TLS: anyone who can reach this address can use the worker "
            "(use --tls-cert/--tls-key, and --tls-client-ca to require client certificates)",
            config.host,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) the port with SO_REUSEPORT so every child can bind it too.

    SO_REUSEPORT would also let this worker share a port that another process of
    the same user already serves (another `worker serve`, which would take about
    half of the connections), so the port is first bound without it: that fails
    while any other socket holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of an earlier worker in TIME_WAIT do not hold the port; listeners do.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _supervise(config: ServerConfig, addresses: list[str], announce: Callable[[], None], serve_one: ServeOne) -> int:
    """Fork the server processes (process K at ``addresses[K]``), announce once all serve, relay signals,
    restart crashed children at their address."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    stopping = threading.Event()
    children: dict[int, multiprocessing.Process] = {}

    def start(slot: int) -> None:
        p = ctx.Process(target=_child_main, args=(config, addresses[slot], ready, serve_one), name=f"worker-{slot}",
                        daemon=False)
        p.start()
        children[slot] = p

    def on_signal(signum, frame) -> None:
        stopping.set()
        for p in children.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(config.processes):
        start(slot)
    pending = config.processes
    while pending and not stopping.is_set():
        try:
            ready.get(timeout=0.5)
            pending -= 1
        except queue.Empty:  # check whether a child died while starting
            if any(p.exitcode not in (None, 0) for p in children.values()):
                log.error("a worker process failed to start; stopping")
                on_signal(signal.SIGTERM, None)
                break
    if not stopping.is_set():
        announce()
        log.info("%d processes serving on %s", config.processes, " ".join(dict.fromkeys(addresses)))

    exit_code = 0
    while True:
        for slot, p in list(children.items()):
            p.join(timeout=0.2)
            if p.exitcode is None:
                continue
            metrics.process_ended(p.pid)
            if stopping.is_set():
                exit_code = max(exit_code, p.exitcode if p.exitcode > 0 else 0)
                del children[slot]
            elif p.exitcode == EXIT_BROKEN:
                log.error("worker process %d cannot serve (see above); stopping", p.pid)
                exit_code = EXIT_BROKEN
                on_signal(signal.SIGTERM, None)
            else:
                log.error("worker process %d died (exit code %s); starting a new one", p.pid, p.exitcode)
                start(slot)
        if not children:
            return exit_code


def _child_main(config: ServerConfig, address: str, ready, serve_one: ServeOne) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = serve_one(config, address, lambda: ready.put(os.getpid()))
    sys.stdout.flush()
    os._exit(code)


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


def stop_requested() -> threading.Event:
    """An event set by the next SIGTERM or SIGINT."""
    stop = threading.Event()
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

    _limit_malloc_arenas(config.threads)
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

    state.classifier = FaceModel(config.model, cannot_classify, recorder)
    server.start()
    set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving %s on %s (%s, %d threads, %d calls in flight at most; face model loaded at the first "
        "classify call)", ", ".join(SERVICE_NAMES), address,
        "TLS" + (" with client certificates" if config.tls_client_ca else "") if config.tls else "plaintext",
        config.threads, config.in_flight_limit,
    )
    ready()

    while not stop.wait(1.0):
        pass
    # Draining: health says NOT_SERVING so balancers move on, new calls are
    # refused, calls in flight get the grace period to finish.
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace).wait()
    log.info("stopped after serving %s", dict(sorted(state.served.items())) or "no calls")
    return EXIT_BROKEN if broken.is_set() else 0


class FaceModel:
    """The face model, loaded in a thread of its own at the first call that needs it.

    Rotation never waits for it, and a worker that only rotates never pays its
    start-up (~0.6 s of CPU and ~100 MiB per process). A classify call waits
    for the load while it lasts (until its deadline, if it has one, or its
    client leaves); calls arriving meanwhile wait for the same load.
    """

    def __init__(self, path: str | None, failed: Callable[[], None], recorder: Metrics) -> None:
        self._path = path
        self._failed = failed
        self._metrics = recorder
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._loader: threading.Thread | None = None
        self._model: Classifier | None = None

    def __call__(self, call: Call) -> Classifier:
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load, name="face-model", daemon=True)
                self._metrics.model(ModelState.LOADING)
                self._loader.start()
        admission.wait(self._done, call)
        if self._model is None:
            raise NotReady("the face model could not be loaded; this worker process is stopping (see its log)")
        return self._model

    def _load(self) -> None:
        from worker.faces import load_classifier
        from worker.faces.artifact import ModelError

        started = time.monotonic()
        try:
            self._model = load_classifier(self._path)
            log.info("face model %s %s loaded in %.1f s", self._model.name, self._model.version,
                     time.monotonic() - started)
        except ModelError as e:  # named by the artifact's checks: no traceback to add
            log.error("cannot load the face model: %s", e)
            self._failed()
        except Exception:
            log.exception("cannot load the face model %s", self._path or "(shipped default)")
            self._failed()
        finally:
            self._metrics.model(ModelState.FAILED if self._model is None else ModelState.READY)
            self._done.set()


def _limit_malloc_arenas(count: int) -> None:
    """At most ``count`` glibc malloc arenas in this process (as MALLOC_ARENA_MAX would).

    glibc gives threads arenas of their own and keeps what big images freed in
    each; the server has a thread per admitted call but only --threads decode
    at once, so more arenas than that only retain memory. No-op off glibc.
    """
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-8, count)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def set_health(servicer, status) -> None:
    """``status`` for the whole server and each of its services."""
    for name in ("", *SERVICE_NAMES):
        servicer.set(name, status)
