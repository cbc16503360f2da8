"""Group commit: finished rows are made durable together, then journaled.

An fsync per output file cost more driver CPU than the rest of a tiny
image's row (docs/benchmarks.md, "Driver cost"). Outputs are instead written
to a temporary file and renamed (atomic, no fsync); finished rows wait here
and, about every ``interval`` seconds or every ``max_rows`` rows, one
``syncfs(2)`` per file system they were written to makes the whole group
durable, and only then are the rows handed to ``commit`` (journal, index,
progress). So a row is in the journal only once its output is on disk; rows
finished but not yet committed when the driver dies simply run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

# The C library already loaded in this process: ctypes.util.find_library would run `ldconfig -p` at every start
# (~1.4 ms and a child process).
_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)  # Linux only; Python's os module has no syncfs

# What a group hands on: (manifest row, outcome, results row); opaque here.
Entry = tuple[Any, Any, dict[str, str]]
_DIR_CACHE = 4096  # folders whose device is remembered (outputs usually share a few folders)


TEMP_SUFFIX = ".batchtmp"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # ".<name>.batchtmp" beside a file while it is written


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, durable: bool = True, dir_fd: int | None = None,
                **open_args) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on any error remove it.

    A reader sees the old file or the new one, never half of one. ``durable``
    fsyncs the file and its folder before returning; rotated outputs pass
    False because group commit makes them durable together (module docstring).
    The temporary name depends only on ``path``: a crash's leftover is
    replaced by the next write of the same file. With ``dir_fd`` (an open
    folder), ``path`` is relative to it: the file goes into that very folder
    whatever its path leads to by then (batch/files.py checks the folder it opened).

    Replacing a file costs ext4 (auto_da_alloc) the new file's block allocation and the start of its writeback
    in ``rename``, in this process (~30 us a tiny output, docs/benchmarks.md): the price of a power cut never
    leaving an empty file where a complete one was, so it stays.
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}{TEMP_SUFFIX}")
    try:
        try:
            fd = os.open(tmp, _CREATE, 0o666, dir_fd=dir_fd)  # O_EXCL never follows a link planted there
        except FileExistsError:  # a crash's leftover, or that link: removed, then made afresh
            os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(tmp, _CREATE, 0o666, dir_fd=dir_fd)
        with open(fd, mode, **open_args) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            os.fsync(fd)  # the rename itself
        finally:
            os.close(fd)


def within(path: str, folder: str) -> bool:
    """Whether normalised absolute ``path`` is ``folder`` or under it: ``os.path.commonpath``'s answer, by a
    prefix test (a fifth of its cost, and it runs for every row)."""
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # a handle on the folder itself: no read permission needed


def open_within(folder: str, root: str) -> tuple[int, str | None]:
    """``folder`` opened (a handle for ``dir_fd``; the caller closes it), and where it really is when that is
    outside ``root`` (a resolved folder), else None.

    Checked on what was opened, as the kernel names it (``/proc/self/fd``), so a file then written with
    ``dir_fd`` lands in the folder that was checked even if a link on its path is swapped in between; a
    folder inside --out may be a link to elsewhere. Two system calls where ``os.path.realpath`` makes one
    ``lstat`` per component in Python.
    """
    fd = os.open(folder, FOLDER)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc mounted: the path resolved now
        real = os.path.realpath(folder)
    return fd, None if within(real, root) else real


class SyncError(OSError):
    """The outputs of a group could not be made durable (an I/O error on their file system)."""


class GroupCommit:
    """Collect finished rows; make their outputs durable in groups; then ``commit`` each group in order."""

    def __init__(self, commit: Callable[[list[Entry]], None], interval: float = 0.1, max_rows: int = 256) -> None:
        self._commit = commit
        self.interval = interval
        self.max_rows = max_rows
        self._pending: list[Entry] = []
        self._pending_devices: set[int] = set()
        self._syncing: list[Entry] = []  # taken by a sync that has not committed yet (kept if it is cancelled)
        self._syncing_devices: set[int] = set()
        self._device_of_dir: dict[str, int] = {}
        self._dir_fds: dict[int, int] = {}  # device -> an open folder on it, for syncfs
        self._full = asyncio.Event()

    def add(self, entry: Entry, output: str | None) -> None:
        """A finished row; ``output`` is the file it wrote (to be made durable), or None."""
        self._pending.append(entry)
        if output:
            self._pending_devices.add(self._device(os.path.dirname(output)))
        if len(self._pending) >= self.max_rows:
            self._full.set()

    async def run(self) -> None:
        """Commit groups until cancelled; call ``flush`` afterwards for the rest."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval)
            self._full.clear()
            if not self._pending:
                continue
            self._take()
            if self._syncing_devices:  # else nothing to make durable (references, failures): no thread hop
                await asyncio.to_thread(self._sync, self._syncing_devices)  # a slow disk must not stall the calls
            self._done()

    def flush(self) -> None:
        """Make every collected row durable and commit it now (end of run, Ctrl-C, error)."""
        self._take()
        self._sync(self._syncing_devices)
        self._done()

    def close(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()

    def _take(self) -> None:
        self._syncing += self._pending
        self._syncing_devices |= self._pending_devices
        self._pending, self._pending_devices = [], set()

    def _done(self) -> None:
        group, self._syncing, self._syncing_devices = self._syncing, [], set()
        if group:
            self._commit(group)

    def _sync(self, devices: set[int]) -> None:
        if not devices:
            return
        if _syncfs is None:
            os.sync()
            return
        for device in list(devices):
            if _syncfs(self._dir_fds[device]) != 0:
                err = ctypes.get_errno()
                raise SyncError(err, f"cannot make outputs durable (syncfs): {os.strerror(err)}")

    def _device(self, folder: str) -> int:
        device = self._device_of_dir.get(folder)
        if device is None:
            device = os.stat(folder).st_dev
            if device not in self._dir_fds:
                self._dir_fds[device] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            if len(self._device_of_dir) >= _DIR_CACHE:
                self._device_of_dir.clear()
            self._device_of_dir[folder] = device
        return device
