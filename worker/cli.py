"""`worker` command line: serve (and the face model's train/evaluate)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from worker.decode import DEFAULT_MAX_PIXELS
from worker.grpc_logging import quiet_grpc
from worker.probe import probe

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


# Every option can also come from the environment, as containers set them: WORKER_<COMMAND>_<OPTION>,
# e.g. WORKER_SERVE_PORT=50051 or WORKER_SERVE_TLS_CERT=/run/secrets/cert.pem; the command line wins.
ENV_PREFIX = "WORKER"


class _Lazy(click.Group):
    """A group whose face-model commands are imported only when named (or listed by --help): ``serve``, which
    the driver starts for each run, does not pay for the training code's imports."""

    lazy = {"train": "worker.faces.training.commands", "evaluate": "worker.faces.training.commands"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return getattr(importlib.import_module(self.lazy[name]), name)
        return super().get_command(ctx, name)


class _ConfigProblem(click.ClickException):
    """Options that cannot work (TLS files, --model, --host...): one line naming the problem, exit 2."""

    exit_code = 2


@click.group(cls=_Lazy, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX})
@click.version_option(package_name="imagebatch")
def main() -> None:
    """imagebatch's gRPC image worker.

    Every option can also be set in the environment as WORKER_<COMMAND>_<OPTION>
    (e.g. WORKER_SERVE_PORT=50052); the command line wins.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback without TLS is warned about; with --data-root or "
                   "--output-root it is refused without client certificates (--tls-client-ca).")
@click.option("--port", default=50051, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind; 0 picks a free one. Prints 'LISTENING host:port' once every process serves.")
@click.option("--processes", default=os.cpu_count() or 1, show_default="number of CPUs",
              type=click.IntRange(1),
              help="Server processes sharing the port (SO_REUSEPORT), or each on its own socket in --socket-dir.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1),
              help="Threads per process decoding and encoding images at once.")
@click.option("--max-concurrent-rpcs", type=click.IntRange(1), default=None, show_default="4 x threads",
              help="Image calls per process, working or waiting for a thread; past it calls get "
                   "RESOURCE_EXHAUSTED at once instead of queueing (health checks keep room of their own).")
@click.option("--max-message-mb", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="Largest image (and answer) in a unary call, in MiB; larger ones come by streaming calls.")
@click.option("--max-image-mb", default=512, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Largest image, streamed or not, in MiB (a streamed one over it is refused on its first "
                   "message); never below --max-message-mb.")
@click.option("--max-inflight-mb", default=1024, show_default=True, type=click.IntRange(1),
              help="Images held by the calls in flight per process, in MiB; past it new calls are refused as "
                   "busy (one call alone is always admitted). Each costs a few times its size to decode.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Largest image, in pixels, that will be decoded (decompression bombs).")
@click.option("--tls-cert", type=_file, help="PEM certificate chain; enables TLS.")
@click.option("--tls-key", type=_file, help="PEM private key for --tls-cert.")
@click.option("--tls-client-ca", type=_file, help="PEM CA bundle; clients must present a certificate it signed (mTLS).")
@click.option("--grace", default=15.0, show_default=True, type=click.FloatRange(0),
              help="Seconds calls in flight get to finish after SIGTERM/SIGINT.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Face model artifact (.npz); default: the shipped one.")
# Text, not click.Path: a pathlib.Path would fold s3://bucket/ into s3:/bucket/.
@click.option("--data-root", "data_roots", multiple=True, metavar="DIR|URI",
              help="Reference mode: requests may name files under DIR, or objects under a URI prefix such as "
                   "s3://bucket/in/ (repeatable), for the worker to read itself instead of sending their bytes; "
                   "anything outside is refused. Credentials come from the environment (AWS_ENDPOINT_URL, "
                   "AWS_ACCESS_KEY_ID, ...). Default: off.")
@click.option("--output-root", "output_roots", multiple=True, metavar="DIR|URI",
              help="Reference mode: requests may name outputs under DIR, or under a URI prefix such as "
                   "s3://bucket/out/ (repeatable), for the worker to write itself, atomically and durably, before "
                   "it answers. Default: off.")
@click.option("--allow-unauthenticated-references", is_flag=True, default=False,
              help="Serve --data-root/--output-root on a non-loopback --host without client certificates: anyone "
                   "who can reach the port may then read and overwrite files under the roots. Refused without it.")
@click.option("--socket-dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Serve on Unix domain sockets instead of TCP, one per process (DIR/worker-K.sock; the "
                   "LISTENING line names each). The worker makes DIR (it must not exist) with mode 700, so only "
                   "its own user can connect, and removes it when it stops. --host and --port are then unused. "
                   "Default: TCP.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics, summed over every process "
                   "(plaintext, read-only). Default: off.")
@click.option("--stream-idle-seconds", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Longest wait for a streamed call's next message; a stream that sends nothing for longer ends "
                   "with DEADLINE_EXCEEDED and releases what it sent.")
@click.option("--max-call-seconds", default=600.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Longest any call lasts, whatever its deadline: one without a deadline (gRPC's default) or "
                   "with a later one ends with DEADLINE_EXCEEDED then.")
@click.option("--max-batch-items", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Most items one RotateBatch or ClassifyBatch call may carry; a larger batch is refused whole "
                   "(INVALID_ARGUMENT, BATCH_TOO_LARGE). Its items are worked one after another in one call's "
                   "slot, within its deadline.")
@click.option("--keepalive-seconds", default=60.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Ping a connection quiet this long; one that does not answer within as long again is dropped "
                   "with its calls.")
@click.option("--idle-connection-seconds", default=300.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Close a connection that has had no call (or not finished its handshake) for this long; "
                   "clients reconnect when they need to.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(log_level: str, **options) -> None:
    """Serve imageworker.v1.ImageWorker and the legacy ABImageService, with health and reflection.

    Exit status: 0 after SIGTERM/SIGINT (calls in flight drained), 1 the worker
    could not serve (e.g. port taken), 2 usage error, 3 the face model does not load.
    """
    quiet_grpc(debug=log_level.upper() == "DEBUG")  # before anything imports grpc

    from worker.config import ConfigError, ServerConfig
    from worker.server import serve as run

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s worker[%(process)d] %(name)s: %(message)s",
    )
    try:
        config = ServerConfig(**options)
        code = run(config, announce=lambda line: click.echo(line) or sys.stdout.flush())
    except ConfigError as e:
        raise _ConfigProblem(str(e)) from None
    except OSError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


main.add_command(probe)
