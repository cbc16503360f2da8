"""The driver's own reads and writes of a row's files: the one place an input is opened and an output written.

An input is read only if it is a regular file, checked on what was opened (a FIFO must not hold the run in
``open``, a device reads without end), and only as many bytes as ``stat`` said; an output is written
atomically, in a folder that resolves inside --out. Every refusal is a ``RowFailed`` with its reason. Both
ways of sending use these: the bytes in one call and a stream (batch/transport.py, batch/stream.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from batch import store
from batch.durable import FOLDER, atomic_file, open_within
from batch.manifest import real_folder
from batch.results import Reason, RowFailed
from batch.store import Uri

MAX_INPUT = 2**31 - 2**20  # a protobuf message carries under 2 GiB; the request's other fields need a little


def read_input(path: Path | Uri, limit: int | None = None) -> bytes | None:
    """The input's bytes (None when it is over ``limit`` bytes, or an object in a store, whose read always waits
    on the network: call again without a limit, in a thread), or RowFailed saying precisely why not.

    Only a regular file is read, and only as many bytes as ``stat`` said: a FIFO is opened without blocking
    (it would hold the run in ``open`` for good) and refused, and so is a device (``/dev/zero`` reads without
    end) or a socket. An object is read in one GET of at most the size one call can carry.
    """
    if isinstance(path, Uri):
        return None if limit is not None else _read_object(path)
    fd, size = open_input(path, MAX_INPUT)
    try:
        if limit is not None and size > limit:
            return None
        try:
            data = _read_upto(fd, size + 1)
        except OSError as e:
            raise RowFailed(f"cannot read {path}: {e.strerror}", Reason.INPUT_UNREADABLE) from None
        if len(data) > size:
            raise RowFailed(f"file grew while it was read (still being written?): {path}", Reason.INPUT_CHANGED)
        return data
    finally:
        os.close(fd)


def _read_upto(fd: int, n: int) -> bytes:
    """At most ``n`` bytes of ``fd``, fewer only at its end: plain reads (a file object's set-up costs three
    system calls a row: fstat, lseek, ioctl)."""
    data = os.read(fd, n)
    if not data:
        return data
    chunks = [data]
    got = len(data)
    while got < n and (chunk := os.read(fd, n - got)):
        chunks.append(chunk)
        got += len(chunk)
    return data if len(chunks) == 1 else b"".join(chunks)


def open_input(path: Path, max_size: int | None = None) -> tuple[int, int]:
    """A local input opened for reading, and its size: a regular file only, checked on what was opened, and
    not blocking the run in ``open`` (a FIFO); with ``max_size`` (what one call can carry), at most that big;
    RowFailed saying precisely why not. The caller closes it. A stream has no such bound: the worker says."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RowFailed(f"file not found: {path}", Reason.INPUT_NOT_FOUND) from None
    except PermissionError:
        raise RowFailed(f"permission denied reading {path}", Reason.INPUT_UNREADABLE) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RowFailed(f"symlink loop: {path}", Reason.INPUT_UNREADABLE) from None
        if e.errno == errno.ENXIO:
            raise RowFailed(f"not a regular file (a socket): {path}", Reason.NOT_A_REGULAR_FILE) from None
        raise RowFailed(f"cannot read {path}: {e.strerror}", Reason.INPUT_UNREADABLE) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RowFailed(f"is a directory, not an image file: {path}", Reason.NOT_A_REGULAR_FILE)
        if not stat.S_ISREG(info.st_mode):
            raise RowFailed(f"not a regular file ({_file_kind(info.st_mode)}): {path}", Reason.NOT_A_REGULAR_FILE)
        if max_size is not None and info.st_size > max_size:
            raise RowFailed(f"file is {info.st_size:,} bytes ({info.st_size / 2**30:.1f} GiB): over the "
                            f"{max_size / 2**30:.0f} GiB one call can carry", Reason.INPUT_TOO_LARGE)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _read_object(uri: Uri) -> bytes:
    try:
        data = store.read(uri, MAX_INPUT)
    except FileNotFoundError:
        raise RowFailed(f"object not found: {uri}", Reason.INPUT_NOT_FOUND) from None
    except PermissionError:
        raise RowFailed(f"permission denied reading {uri}", Reason.INPUT_UNREADABLE) from None
    except OSError as e:
        raise RowFailed(f"cannot read {uri}: {e}", Reason.INPUT_UNREADABLE) from None
    if len(data) > MAX_INPUT:
        raise RowFailed(f"object {uri} is over the {MAX_INPUT / 2**30:.0f} GiB one call can carry",
                        Reason.INPUT_TOO_LARGE)
    return data


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def write_output(path: Path | Uri, data: bytes, root: str) -> None:
    """Write atomically, without an fsync: the run makes outputs durable in groups before journaling
    their rows (batch/durable.py). ``root`` is --out with links resolved: the output's folder, as opened for
    the write, must be inside it (a folder inside --out may be a link to elsewhere). An object
    named by the manifest is one PUT: atomic, and durable once answered."""
    if isinstance(path, Uri):
        try:
            store.write(path, data)
        except OSError as e:
            raise RowFailed(f"cannot write output {path}: {e}", Reason.OUTPUT_UNWRITABLE) from None
        return
    folder, name = os.path.split(path)
    fd = _open_folder(folder, path, root)
    try:
        _write_file(fd, name, data)
    except OSError as e:
        raise RowFailed(f"cannot write output {path}: {e.strerror or e}", Reason.OUTPUT_UNWRITABLE) from None
    finally:
        os.close(fd)


def _write_file(folder: int, name: str, data: bytes) -> None:
    # Unbuffered: the bytes go out in one write (a buffered file's set-up costs an lseek and an ioctl a row).
    with atomic_file(name, buffering=0, durable=False, dir_fd=folder) as f:
        view = memoryview(data)
        while view:
            view = view[f.write(view):]


_made: set[str] = set()  # folders known to exist: one mkdir per folder, not per row


def forget_folders() -> None:
    """Drop what the run learnt about folders (made, resolved): a later run in this process looks again."""
    _made.clear()
    real_folder.cache_clear()


def output_folder(output: Path, root: str) -> None:
    """Make ``output``'s folder (once per run) and refuse it, as RowFailed, unless it resolves inside ``root``
    (--out with links resolved: a folder inside --out may be a link to elsewhere)."""
    os.close(_open_folder(os.path.dirname(output), output, root))


def _open_folder(folder: str, output: Path, root: str) -> int:
    """``output``'s folder made (once per run) and opened for ``dir_fd``, checked inside ``root`` on what was
    opened (``durable.open_within``): every row, since a folder's path may lead elsewhere by the next row."""
    try:
        for again in (False, True):
            if folder not in _made:
                if (elsewhere := _make_folder(folder, root)) is not None:
                    break
                if len(_made) > 10_000:  # bounded: outputs spread over many folders only cost a mkdir each again
                    _made.clear()
                _made.add(folder)
            try:
                fd, elsewhere = open_within(folder, root)
            except FileNotFoundError:  # removed during the run: made again
                if again:
                    raise
                _made.discard(folder)
                continue
            if elsewhere is None:
                return fd
            os.close(fd)
            break
    except OSError as e:
        raise RowFailed(f"cannot write output {output}: {e.strerror or e}", Reason.OUTPUT_UNWRITABLE) from None
    raise RowFailed(f"output {output} would be written outside --out: {folder} leads to {elsewhere}",
                    Reason.OUTPUT_OUTSIDE_OUT)


def _make_folder(folder: str, root: str) -> str | None:
    """Make ``folder`` and its missing parents, none of them outside ``root``: where it would lead when its
    nearest existing folder is outside (nothing made then), else None. Each new folder is made in the one
    before it as opened, never through a link (one planted meanwhile fails the row)."""
    missing: list[str] = []
    existing = folder
    while not os.path.isdir(existing):
        existing, name = os.path.split(existing)
        missing.append(name)
    fd, elsewhere = open_within(existing, root)
    try:
        if elsewhere is not None:
            return os.path.join(elsewhere, *reversed(missing))
        for name in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile (another row), or a link: opened next
                os.mkdir(name, dir_fd=fd)
            inner = os.open(name, FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return None
    finally:
        os.close(fd)
