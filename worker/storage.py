"""The files a worker reads and writes for a request in reference mode, only under the roots its operator named.

A reference is an absolute path on storage the worker shares with the driver
(NFS, a mounted volume). It is resolved (``..`` and every link followed) and
must fall under a ``--data-root`` (to read) or an ``--output-root`` (to
write); the check is made again on what was actually opened
(``/proc/self/fd``), so a link swapped in between the two cannot lead outside.
Writes are atomic and durable before the worker answers: a temporary file
created in the target's folder (opened once, by descriptor), fsync, rename,
fsync of the folder. Nothing here imports grpc; refusals are WorkerErrors.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from worker.errors import Reason, TooLarge, WorkerError


class StorageError(WorkerError):
    """A reference the worker will not or cannot serve; the reason says which."""

    status = "PERMISSION_DENIED"
    reason = Reason.OUTSIDE_ROOTS


class NotFound(WorkerError):
    status = "NOT_FOUND"
    reason = Reason.FILE_NOT_FOUND


@dataclass(frozen=True)
class Roots:
    """Resolved folders a worker may read under and write under; empty: references are off."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def of(cls, read: Iterable[str | os.PathLike], write: Iterable[str | os.PathLike]) -> Roots:
        """Roots from the command line: each must be an existing folder (ValueError saying which is not)."""
        return cls(tuple(_folder(r, "--data-root") for r in read), tuple(_folder(w, "--output-root") for w in write))

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write)

    def read_file(self, path: str, max_bytes: int) -> bytes:
        """The bytes of the regular file ``path`` under a read root, at most ``max_bytes`` of them."""
        real = self._resolve(path, self.read, "--data-root", "read")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no such file: {path}") from None
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}", Reason.FILE_UNREADABLE) from None
        with open(fd, "rb") as f:
            self._still_inside(fd, path, self.read, "--data-root")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StorageError(f"not a regular file: {path}", Reason.FILE_UNREADABLE)
            if info.st_size > max_bytes:
                raise TooLarge(f"{path} is {info.st_size / 2**20:.1f} MiB, over this worker's limit of "
                               f"{max_bytes / 2**20:.0f} MiB (worker serve --max-message-mb)")
            return f.read(info.st_size)

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` under a write root, atomically and durably; its folders are made."""
        if not os.path.isabs(path):
            raise StorageError(f"reference {path!r} is not an absolute path", Reason.OUTSIDE_ROOTS)
        folder, name = os.path.split(os.path.normpath(path))
        self._resolve(folder, self.write, "--output-root", "write")  # before making any folder
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot make the folder of {path}: {e.strerror}", Reason.FILE_UNWRITABLE) from None
        real_folder = self._resolve(folder, self.write, "--output-root", "write")
        dir_fd = os.open(real_folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._still_inside(dir_fd, path, self.write, "--output-root")
            tmp = f".{name}.{secrets.token_hex(4)}.workertmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                             dir_fd=dir_fd)
                with open(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise StorageError(f"cannot write {path}: {e.strerror}", Reason.FILE_UNWRITABLE) from None
        finally:
            os.close(dir_fd)

    @staticmethod
    def _resolve(path: str, roots: tuple[str, ...], option: str, verb: str) -> str:
        if not roots:
            raise StorageError(f"this worker does not {verb} files (start it with {option} DIR to use references)",
                               Reason.REFERENCES_OFF)
        if not os.path.isabs(path):
            raise StorageError(f"reference {path!r} is not an absolute path", Reason.OUTSIDE_ROOTS)
        real = os.path.realpath(path)
        if not _under(real, roots):
            raise StorageError(f"{path} resolves to {real}, outside this worker's {option} "
                               f"({', '.join(roots)})", Reason.OUTSIDE_ROOTS)
        return real

    @staticmethod
    def _still_inside(fd: int, path: str, roots: tuple[str, ...], option: str) -> None:
        """What was opened, not what was checked: a link swapped in after the check is caught here."""
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if not _under(opened, roots):
            raise StorageError(f"{path} led to {opened} when opened, outside this worker's {option}",
                               Reason.OUTSIDE_ROOTS)


def _under(real: str, roots: tuple[str, ...]) -> bool:
    return any(os.path.commonpath([real, root]) == root for root in roots)


def _folder(path: str | os.PathLike, option: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ValueError(f"{option} {path} is not a folder")
    return real
