"""Regenerate the protobuf and gRPC modules in worker/api/ from proto/ (development only).

    python proto/codegen.py [--out DIR]

Lives beside the .proto files in the source checkout, not in the installed
package. The proto files are mapped into the virtual path worker/api/ so the
generated modules import each other as ``worker.api.x_pb2`` and work from
inside the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
PROTOS = ("imageworker_v1.proto", "abimage.proto")


def googleapis_protos() -> Path:
    """The folder holding google/rpc/status.proto: googleapis-common-protos ships it beside its modules (a
    dependency of grpcio-status, so wherever the worker runs)."""
    from google.rpc import status_pb2

    return Path(status_pb2.__file__).resolve().parents[2]


def generate(out: Path) -> list[Path]:
    """Write the generated modules under ``out/worker/api/``; return their paths."""
    from grpc_tools import protoc  # only needed by developers, not at run time

    include = str(Path(protoc.__file__).parent / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    for name in PROTOS:
        args = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{googleapis_protos()}",
            f"-Iworker/api={PROTO_DIR}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"worker/api/{name}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")
    return sorted((out / "worker" / "api").glob("*_pb2*.py*"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT, help="root to write worker/api/ under (default: the checkout)")
    files = generate(ap.parse_args().out)
    for f in files:
        print(f)
    sys.exit(0 if files else 1)


if __name__ == "__main__":
    main()
