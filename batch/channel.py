"""Connections to the workers: targets, load balancing, health checking, TLS.

Every gRPC channel uses gRPC's own ``round_robin`` policy over all the
addresses its target resolves to, with client-side health checking, so calls
spread over the healthy workers and a dead or draining one is skipped.

One channel is one HTTP/2 connection per address, and a multi-process worker
shares its port with SO_REUSEPORT: the kernel spreads *connections* over the
processes, not calls. So the pool opens several channels per target (each
with its own subchannels) and sends each call on the least busy ready one:
with enough connections every worker process gets its share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from batch.errors import UsageError
from worker.api import imageworker_v1_pb2_grpc

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})
DEFAULT_CONNECTIONS = 8  # per worker address; more than a worker's processes, see module docstring
CONNECT_TIMEOUT = 30.0  # seconds to wait for a named worker to answer health checks before giving up
ENV_VAR = "BATCH_WORKER"
URI_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
log = logging.getLogger("batch.channel")  # `batch run -v`: connects, lost connections, reconnects


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise UsageError("--tls-cert and --tls-key go together (a client certificate and its key)")

        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read TLS file {path}: {e.strerror}") from None

        self.context()  # unusable files fail here, named, not as a handshake that never succeeds
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def context(self) -> ssl.SSLContext:
        """The same trust and client certificate as a Python SSL context: it checks the files (UsageError
        naming the file and the problem) and lets ``handshake_problem`` ask a worker what gRPC will not say."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca))
        except ssl.SSLError as e:  # before OSError, which it derives from
            raise UsageError(f"--tls-ca {self.ca} holds no PEM certificate ({e.reason})") from None
        except OSError as e:
            raise UsageError(f"cannot read --tls-ca {self.ca}: {e.strerror}") from None
        if self.cert is not None:
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except ssl.SSLError as e:
                if e.reason == "KEY_VALUES_MISMATCH":
                    raise UsageError(f"--tls-key {self.key} is not the key of --tls-cert {self.cert}") from None
                raise UsageError(f"--tls-cert {self.cert} and --tls-key {self.key} are not a PEM certificate and "
                                 f"its private key ({e.reason or e})") from None
            except OSError as e:
                raise UsageError(f"cannot read --tls-cert {self.cert} or --tls-key {self.key}: {e.strerror}") from None
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def handshake_problem(self, target: str, timeout: float = 3.0) -> str | None:
        """Why a TLS handshake with ``target``'s first address fails, from the handshake's own codes (gRPC's
        error text says only "handshake failed"); None when it succeeds or the target is no host:port."""
        address = _probe_address(target)
        if address is None:
            return None
        host, port = address
        try:
            with socket.create_connection((host, port), timeout) as raw, \
                    self.context().wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(timeout)
                # Under TLS 1.3 a worker refuses a client certificate after the handshake: with an alert, or
                # (gRPC's, when it has expired) by closing the connection before it says anything.
                if not tls.recv(1) and self.cert is not None:
                    problem = ("the worker closed the connection at once: it does not accept our client certificate "
                               "(--tls-cert has expired, or is not signed by the CA the worker trusts)")
                    return f"TLS handshake failed: {problem}"
        except ssl.SSLCertVerificationError as e:
            problem = _VERIFY_PROBLEMS.get(e.verify_code, f"the worker's certificate does not verify: "
                                                          f"{e.verify_message}")
        except ssl.SSLError as e:
            problem = _ALERT_PROBLEMS.get(e.reason)
        except OSError:  # refused, or nothing to read yet: nothing the handshake can tell
            return None
        else:
            return None
        return f"TLS handshake failed: {problem}" if problem else None


# X509_V_ERR_* codes of OpenSSL (x509_vfy.h) that have a cause a user can act on.
_VERIFY_PROBLEMS = {
    10: "the worker's certificate has expired: renew it (worker serve --tls-cert)",
    9: "the worker's certificate is not valid yet (check the clocks, or its start date)",
    62: "the worker's certificate is for another name than the address given to --worker",
    64: "the worker's certificate is for another IP address than the one given to --worker",
    2: "the worker's certificate is not signed by the CA in --tls-ca",
    18: "the worker's certificate is self-signed, not signed by the CA in --tls-ca",
    19: "the worker's certificate is not signed by the CA in --tls-ca",
    20: "the worker's certificate is not signed by the CA in --tls-ca",
    21: "the worker's certificate is not signed by the CA in --tls-ca",
}
# OpenSSL's reasons for alerts a worker sends about our client certificate.
_ALERT_PROBLEMS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the worker refused our client certificate: it has expired (--tls-cert)",
    "TLSV1_ALERT_UNKNOWN_CA": "the worker does not trust our client certificate (--tls-cert is not signed by the "
                              "CA it trusts)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the worker refused our client certificate (--tls-cert)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the worker requires a client certificate (mTLS: --tls-cert and "
                                         "--tls-key)",
    "WRONG_VERSION_NUMBER": "the worker does not speak TLS (drop --tls-ca)",
}


def _probe_address(target: str) -> tuple[str, int] | None:
    """The first host and port a gRPC target names (ipv4:/ipv6: lists, dns:///name:port, name:port)."""
    if target.startswith(("ipv4:", "ipv6:")):
        target = target.split(":", 1)[1].split(",")[0]
    elif target.startswith("dns:"):
        target = target.rsplit("/", 1)[-1]
    elif target.startswith(URI_SCHEMES):
        return None
    return _host_port(target)


def worker_addresses(options: Iterable[str], environ: dict[str, str] | None = None) -> list[str]:
    """The --worker values (each may hold a comma-separated list), else $BATCH_WORKER, split and stripped."""
    values = list(options)
    if not values:
        env = (os.environ if environ is None else environ).get(ENV_VAR, "")
        values = [env] if env.strip() else []
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def grpc_targets(addresses: list[str]) -> list[str]:
    """gRPC target strings for worker addresses.

    IP literals merge into one static ``ipv4:``/``ipv6:`` list so one channel
    balances over them; host names and explicit URIs (``dns:///name:port``,
    ``unix:...``) stay targets of their own, resolved by gRPC (a DNS name with
    several A records is balanced the same way).
    """
    v4: list[str] = []
    v6: list[str] = []
    others: list[str] = []
    for address in addresses:
        if address.startswith(URI_SCHEMES):
            others.append(address)  # already a gRPC target URI
            continue
        host, port = _host_port(address) or (None, None)
        if host is None:
            raise UsageError(
                f"worker address {address!r} is not HOST:PORT (e.g. 127.0.0.1:50051, workers.example:50051, "
                "dns:///workers.example:50051)"
            )
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            others.append(f"dns:///{host}:{port}")
            continue
        (v4 if ip.version == 4 else v6).append(f"{host}:{port}" if ip.version == 4 else f"[{host}]:{port}")
    targets = [f"ipv4:{','.join(v4)}"] if v4 else []
    targets += [f"ipv6:{','.join(v6)}"] if v6 else []
    return targets + others


def _host_port(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^\s:/\[\]]+):(\d{1,5})", address)
    if not m:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return (host, int(port)) if 0 < int(port) < 65536 else None


def address_count(targets: list[str]) -> int:
    """How many worker addresses the targets name (a DNS name counts once: it is resolved later)."""
    return sum(len(t.split(":", 1)[1].split(",")) if t.startswith(("ipv4:", "ipv6:")) else 1 for t in targets)


class Pool:
    """``connections`` channels per target; ``call()`` lends the least busy ready one's stub."""

    def __init__(self, targets: list[str], connections: int = DEFAULT_CONNECTIONS, tls: Tls | None = None) -> None:
        options = [
            ("grpc.service_config", SERVICE_CONFIG),
            # Without a local pool, channels to one target would share one connection.
            ("grpc.use_local_subchannel_pool", 1),
            # Rotated 100 MP images come back bigger than gRPC's 4 MiB default; the worker sets the limit.
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        credentials = tls.credentials() if tls else None
        self.targets = targets
        self.tls = tls
        self._channels = []
        for target in targets:
            for _ in range(connections):
                if credentials:
                    channel = grpc.aio.secure_channel(target, credentials, options=options)
                else:
                    channel = grpc.aio.insecure_channel(target, options=options)
                self._channels.append(channel)
        self._stubs = [imageworker_v1_pb2_grpc.ImageWorkerStub(c) for c in self._channels]
        self._busy = [0] * len(self._channels)
        # Which worker process answers on each channel ("host:port/pid" from the replies), once known:
        # SO_REUSEPORT hands each *connection* to one process by a hash, so several connections often
        # land on the same process; balancing calls per process, not per connection, keeps all busy.
        self._process: list[str | None] = [None] * len(self._channels)
        self._index = {id(stub): i for i, stub in enumerate(self._stubs)}
        self._next = 0
        self._connected: bool | None = None  # whether some channel was ready at the last call; None: no call yet

    async def probe(self, timeout: float = 3.0) -> list[str | None]:
        """One health check per channel that does not wait for a connection: None where it answers, else
        gRPC's details. Several, because a channel over several addresses (``localhost``: ::1 and
        127.0.0.1) reports one address's failure at a time, not always the telling one."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async def check(channel) -> str | None:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                return None
            except grpc.aio.AioRpcError as e:
                return e.details() or e.code().name

        return list(await asyncio.gather(*(check(c) for c in self._channels)))

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until some channel is ready (a worker answers health checks with SERVING), then briefly for the rest.

        Returns False if none is ready within ``timeout`` seconds.
        """
        waits = [asyncio.ensure_future(c.channel_ready()) for c in self._channels]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            await asyncio.wait(waits, timeout=2.0)  # the other connections are usually milliseconds behind
            return True
        finally:
            for w in waits:
                w.cancel()

    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Wait for a worker to answer; UsageError at once when gRPC's error shows waiting cannot help (a TLS
        mismatch), else after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if await self.wait_ready(min(2.0, max(deadline - time.monotonic(), 0.1))):
                return
            answers = await self.probe()
            if None in answers:
                return
            # A diagnosis that waiting cannot fix (a TLS mismatch) wins over "connection refused" from another
            # address.
            reason, final = max((connect_failure(details, self.tls) for details in answers), key=lambda rf: rf[1])
            if self.tls is not None and (precise := await asyncio.to_thread(self.tls.handshake_problem,
                                                                             self.targets[0])):
                reason, final = precise, True
            if final or time.monotonic() >= deadline:
                break
        raise UsageError(
            f"no worker answered at {', '.join(self.targets)}"
            + ("" if final else f" within {timeout:.0f} s")
            + f": {reason}"
        )

    @asynccontextmanager
    async def call(self) -> AsyncIterator[imageworker_v1_pb2_grpc.ImageWorkerStub]:
        i = self._pick()
        self._busy[i] += 1
        try:
            yield self._stubs[i]
        finally:
            self._busy[i] -= 1

    def answered(self, stub: imageworker_v1_pb2_grpc.ImageWorkerStub, worker: str) -> None:
        """Note which worker process answered a call made with ``stub`` (a reply's ``worker`` field)."""
        i = self._index.get(id(stub))
        if i is not None and worker:
            self._process[i] = worker

    def _pick(self) -> int:
        n = len(self._channels)
        ready = [
            (i + self._next) % n for i in range(n)
            if self._channels[(i + self._next) % n].get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY
        ]
        if bool(ready) != self._connected:  # a line per change, not per call
            if ready:
                log.info("%s: %d of %d connections ready", "reconnected" if self._connected is False else "connected",
                         len(ready), n)
            else:
                log.warning("no connection to a worker is ready; reconnecting (calls fail fast and are retried)")
            self._connected = bool(ready)
        # No channel ready: pick one anyway; the call fails fast with UNAVAILABLE and is retried after a backoff.
        candidates = ready or [(i + self._next) % n for i in range(n)]
        in_flight: dict[str | int, int] = {}  # per worker process; a channel not yet answered is its own group
        for i in range(n):
            key = self._process[i] or i
            in_flight[key] = in_flight.get(key, 0) + self._busy[i]
        # Least busy process first, then least busy connection; min keeps the first of equals: round robin.
        best = min(candidates, key=lambda i: (in_flight[self._process[i] or i], self._busy[i]))
        self._next = (best + 1) % n
        return best

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))


def connect_failure(details: str, tls: Tls | None) -> tuple[str, bool]:
    """Explain why no worker answered, from gRPC's error details; and whether waiting longer cannot help."""
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return ("TLS handshake failed: the worker's certificate is not signed by the CA in --tls-ca "
                "(or does not name this host)", True)
    if "wrong_version_number" in lowered or ("handshake" in lowered and "tls" in lowered and tls):
        return ("TLS handshake failed: the worker does not seem to speak TLS (drop --tls-ca), "
                f"or refused ours: {details}", True)
    if "socket closed" in lowered or "connection reset" in lowered:
        if tls is None:
            return ("the worker closed the connection: it probably requires TLS "
                    "(give its CA with --tls-ca, and --tls-cert/--tls-key if it asks for client certificates)", True)
        if tls.cert is None:
            return ("the worker closed the TLS connection: it probably requires a client certificate "
                    "(mTLS: --tls-cert and --tls-key)", True)
        return ("the worker closed the TLS connection: it probably does not accept our client certificate "
                "(--tls-cert is not signed by the CA the worker trusts)", True)
    if "connection refused" in lowered:
        return "nothing listens there (connection refused): is `worker serve` running at that address?", False
    return details, False
