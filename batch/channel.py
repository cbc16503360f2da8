"""Connections to the workers: load balancing, health checking, TLS (the targets come from batch/targets.py).

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
import json
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from batch.errors import UsageError
from batch.targets import DEFAULT_CONNECTIONS, URI_SCHEMES, address_count, host_port
from worker.api import imageworker_v1_pb2_grpc

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})
CONNECT_TIMEOUT = 30.0  # seconds to wait for a named worker to answer health checks before giving up
# Seconds to wait while every address refuses connections or every name does not exist: what a worker starting
# looks like (it listens a few seconds after `worker serve`; a Kubernetes headless Service's name is NXDOMAIN
# until a worker is ready), and else a mistake best reported soon.
START_GRACE = 10.0
log = logging.getLogger("batch.channel")  # `batch run -v`: connects, lost connections, reconnects


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # the name the workers' certificates must bear, whatever address is called

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
                    self.context().wrap_socket(raw, server_hostname=self.server_name or host) as tls:
                tls.settimeout(timeout)
                # Under TLS 1.3 a worker refuses a client certificate after the handshake: with an alert, or
                # (gRPC's) by closing the connection before it says anything, where it would send its HTTP/2
                # settings at once to a client it accepts.
                if tls.recv(1):
                    return None
                if self.cert is None:
                    return ("the worker closed the TLS connection: it probably requires a client certificate "
                            "(mTLS: --tls-cert and --tls-key)")
                problem = ("the worker closed the connection at once: it does not accept our client certificate "
                           "(--tls-cert has expired, or is not signed by the CA the worker trusts)")
        except ssl.SSLCertVerificationError as e:
            problem = _VERIFY_PROBLEMS.get(e.verify_code, f"the worker's certificate does not verify: "
                                                          f"{e.verify_message}")
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):  # closed mid-handshake: a worker stopping, say
            return None
        except ssl.SSLError as e:
            problem = _ALERT_PROBLEMS.get(e.reason, f"the worker refused it ({e.reason or type(e).__name__})")
        except OSError:  # refused, or nothing to read yet: nothing the handshake can tell
            return None
        return f"TLS handshake failed: {problem}"


# X509_V_ERR_* codes of OpenSSL (x509_vfy.h) that have a cause a user can act on.
_VERIFY_PROBLEMS = {
    10: "the worker's certificate has expired: renew it (worker serve --tls-cert)",
    9: "the worker's certificate is not valid yet (check the clocks, or its start date)",
    62: "the worker's certificate does not bear the name given to --worker (or --tls-server-name): give one it "
        "bears",
    64: "the worker's certificate does not bear the IP address given to --worker: connect by a name it bears, or "
        "name it with --tls-server-name NAME",
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
    return host_port(target)


@dataclass
class _Connection:
    """One channel of the pool and what the pool knows of it."""

    channel: grpc.aio.Channel
    stub: imageworker_v1_pb2_grpc.ImageWorkerStub
    address: str  # the target, or for a name the pool resolves, the "ip:port" it resolved to
    busy: int = 0
    # Which worker process answers on it ("host:port/pid" from the replies), once known: SO_REUSEPORT hands each
    # *connection* to one process by a hash, so several connections often land on the same process; balancing
    # calls per process, not per connection, keeps all busy.
    process: str | None = None
    retired: bool = False  # its address left the name's records: no new calls, closed once idle
    name: DnsName | None = None  # the name it was resolved from, if any


class Pool:
    """``connections`` channels per worker address; ``call()`` lends the least busy ready one's stub.

    A DNS name (``dns:///name:port``, ``dns://server:port/name:port`` or ``name:port``) is resolved here, not
    by gRPC, and again by ``refresh``: gRPC re-resolves only when connections fail, so a worker joining the
    name mid-run would wait for a failure to get calls. Each address gets channels of its own, which also
    lets the run count the fleet it has (``addresses``).
    """

    def __init__(self, targets: list[str], connections: int = DEFAULT_CONNECTIONS, tls: Tls | None = None) -> None:
        self._options = [
            ("grpc.service_config", SERVICE_CONFIG),
            # Without a local pool, channels to one target would share one connection.
            ("grpc.use_local_subchannel_pool", 1),
            # Rotated 100 MP images come back bigger than gRPC's 4 MiB default; the worker sets the limit.
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self._credentials = tls.credentials() if tls else None
        self.targets = targets
        self.tls = tls
        self.connections = connections
        self._conns: list[_Connection] = []
        self._names = {t: name for t in targets if (name := dns_name(t)) is not None}
        for target in targets:
            name = self._names.get(target)
            if name is not None:
                addresses = name.resolve() or [target]  # unresolvable: gRPC will say why
            elif target.startswith(("ipv4:", "ipv6:")):  # channels per address: the results name the one called
                addresses = target.split(":", 1)[1].split(",")
            else:
                addresses = [target]
            for address in addresses:
                self._open(address, name)
        self._next = 0
        self._connected: bool | None = None  # whether some channel was ready at the last call; None: no call yet

    def _open(self, address: str, name: DnsName | None) -> None:
        options = list(self._options)
        target = address if address.startswith(URI_SCHEMES) else _ip_target(address)
        # TLS checks the worker's certificate against the name asked for, else the name resolved, not the address.
        expected = (self.tls.server_name if self.tls else None) or (name.host if name else None)
        if expected:
            options += [("grpc.ssl_target_name_override", expected), ("grpc.default_authority", expected)]
        for _ in range(self.connections):
            if self._credentials:
                channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            self._conns.append(_Connection(channel, imageworker_v1_pb2_grpc.ImageWorkerStub(channel), address,
                                           name=name))

    @property
    def addresses(self) -> int:
        """Worker addresses the pool has now (each resolved address of a name counts)."""
        return address_count(list({c.address for c in self._conns if not c.retired}))

    async def refresh(self) -> bool:
        """Resolve the names again: channels for addresses that joined, none for those that left. Whether the
        fleet changed."""
        changed = False
        for target, name in self._names.items():
            found = set(await asyncio.to_thread(name.resolve))
            if not found:
                continue  # a failed lookup is no news: keep what we have
            have = {c.address for c in self._conns if c.name is name and not c.retired}
            for address in sorted(found - have):
                log.info("%s: worker address %s joined", target, address)
                self._open(address, name)
            for conn in self._conns:
                if conn.name is name and not conn.retired and conn.address not in found:
                    conn.retired = True
            for address in sorted(have - found):
                log.info("%s: worker address %s left", target, address)
            changed = changed or found != have
        await self._close_idle_retired()
        return changed

    async def _close_idle_retired(self) -> None:
        idle = [c for c in self._conns if c.retired and c.busy == 0]
        self._conns = [c for c in self._conns if c not in idle]
        await asyncio.gather(*(c.channel.close() for c in idle))

    async def probe(self, timeout: float = 3.0) -> list[str | None]:
        """One health check per channel that does not wait for a connection: None where it answers, else
        gRPC's details (words to show, never to decide by)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async def check(channel) -> str | None:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                return None
            except grpc.aio.AioRpcError as e:
                return e.details() or e.code().name

        return list(await asyncio.gather(*(check(c.channel) for c in self._conns)))

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until some channel is ready (a worker answers health checks with SERVING), then briefly for the rest.

        Returns False if none is ready within ``timeout`` seconds.
        """
        waits = [asyncio.ensure_future(c.channel.channel_ready()) for c in self._conns]
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
        """Wait for a worker to answer; UsageError at once when a handshake shows waiting cannot help (a TLS
        mismatch: ``mismatch``), after START_GRACE seconds when nothing can be there (``absence``), else after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        absent_since: float | None = time.monotonic()  # since when ``absence`` has had an answer, if it has
        told = False  # that we wait for a worker to start
        while True:
            if self._names:
                await self.refresh()  # a name that appears while we wait gets its channels now
            wait = min(2.0, max(deadline - time.monotonic(), 0.1))
            if absent_since is not None:  # nothing there (or no answer yet): look again when the grace ends
                wait = min(wait, max(absent_since + START_GRACE - time.monotonic(), 0.1))
            if await self.wait_ready(wait):
                return
            answers = await self.probe()
            if None in answers:
                return
            # A TLS mismatch, which waiting cannot fix, at any target wins over gRPC's words for the failure.
            found = await asyncio.gather(*(asyncio.to_thread(mismatch, t, self.tls) for t in self.targets))
            precise = next((m for m in found if m is not None), None)
            reason, final = (precise, True) if precise else (answers[0], False)
            absent = None if final else await asyncio.to_thread(absence, self.targets)
            if absent is None:
                absent_since, told = None, False
            else:
                absent_since = absent_since or time.monotonic()
                waited = time.monotonic() - absent_since
                if waited >= START_GRACE:
                    raise UsageError(f"no worker answered at {', '.join(self.targets)}: {absent}, still after "
                                     f"{waited:.0f} s: is `worker serve` running there, and is the address right?")
                if not told:
                    log.warning("%s: waiting up to %.0f s more for a worker to start", absent, START_GRACE - waited)
                    told = True
            if final or time.monotonic() >= deadline:
                break
        raise UsageError(
            f"no worker answered at {', '.join(self.targets)}"
            + ("" if final else f" within {timeout:.0f} s")
            + f": {reason}"
        )

    def call(self) -> _Call:
        """``async with pool.call() as stub``: the least busy connection's stub, counted busy while in use."""
        return _Call(self)

    def answered(self, stub: imageworker_v1_pb2_grpc.ImageWorkerStub, worker: str) -> str:
        """Note which worker process answered a call made with ``stub`` (a reply's ``worker`` field,
        "host:port/pid"); returns the results' name for it: the address called and the process id, since
        workers on 127.0.0.2 and 127.0.0.3 of one host share its name and port (a Unix socket: its own name)."""
        for conn in self._conns:
            if conn.stub is stub:
                if worker:
                    conn.process = worker
                if worker and host_port(conn.address) is not None:
                    return f"{conn.address}/{worker.rpartition('/')[2]}"
                return worker
        return worker

    def _pick(self) -> tuple[_Connection, int]:
        """The connection for the next call, and the calls its worker process has in flight now."""
        live = [c for c in self._conns if not c.retired]
        n = len(live)
        order = [live[(i + self._next) % n] for i in range(n)]
        ready = [c for c in order if c.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY]
        if bool(ready) != self._connected:  # a line per change, not per call
            if ready:
                log.info("%s: %d of %d connections ready", "reconnected" if self._connected is False else "connected",
                         len(ready), n)
            else:
                log.warning("no connection to a worker is ready; reconnecting (calls fail fast and are retried)")
            self._connected = bool(ready)
        # No channel ready: pick one anyway; the call fails fast with UNAVAILABLE and is retried after a backoff.
        candidates = ready or order
        # Calls in flight per worker process; the channels not yet answered count per address, which is at
        # least one process of its own (the embedded worker: one Unix socket per process), so the first calls
        # of a run spread over the addresses before they spread over one address's connections.
        in_flight: dict[str, int] = {}
        for c in live:
            key = c.process or c.address
            in_flight[key] = in_flight.get(key, 0) + c.busy
        # Least busy process first, then least busy connection; min keeps the first of equals: round robin.
        best = min(candidates, key=lambda c: (in_flight[c.process or c.address], c.busy))
        self._next = (live.index(best) + 1) % n
        return best, in_flight[best.process or best.address]

    async def close(self) -> None:
        await asyncio.gather(*(c.channel.close() for c in self._conns))


class _Call:
    """``Pool.call``'s context: a class, not ``asynccontextmanager``, whose generator cost a few microseconds
    on every call of a run."""

    __slots__ = ("_pool", "_conn", "ahead")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn: _Connection | None = None
        self.ahead = 0  # calls the chosen worker process had in flight when this one was sent

    async def __aenter__(self) -> imageworker_v1_pb2_grpc.ImageWorkerStub:
        self._conn, self.ahead = self._pool._pick()
        self._conn.busy += 1
        return self._conn.stub

    async def __aexit__(self, *exc: object) -> None:
        self._conn.busy -= 1


@dataclass
class DnsName:
    """A worker name the pool resolves itself: ``host`` and ``port``, asked of ``server`` (host, port) or of the
    system's resolver."""

    host: str
    port: int
    server: tuple[str, int] | None = None

    def resolve(self) -> list[str]:
        """The name's addresses as "ip:port" (IPv6 bracketed), sorted; [] when the lookup fails."""
        import dns.exception  # dnspython only for names (~40 ms of imports at every start otherwise)

        try:
            return self.lookup()
        except NameMissing:  # said once by whoever waits for it (Pool.connect), not at every look-up
            log.info("%s does not exist (NXDOMAIN)", self.host)
            return []
        except (OSError, dns.exception.DNSException) as e:
            log.warning("cannot resolve %s: %s", self.host, e)
            return []

    def lookup(self) -> list[str]:
        """``resolve``, raising the resolver's error: NameMissing when the answer is that the name does not exist."""
        import dns.resolver

        try:
            if self.server is None:
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                ips = {info[4][0] for info in infos}
            else:
                ips = set(_query(self.host, self.server))
        except socket.gaierror as e:
            if e.errno == socket.EAI_NONAME:
                raise NameMissing(self.host) from e
            raise
        except dns.resolver.NXDOMAIN as e:
            raise NameMissing(self.host) from e
        return sorted(f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}" for ip in ips)


class NameMissing(LookupError):
    """The resolver's answer: this name does not exist (NXDOMAIN)."""


def absence(targets: list[str], timeout: float = 1.0) -> str | None:
    """Why no worker can be at any of ``targets`` now, from the network's own answers, never gRPC's text: every
    name does not exist (NameMissing) and every address refuses a plain TCP connection. None when an address
    accepts one, or an answer is less clear (a timeout, a lookup that failed for now, a ``unix:`` target): then
    gRPC's handshake and health checks tell more, and waiting may help."""
    missing: list[str] = []
    refused: list[str] = []
    for target in targets:
        if (name := dns_name(target)) is not None:
            import dns.exception

            try:
                addresses = name.lookup()
            except NameMissing:
                missing.append(name.host)
                continue
            except (OSError, dns.exception.DNSException):
                return None
        elif target.startswith(("ipv4:", "ipv6:")):
            addresses = target.split(":", 1)[1].split(",")
        else:
            return None
        for address in addresses:
            host, port = host_port(address) or (None, None)
            if host is None:
                return None
            try:
                socket.create_connection((host, port), timeout).close()
                return None
            except ConnectionRefusedError:
                refused.append(address)
            except OSError:
                return None
    said = [f"the name {', '.join(missing)} does not exist (NXDOMAIN)"] if missing else []
    said += [f"nothing listens at {', '.join(refused)} (connection refused)"] if refused else []
    return "; ".join(said)


def dns_name(target: str) -> DnsName | None:
    """The name a ``dns:`` target names (``dns:///name:port``, ``dns://server[:port]/name:port``), else None."""
    m = re.fullmatch(r"dns:(?://([^/]*)/)?([^/]+)", target)
    if not m:
        return None
    hp = host_port(m.group(2))
    if hp is None:
        return None
    server = None
    if m.group(1):
        sp = host_port(m.group(1)) or (m.group(1).strip("[]"), 53)
        server = (sp[0], sp[1])
    return DnsName(hp[0], hp[1], server)


def _query(host: str, server: tuple[str, int]) -> list[str]:
    """A and AAAA records of ``host`` asked of the DNS server ``server`` (dnspython: the target names it)."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    resolver.lifetime = 3.0
    ips: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            ips += [r.address for r in resolver.resolve(host, rdtype)]
        except dns.resolver.NoAnswer:
            continue
    return ips


def _ip_target(address: str) -> str:
    return f"ipv6:{address}" if address.startswith("[") else f"ipv4:{address}"


def mismatch(target: str, tls: Tls | None, timeout: float = 3.0) -> str | None:
    """Why this driver's TLS settings can never work with the worker at ``target`` (its first address), from the
    handshake's own codes and never gRPC's text: the worker's certificate, ours, or TLS on one side only. None
    when a handshake finds no such problem (or nothing answers): then waiting may help."""
    if tls is not None:
        return tls.handshake_problem(target, timeout)
    return _requires_tls(target, timeout)


def _requires_tls(target: str, timeout: float) -> str | None:
    """A plaintext driver's problem with ``target``: the worker completes a TLS handshake (which a plaintext
    worker fails at its first byte), so it speaks only TLS."""
    address = _probe_address(target)
    if address is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # any certificate: this asks only whether the worker speaks TLS
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(address, timeout) as raw, ctx.wrap_socket(raw, server_hostname=address[0]):
            pass
    except OSError:  # ssl.SSLError included: no TLS there, or nothing at all
        return None
    return ("the worker closed the connection: it probably requires TLS "
            "(give its CA with --tls-ca, and --tls-cert/--tls-key if it asks for client certificates)")
