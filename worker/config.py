"""The options of `worker serve` (``ServerConfig``) and their checks before anything starts: a usage error
(``ConfigError``) for options that cannot work, a warning for those that work but expose the worker."""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from worker.decode import DEFAULT_MAX_PIXELS
from worker.storage import Roots

log = logging.getLogger("worker.server")  # the `worker serve` log keeps one name however its code is split


class ConfigError(ValueError):
    """Options that cannot work together (a usage error: `worker serve` exits 2)."""


# The longest of the worker's own time limits: a year, well within what gRPC's millisecond options hold.
MAX_SECONDS = 365 * 24 * 3600
MAX_PROCESSES = 1024
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


SOCKET_NAME = "worker-{}.sock"  # --socket-dir: process K's socket
_SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sockaddr_un.sun_path, less its NUL)


def check_config(config: ServerConfig) -> None:
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
        from worker.tls import check_tls  # cryptography is imported only for TLS

        check_tls(config)
    if config.model is not None:
        _check_model(config.model)
    try:
        Roots.of(config.data_roots, config.output_roots)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_reference_clients(config)


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
    if config.socket_dir is not None or is_loopback(config.host) or config.tls_client_ca is not None:
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


def warn_about_environment(config: ServerConfig) -> None:
    from worker.rotation import lossless_jpeg_available

    if not lossless_jpeg_available():
        log.warning(
            "lossless JPEG rotation is unavailable (libturbojpeg not found; on Debian/Ubuntu: "
            "apt-get install libturbojpeg0): JPEGs will be re-encoded with their own quantisation tables"
        )
    if config.allow_unauthenticated_references and not is_loopback(config.host) and config.socket_dir is None \
            and config.tls_client_ca is None and (config.data_roots or config.output_roots):
        log.warning("serving references on %s without client certificates (--allow-unauthenticated-references): "
                    "anyone who can reach this address can read files under --data-root and overwrite files under "
                    "--output-root", config.host)
    if not config.tls and not is_loopback(config.host):
        log.warning(
            "serving on %s WITHOUT TLS: anyone who can reach this address can use the worker "
            "(use --tls-cert/--tls-key, and --tls-client-ca to require client certificates)",
            config.host,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
