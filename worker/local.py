"""A local worker: `worker serve` as a child process on a free loopback port.

`batch run` embeds one when no worker is named, and `worker evaluate` scores
models through one. It is stopped when its user is done, however that ends
(SIGTERM, then SIGKILL after a grace period); on Linux the child is also told
to exit if its parent dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STARTUP_TIMEOUT = 180.0  # loading the face model in every process takes a while on a slow machine


class LocalWorkerError(Exception):
    """The local worker did not start; the message carries the end of its log."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not glibc Linux: the driver's own cleanup still stops the worker


class LocalWorker:
    """``with LocalWorker(processes, log) as w:`` serves at ``w.address`` inside the block.

    ``start`` returns once the worker prints LISTENING, which it does only when
    every process has loaded its model and reports SERVING.
    """

    def __init__(self, processes: int, log: Path, startup_timeout: float = STARTUP_TIMEOUT,
                 model: Path | None = None) -> None:
        self.processes = processes
        self.model = model
        self.log = Path(log)
        self.startup_timeout = startup_timeout
        self.address: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stdout = self.log.with_name(f".{self.log.name}.stdout")

    def __enter__(self) -> LocalWorker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> str:
        cmd = [sys.executable, "-m", "worker", "serve", "--host", "127.0.0.1", "--port", "0",
               "--processes", str(self.processes)]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        with open(self._stdout, "wb") as out, open(self.log, "wb") as err:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches only its parent, which stops the worker in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            line = self._stdout.read_text(errors="replace").split("\n", 1)[0]
            if line.startswith("LISTENING ") and "\n" in self._stdout.read_text(errors="replace"):
                self.address = line.split()[1]
                return self.address
            if self._proc.poll() is not None:
                raise LocalWorkerError(
                    f"the local worker exited with code {self._proc.returncode} before serving; "
                    f"its log ({self.log}) ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.stop()
        raise LocalWorkerError(
            f"the local worker did not serve within {self.startup_timeout:.0f} s; "
            f"its log ({self.log}) ends with:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].rstrip()
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (the worker drains), SIGKILL if it is still there after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: take its server processes too
                proc.wait()
        self._stdout.unlink(missing_ok=True)
        return proc.returncode
