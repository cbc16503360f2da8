"""`worker probe ADDRESS`: is a worker there, what does it serve, and (with --rotate) does it do real work.

What grpcurl's `list` and `grpc.health.v1.Health/Check` lines show, with nothing to install: the health
check and reflection clients of the grpcio packages the worker already needs, and one Rotate of a file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click

from worker.grpc_logging import quiet_grpc

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.argument("address")
@click.option("--rotate", "image", type=_file, help="Also rotate this image file, to see the worker do real work.")
@click.option("--degrees", type=int, default=90, show_default=True, help="Counter-clockwise turn for --rotate.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the image --rotate got back here (default: only describe it).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds each call may take, connecting included.")
@click.option("--tls-ca", type=_file, help="PEM CA bundle to verify the worker's certificate; enables TLS.")
@click.option("--tls-cert", type=_file, help="PEM client certificate, for a worker that requires one (mTLS).")
@click.option("--tls-key", type=_file, help="PEM private key of --tls-cert.")
@click.option("--tls-server-name", metavar="NAME", help="The name the worker's certificate must bear.")
def probe(address: str, image: Path | None, degrees: int, out: Path | None, timeout: float, tls_ca: Path | None,
          tls_cert: Path | None, tls_key: Path | None, tls_server_name: str | None) -> None:
    """Check the worker at ADDRESS (HOST:PORT, or any gRPC target such as unix:PATH): its health, the services
    it offers (reflection), and with --rotate one Rotate call.

    Exit status: 0 the worker serves (and rotated), 1 it does not answer, is not serving or the call failed,
    2 usage error.
    """
    if bool(tls_cert) != bool(tls_key) or ((tls_cert or tls_server_name) and not tls_ca):
        raise click.UsageError("--tls-cert and --tls-key go together, and they and --tls-server-name need --tls-ca")
    if out and not image:
        raise click.UsageError("--out needs --rotate")
    quiet_grpc()  # before grpc is imported: our lines only
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from worker.api import imageworker_v1_pb2 as v1
    from worker.api import imageworker_v1_pb2_grpc as v1_grpc

    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    if tls_ca:
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        credentials = grpc.ssl_channel_credentials(tls_ca.read_bytes(), tls_key.read_bytes() if tls_key else None,
                                                   tls_cert.read_bytes() if tls_cert else None)
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        started = time.monotonic()
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout,
                                                              wait_for_ready=True)
        except grpc.RpcError as e:
            raise click.ClickException(f"{address}: no answer within {timeout:g} s ({e.code().name}: {e.details()})"
                                       ) from None
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        click.echo(f"{address}: {status} (health check, {(time.monotonic() - started) * 1000:.0f} ms)")
        try:
            services = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
            click.echo(f"services: {', '.join(services)}")
        except grpc.RpcError as e:
            click.echo(f"services: unknown (reflection: {e.code().name})")
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise click.exceptions.Exit(1)
        if image is None:
            return
        started = time.monotonic()
        try:
            rotated = v1_grpc.ImageWorkerStub(channel).Rotate(
                v1.RotateRequest(image=image.read_bytes(), degrees=degrees), timeout=timeout)
        except grpc.RpcError as e:
            raise click.ClickException(f"Rotate {image}: {e.code().name}: {e.details()}") from None
        click.echo(f"rotated {image} by {degrees}: {rotated.format} {rotated.width}x{rotated.height}, "
                   f"{len(rotated.image):,} bytes, {rotated.method}, by {rotated.worker} in "
                   f"{(time.monotonic() - started) * 1000:.0f} ms")
        if out:
            _write_whole(out, rotated.image)
            click.echo(f"wrote {out}")


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` at ``path`` all at once: a temporary file beside it, renamed (never a half-written image)."""
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            try:
                f.write(data)
                f.close()
                os.replace(f.name, path)
            except BaseException:
                os.unlink(f.name)
                raise
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror}") from None
