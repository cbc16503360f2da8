"""The driver's connection logic without a worker: targets, addresses, diagnosis, and the pool's choice of
connection. Pure logic, unconnected channels and gRPC servers in this process on loopback: seconds, no
processes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

import batch.channel
from batch.channel import Pool, Tls, absence, mismatch
from batch.errors import UsageError
from batch.targets import address_count, grpc_targets, worker_addresses
from tests.support.certificates import Pki
from tests.support.fleet import FLEET_NAME, dns_server
from tests.support.processes import free_port

# --- addresses and targets -------------------------------------------------------------------------------


def test_worker_options_split_on_commas_and_win_over_the_environment():
    env = {"BATCH_WORKER": "10.0.0.9:1"}
    assert worker_addresses(["a:1, b:2", " c:3 ,"], env) == ["a:1", "b:2", "c:3"]
    assert worker_addresses([], {"BATCH_WORKER": " x:1 ,, y:2"}) == ["x:1", "y:2"]
    assert worker_addresses([], {"BATCH_WORKER": "   "}) == []
    assert worker_addresses([], {}) == []


def test_ip_literals_merge_into_one_target_per_family_and_names_stay_apart():
    targets = grpc_targets(["127.0.0.1:5", "workers.example:50051", "[::1]:6", "10.0.0.2:7", "[fe80::2]:8",
                            "dns:///pool.example:9", "unix:/run/worker.sock"])
    assert targets == ["ipv4:127.0.0.1:5,10.0.0.2:7", "ipv6:[::1]:6,[fe80::2]:8", "dns:///workers.example:50051",
                       "dns:///pool.example:9", "unix:/run/worker.sock"]
    assert address_count(targets) == 7
    assert grpc_targets([]) == []


@pytest.mark.parametrize("address", ["localhost", "host:0", "host:65536", "a b:1", "[::1]", "http://host:1",
                                     "host:port", ":50051", "[not-ip]:1"])
def test_an_address_that_is_not_host_port_is_a_usage_error_naming_it(address):
    with pytest.raises(UsageError, match="is not HOST:PORT") as e:
        grpc_targets(["127.0.0.1:5", address])
    assert repr(address) in str(e.value)


# --- why no worker answered ------------------------------------------------------------------------------

@contextlib.contextmanager
def grpc_server_on_loopback(kind: str, pki: Pki) -> Iterator[str]:
    """A gRPC server in this process on 127.0.0.1: plaintext, TLS, or TLS requiring client certificates."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    if kind == "plaintext":
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                                            root_certificates=pki.ca.read_bytes() if kind == "mtls" else None,
                                            require_client_auth=kind == "mtls")
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"dns:///localhost:{port}"
    finally:
        server.stop(0)


MISMATCHES = {  # (worker, the driver's TLS: None, "ca", "other_ca" or "expired_client"), what is said
    "wrong CA": ("tls", "other_ca", "TLS handshake failed: the worker's certificate is not signed by the CA in "
                                    "--tls-ca"),
    "TLS to plaintext": ("plaintext", "ca", "TLS handshake failed: the worker does not speak TLS (drop --tls-ca)"),
    "plaintext to TLS": ("tls", None, "it probably requires TLS (give its CA with --tls-ca"),
    "no client certificate": ("mtls", "ca", "probably requires a client certificate (mTLS: --tls-cert and "
                                            "--tls-key)"),
    "client certificate refused": ("mtls", "expired_client", "it does not accept our client certificate"),
    "TLS that works": ("tls", "ca", None),
    "mTLS that works": ("mtls", "client", None),
    "plaintext that works": ("plaintext", None, None),
}


def _tls(kind: str | None, pki: Pki) -> Tls | None:
    return {None: None, "ca": Tls(pki.ca), "other_ca": Tls(pki.other_ca),
            "client": Tls(pki.ca, pki.client_cert, pki.client_key),
            "expired_client": Tls(pki.ca, pki.expired_client_cert, pki.expired_client_key)}[kind]


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_tls_mismatch_is_named_from_the_handshake_itself(pki, case):
    """What waiting cannot fix is found by a handshake with the worker (ssl's verify codes and alerts, whether
    a worker completes a TLS handshake or closes the connection after it), not by reading gRPC's words."""
    worker, tls, says = MISMATCHES[case]
    with grpc_server_on_loopback(worker, pki) as target:
        found = mismatch(target, _tls(tls, pki))
    assert found is None if says is None else says in found


def test_nothing_listening_or_no_host_port_is_no_mismatch(pki):
    """A closed port, a name that does not resolve and a unix: target: waiting may help, so nothing is final."""
    for target in (f"ipv4:127.0.0.1:{free_port()}", "dns:///nowhere.invalid:1", "unix:/nonexistent/worker.sock"):
        assert mismatch(target, None) is None
        assert mismatch(target, Tls(pki.ca)) is None


def test_absence_is_the_networks_own_answer_refused_or_no_such_name():
    """A closed port refuses a plain TCP connect; a name the DNS server says does not exist is NXDOMAIN; a name
    that resolves to a closed port is refused; an address that listens, or a unix: target, tells nothing."""
    closed = free_port()
    with dns_server() as (records, dns_port):
        records.addresses = ["127.0.0.1"]
        assert absence(grpc_targets([f"127.0.0.1:{closed}"])) == (f"nothing listens at 127.0.0.1:{closed} "
                                                                   "(connection refused)")
        assert absence([f"dns://127.0.0.1:{dns_port}/nosuch.test:{closed}"]) == ("the name nosuch.test does not "
                                                                                 "exist (NXDOMAIN)")
        assert absence([f"dns://127.0.0.1:{dns_port}/{FLEET_NAME}:{closed}"]) == (
            f"nothing listens at 127.0.0.1:{closed} (connection refused)")
        with socket.create_server(("127.0.0.1", 0)) as server:  # one address of two listens
            port = server.getsockname()[1]
            assert absence(grpc_targets([f"127.0.0.1:{closed}", f"127.0.0.1:{port}"])) is None
        assert absence(["unix:/nonexistent/worker.sock"]) is None


def test_connect_to_nothing_gives_up_after_the_start_grace_saying_nothing_listens(monkeypatch):
    """Refused on every address: the wait ends when START_GRACE (here 0.2 s) ends, not after the whole timeout,
    and says which address refused."""
    monkeypatch.setattr(batch.channel, "START_GRACE", 0.2)
    address = f"127.0.0.1:{free_port()}"

    async def connect() -> None:
        pool = Pool(grpc_targets([address]), connections=2)
        try:
            await pool.connect(timeout=60.0)
        finally:
            await pool.close()

    with pytest.raises(UsageError) as e:
        asyncio.run(connect())
    assert str(e.value).startswith(f"no worker answered at ipv4:{address}: nothing listens at {address} "
                                   "(connection refused), still after ")


# --- the pool's choice of connection ---------------------------------------------------------------------


def _with_pool(connections: int, body) -> None:
    """Run ``body(pool)`` on a pool whose channels point where nothing listens (none is ever READY)."""

    async def run() -> None:
        pool = Pool(grpc_targets([f"127.0.0.1:{free_port()}"]), connections=connections)
        try:
            await body(pool)
        finally:
            await pool.close()

    asyncio.run(run())


def test_calls_go_round_the_connections_least_busy_first():
    async def body(pool: Pool) -> None:
        async with contextlib.AsyncExitStack() as calls:
            lent = [await calls.enter_async_context(pool.call()) for _ in range(5)]
        assert len({id(s) for s in lent[:4]}) == 4  # one call on each connection
        assert lent[4] is lent[0]  # all equally busy: round robin goes on

    _with_pool(4, body)


def test_calls_are_balanced_per_worker_process_not_per_connection():
    """Two connections that reached the same worker process count as one: its two calls in flight make it
    busier than a connection with one."""

    async def body(pool: Pool) -> None:
        async with contextlib.AsyncExitStack() as calls:
            a = await calls.enter_async_context(pool.call())
            pool.answered(a, "127.0.0.1:5/100")
            b = await calls.enter_async_context(pool.call())
            pool.answered(b, "127.0.0.1:5/100")  # the kernel put this connection on the same process
            c = await calls.enter_async_context(pool.call())
            assert len({id(a), id(b), id(c)}) == 3
            # Every connection has one call in flight, but process 100 has two: the fourth call goes to c's.
            assert await calls.enter_async_context(pool.call()) is c

    _with_pool(3, body)


def test_the_first_calls_spread_over_the_addresses_before_their_connections():
    """Before any answer says which process a connection reached, each address is at least one process (the
    embedded worker: one Unix socket per process): two calls go to two addresses, not to two connections of
    the first."""

    async def run() -> None:
        pool = Pool(grpc_targets([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]), connections=4)
        try:
            async with contextlib.AsyncExitStack() as calls:
                lent = [await calls.enter_async_context(pool.call()) for _ in range(4)]
            by_stub = {c.stub: c.address for c in pool._conns}
            assert len({by_stub[s] for s in lent[:2]}) == 2  # one call at each address
            assert len({id(s) for s in lent}) == 4  # and then round the connections of each
        finally:
            await pool.close()

    asyncio.run(run())
