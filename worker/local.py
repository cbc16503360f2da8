"""Local servers: a child process on loopback that prints ``LISTENING ADDRESS...`` once it serves.

`LocalWorker` is `worker serve` as such a child: `batch run` embeds one when
no worker is named, on private Unix sockets that only this user can reach
(a 0700 folder the worker makes and removes when it stops, even when its
driver was killed); `worker evaluate` scores
models through one, and the tests and benchmarks start theirs with it too. A child is stopped when its
user is done, however that ends (SIGTERM, then SIGKILL after a grace
period); on Linux it is also told to exit if its parent dies without
cleaning up.

Every Python child runs with ``-P``: ``python -m worker`` would otherwise put
the current folder first on the import path, and a ``worker.py`` there
would run instead of the worker.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STARTUP_TIMEOUT = 180.0  # generous: a loaded 2-core machine starting several processes
# `worker serve` reads its options from these too (worker/cli.py): a child that inherits the environment drops
# them, so that a stray WORKER_SERVE_TLS_CERT in the user's environment cannot change the embedded worker.
OPTION_ENV_PREFIX = "WORKER_SERVE_"


class LocalWorkerError(Exception):
    """The local server did not start; the message carries the end of its log."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def python_command(*args: str) -> list[str]:
    """This interpreter running ``args`` with neither the current folder nor a script's folder on sys.path."""
    return [sys.executable, "-P", *args]


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not glibc Linux: the parent's own cleanup still stops the child


class LocalServer:
    """``with LocalServer(command, log) as s:`` serves at ``s.address`` inside the block.

    ``command`` must print ``LISTENING ADDRESS...`` (``host:port``, or several ``unix:path``) as its first
    line of output once it serves, and nothing more (its stdout is a pipe read only for that line); its stderr
    goes to ``log``. ``address`` is the first, ``addresses`` all. ``start`` is ``launch`` then ``wait_serving``.
    """

    what = "server"  # for messages

    def __init__(self, command: Sequence[str], log: Path, startup_timeout: float = STARTUP_TIMEOUT,
                 env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.log = Path(log)
        self.startup_timeout = startup_timeout
        self.env = env
        self.addresses: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._terminated = False  # SIGTERM sent: a second one is not sent

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str | None:
        return self.addresses[0] if self.addresses else None

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def start(self) -> str:
        """Launch and wait until it serves; its (first) address."""
        self.launch()
        return self.wait_serving()

    def launch(self) -> None:
        """Start the child without waiting for it: its start-up overlaps whatever its user does meanwhile."""
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=self.env,
                # Its own session: a terminal's Ctrl-C reaches only its parent, which stops the child in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )

    def wait_serving(self) -> str:
        """Block until the launched child prints its LISTENING line (read as it is written, not polled for);
        LocalWorkerError if it exits first or takes longer than ``startup_timeout``."""
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise LocalWorkerError(
                        f"the local {self.what} did not serve within {self.startup_timeout:.0f} s; "
                        f"its log ({self.log}) ends with:\n{self.log_tail()}"
                    )
                # The pipe's end (EOF) says it exited, unless processes it forked still hold it: look now and then.
                chunk = os.read(self.proc.stdout.fileno(), 4096) if sel.select(min(left, 1.0)) else None
                if chunk == b"" or (chunk is None and self.proc.poll() is not None):
                    self._exited_before_serving()
                line += chunk or b""
        text = line.decode(errors="replace")
        if not text.startswith("LISTENING "):
            self.stop()
            raise LocalWorkerError(f"the local {self.what} printed {text.strip()!r} instead of LISTENING; "
                                   f"its log ({self.log}) ends with:\n{self.log_tail()}")
        # The pipe stays open until stop: these servers print nothing after that line.
        self.addresses = text.split()[1:]
        return self.address

    def _exited_before_serving(self) -> None:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:  # its forks closed the pipe, it did not: stop it all
            self.stop()
            code = self.proc.returncode
        raise LocalWorkerError(
            f"the local {self.what} exited with code {code} before serving; "
            f"its log ({self.log}) ends with:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].rstrip()
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """SIGTERM to one seen serving, without waiting: it drains while its user finishes up; ``stop`` then
        waits for it (and does everything else it does)."""
        if self.proc is not None and self.addresses and not self._terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (a worker drains), SIGKILL if it is still there after ``grace`` seconds; its exit code.
        One not seen serving (never waited for) has nothing to drain, and may not yet relay SIGTERM to what it
        is forking: SIGKILLed with them at once."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if not self.addresses:
                os.killpg(self.proc.pid, signal.SIGKILL)
            if not self._terminated:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: take its server processes too
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class LocalWorker(LocalServer):
    """`worker serve` on loopback: ``processes`` processes, ``port`` (0: a free one), then ``args``.

    ``private``: no TCP port but a Unix socket per process in a folder that nobody else may enter
    (``socket_dir``, under the temporary folder by a random name; the worker makes it and removes it when it
    stops), so that no other user of the machine can reach the worker; ``addresses`` then names every socket.

    ``start`` returns once the worker prints LISTENING, which it does when every
    process serves (rotation at once; the face model loads at the first
    classify call).
    """

    what = "worker"

    def __init__(self, processes: int, log: Path, startup_timeout: float = STARTUP_TIMEOUT,
                 model: Path | None = None, *, args: Sequence[str] = (), port: int = 0,
                 env: Mapping[str, str] | None = None, private: bool = False) -> None:
        self.processes = processes
        self.socket_dir = Path(tempfile.gettempdir()) / f"imagebatch-{secrets.token_hex(8)}" if private else None
        where = ["--socket-dir", str(self.socket_dir)] if private else ["--host", "127.0.0.1", "--port", str(port)]
        command = python_command("-m", "worker", "serve", *where, "--processes", str(processes))
        if model is not None:
            command += ["--model", str(model)]
        if env is None:  # inherited, not chosen: the launcher's arguments alone configure the child
            env = {k: v for k, v in os.environ.items() if not k.startswith(OPTION_ENV_PREFIX)}
        super().__init__([*command, *args], log, startup_timeout, env)

    def stop(self, grace: float = 20.0) -> int | None:
        try:
            return super().stop(grace)
        finally:
            if self.socket_dir is not None:  # the worker removes it, unless it had to be killed
                shutil.rmtree(self.socket_dir, ignore_errors=True)
