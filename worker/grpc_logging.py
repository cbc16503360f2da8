"""gRPC's own logging, quiet by default on both sides.

gRPC's C core writes a line at INFO on stderr for every failed TLS handshake (a dozen or more per refused
driver, on the driver and on the worker), above the one line of ours that says what failed and what to do. It
reads GRPC_VERBOSITY once, when grpc is first imported: so the commands call ``quiet_grpc`` before anything
imports grpc. A GRPC_VERBOSITY (or GRPC_TRACE) the user sets is left alone.
"""

from __future__ import annotations

import os
import sys

_chosen: str | None = None  # the value set here, so that a later call may change it (and never the user's)


def quiet_grpc(debug: bool = False) -> None:
    """GRPC_VERBOSITY=ERROR, or INFO with ``debug`` (-vv, --log-level DEBUG); a no-op once grpc is imported."""
    global _chosen
    if "grpc" in sys.modules or os.environ.get("GRPC_VERBOSITY", _chosen) != _chosen:
        return
    _chosen = os.environ["GRPC_VERBOSITY"] = "INFO" if debug else "ERROR"
