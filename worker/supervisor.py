"""The processes of `worker serve` and their addresses.

``serve`` reserves the port in the parent, then forks one server process per
CPU *before any grpc object exists*; each binds the same port with
SO_REUSEPORT, so the kernel spreads connections over them and CPU work is not
serialised by one interpreter's GIL. With --socket-dir there is no TCP port:
each process serves a Unix domain socket of its own in that private folder,
and a client connects to each. The supervisor relays signals and restarts a
process that dies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import select
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from worker import metrics
from worker.config import SOCKET_NAME, ConfigError, ServerConfig, log

# A server process exits with this when it cannot serve as configured (its face model does not load):
# the supervisor stops instead of restarting it, which could not help.
EXIT_BROKEN = 3


# One server process: serves at the gRPC address ("host:port" or "unix:path") until a signal, calls ready() once
# it answers, returns its exit code.
ServeOne = Callable[[ServerConfig, str, Callable[[], None]], int]


class StopRequest:
    """A flag set by SIGTERM, SIGINT or any thread, that the main thread waits on: ``set``, ``is_set``, ``wait``.

    Not a threading.Event: Python runs a signal handler in the main thread between two bytecodes, and
    ``Event.set`` takes the lock that ``Event.wait`` holds in that thread around each wake-up (and that a
    handler interrupted by a second signal holds): the handler then waits for itself for good. Seen after a
    CI run: an embedded worker's process, its main thread blocked in its own SIGTERM handler, outlived its
    driver by over 20 minutes (py-spy); a loop of ``wait(0)`` hung 13 of 20 processes at their first SIGTERM. This
    one takes no lock: ``set`` writes a byte to a pipe that ``wait`` selects on (the self-pipe trick).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def set(self) -> None:
        self._set = True
        try:
            os.write(self._write, b"!")
        except BlockingIOError:  # the pipe is full of earlier requests: the waiter is awake already
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, after waiting up to ``timeout`` seconds (None: for good) for that."""
        if not self._set:
            select.select([self._read], [], [], timeout)
        return self._set


@contextlib.contextmanager
def addresses_of(config: ServerConfig) -> Iterator[list[str]]:
    """Each process's gRPC address: the one reserved port, or its own socket in --socket-dir."""
    if config.socket_dir is not None:
        with _private_folder(Path(config.socket_dir)) as folder:
            yield [f"unix:{folder / SOCKET_NAME.format(k)}" for k in range(config.processes)]
        return
    with reserve_port(config.host, config.port) as port:
        host = f"[{config.host}]" if ":" in config.host else config.host
        yield [f"{host}:{port}"] * config.processes


@contextlib.contextmanager
def _private_folder(folder: Path) -> Iterator[Path]:
    """--socket-dir, made here with mode 700 (so nobody else can enter it, whatever was there before: an
    existing one is refused) and removed with its sockets at the end, however the worker stops short of
    SIGKILL (a driver that embeds it and dies sends it SIGTERM)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise ConfigError(f"--socket-dir {folder} already exists: name a folder for the worker to make "
                          "(it makes it private and removes it when it stops)") from None
    except OSError as e:
        raise ConfigError(f"cannot make --socket-dir {folder}: {e.strerror}") from None
    try:
        yield folder
    finally:
        for socket_file in folder.glob(SOCKET_NAME.format("*")):  # a process that died leaves its socket
            socket_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else was put there: left as it is
            folder.rmdir()


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) the port with SO_REUSEPORT so every child can bind it too.

    SO_REUSEPORT would also let this worker share a port that another process of
    the same user already serves (another `worker serve`, which would take about
    half of the connections), so the port is first bound without it: that fails
    while any other socket holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of an earlier worker in TIME_WAIT do not hold the port; listeners do.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def supervise(config: ServerConfig, addresses: list[str], announce: Callable[[], None], serve_one: ServeOne) -> int:
    """Fork the server processes (process K at ``addresses[K]``), announce once all serve, relay signals,
    restart crashed children at their address."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    stopping = StopRequest()  # set by on_signal, which the main thread also calls: a handler may run inside it
    children: dict[int, multiprocessing.Process] = {}

    def start(slot: int) -> None:
        p = ctx.Process(target=_child_main, args=(config, addresses[slot], ready, serve_one), name=f"worker-{slot}",
                        daemon=False)
        p.start()
        children[slot] = p

    def on_signal(signum, frame) -> None:
        stopping.set()
        for p in children.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(config.processes):
        start(slot)
    pending = config.processes
    while pending and not stopping.is_set():
        try:
            ready.get(timeout=0.5)
            pending -= 1
        except queue.Empty:  # check whether a child died while starting
            if any(p.exitcode not in (None, 0) for p in children.values()):
                log.error("a worker process failed to start; stopping")
                on_signal(signal.SIGTERM, None)
                break
    if not stopping.is_set():
        announce()
        log.info("%d processes serving on %s", config.processes, " ".join(dict.fromkeys(addresses)))

    exit_code = 0
    while True:
        for slot, p in list(children.items()):
            p.join(timeout=0.2)
            if p.exitcode is None:
                continue
            metrics.process_ended(p.pid)
            if stopping.is_set():
                exit_code = max(exit_code, p.exitcode if p.exitcode > 0 else 0)
                del children[slot]
            elif p.exitcode == EXIT_BROKEN:
                log.error("worker process %d cannot serve (see above); stopping", p.pid)
                exit_code = EXIT_BROKEN
                on_signal(signal.SIGTERM, None)
            else:
                log.error("worker process %d died (exit code %s); starting a new one", p.pid, p.exitcode)
                start(slot)
        if not children:
            return exit_code


def _child_main(config: ServerConfig, address: str, ready, serve_one: ServeOne) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = serve_one(config, address, lambda: ready.put(os.getpid()))
    sys.stdout.flush()
    os._exit(code)
