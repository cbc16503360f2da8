"""What the driver is told to connect to: --worker values (or $BATCH_WORKER) as gRPC targets, and how many
worker addresses they name. No grpc import: a run checks its addresses before anything else, and starts its
embedded worker before grpc is loaded (batch/session.py)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable

from batch.errors import UsageError

DEFAULT_CONNECTIONS = 8  # per worker address; more than a worker's processes (batch/channel.py's docstring)
ENV_VAR = "BATCH_WORKER"
URI_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


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
        host, port = host_port(address) or (None, None)
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


def host_port(address: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^\s:/\[\]]+):(\d{1,5})", address)
    if not m:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return (host, int(port)) if 0 < int(port) < 65536 else None


def address_count(targets: list[str]) -> int:
    """How many worker addresses the targets name (a DNS name counts once: it is resolved later)."""
    return sum(len(t.split(":", 1)[1].split(",")) if t.startswith(("ipv4:", "ipv6:")) else 1 for t in targets)
