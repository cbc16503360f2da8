"""What a worker says about its calls: a failed call's ErrorInfo reason, and its Prometheus metrics."""

from __future__ import annotations

import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

Samples = list[tuple[str, dict[str, str], float]]


def reason(error: grpc.RpcError | grpc.Call) -> str:
    """The google.rpc.ErrorInfo reason a failed call carries."""
    info = error_details_pb2.ErrorInfo()
    return next(info.reason for d in rpc_status.from_call(error).details if d.Unpack(info))


def scrape(port: int) -> Samples:
    """Every sample of a worker's /metrics on ``port`` (127.0.0.1)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())
