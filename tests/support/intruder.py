"""Another local user looking for a worker to use; tests/worker/test_trust.py runs it as ``nobody`` during a batch.

    python -I intruder.py --secret PATH --plant PATH [--tcp PORT]... [--unix PATH]...

It lists what any user can see (listening loopback TCP ports in /proc/net/tcp and tcp6, listening Unix
sockets in /proc/net/unix), then tries to use the addresses it is given (the ones that belong to the batch
under test, so that nothing else on a shared machine is called): a plain connect, a health check, and a Rotate
by reference that reads ``--secret`` and writes ``--plant``. It prints one JSON object saying what it saw and
what each attempt got.

It needs only the standard library until a connect succeeds (then grpc and the generated stubs, if this user
can import them), so it runs as another user from a copy in a public folder, whatever the permissions of the
checkout and its virtual environment.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix: a listening socket
TIMEOUT = 5.0


def loopback_tcp_ports() -> list[int]:
    """Ports listening on 127.0.0.0/8 or ::1 (or every address), as /proc/net/tcp{,6} show them to anyone."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, port = local.split(":")
            if state == LISTEN and (host.endswith("7F") or host in ("00000000", "0" * 32) or
                                    host == "00000000000000000000000001000000"):
                ports.add(int(port, 16))
    return sorted(ports)


def listening_unix_paths() -> list[str]:
    """Paths of listening Unix sockets, as /proc/net/unix shows them to anyone."""
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[3], 16) & ACCEPTING and fields[7].startswith("/"):
            paths.append(fields[7])
    return sorted(set(paths))


def connect(family: int, address) -> str:
    """"ok", or the errno name that refused the connection."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(address)
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))
    return "ok"


def call(target: str, secret: str, plant: str) -> dict[str, str]:
    """A health check and a Rotate by reference at ``target``: "OK"/"SERVING", or the status code's name."""
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from worker.api import imageworker_v1_pb2 as v1
        from worker.api import imageworker_v1_pb2_grpc as v1_grpc
    except ImportError as e:  # the connect alone already showed the worker open to this user
        return {"health": f"not tried: {e}", "rotate": f"not tried: {e}"}
    got = {}
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            got["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        except grpc.RpcError as e:
            got["health"] = e.code().name
        request = v1.RotateRequest(degrees=90, source=v1.ImageRef(path=secret), destination=v1.ImageRef(path=plant))
        try:
            v1_grpc.ImageWorkerStub(channel).Rotate(request, timeout=TIMEOUT)
            got["rotate"] = "OK"
        except grpc.RpcError as e:
            got["rotate"] = e.code().name
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret", required=True, help="a file the intruder may not read, to ask a worker for")
    ap.add_argument("--plant", required=True, help="where the intruder would like a worker to write")
    ap.add_argument("--tcp", type=int, action="append", default=[], help="a loopback port to try")
    ap.add_argument("--unix", action="append", default=[], help="a Unix socket path to try")
    args = ap.parse_args()
    seen_ports, seen_paths = loopback_tcp_ports(), listening_unix_paths()
    tried = []
    attempts = [(f"127.0.0.1:{port}", port in seen_ports, socket.AF_INET, ("127.0.0.1", port)) for port in args.tcp]
    attempts += [(f"unix:{path}", path in seen_paths, socket.AF_UNIX, path) for path in args.unix]
    for target, seen, family, address in attempts:
        connected = connect(family, address)
        untried = "not tried (no connection)"
        called = call(target, args.secret, args.plant) if connected == "ok" else {"health": untried, "rotate": untried}
        tried.append({"address": target, "seen": seen, "connect": connected, **called})
    print(json.dumps({"tcp_ports_seen": len(seen_ports), "unix_sockets_seen": len(seen_paths), "tried": tried}))


if __name__ == "__main__":
    main()
