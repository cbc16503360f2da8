"""The files a worker reads and writes for a request in reference mode, only under the roots its operator named.

A reference is an absolute path on storage the worker shares with the driver
(NFS, a mounted volume). It is resolved (``..`` and every link followed) and
must fall under a ``--data-root`` (to read) or an ``--output-root`` (to
write); the check is made again on what was actually opened
(``/proc/self/fd``), so a link swapped in between the two cannot lead outside.
An output's folders are opened and made one at a time from the opened root
(``dir_fd``, never following a link), not by path: a folder swapped for a link
after the check is refused, and no folder is ever made outside the root.
Writes are atomic and durable before the worker answers: a temporary file
created in the target's folder (opened once, by descriptor), fsync, rename,
fsync of the folder. Nothing here imports grpc; refusals are WorkerErrors.

An object-store reference (``s3://bucket/key``, ``gs://``, ``az://``; ``http(s)://`` to read) is served
only under roots given as URI prefixes (``--data-root s3://bucket/in/``): normalised (scheme and bucket in
lower case; a ``.`` or ``..`` segment refused, never interpreted), it must start with one. It is read and
written through fsspec, with the credentials of the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...); a single PUT is atomic and durable once it is answered. The helpers for URIs
below are the driver's too (batch/store.py), so both sides agree on what a URI names.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import re
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


# Object stores: each scheme, the one fsspec serves it as, the package that implements it and the extra that
# installs that package. http(s) is read-only.
SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "http": "http", "https": "https"}
PACKAGES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "az": ("adlfs", "azure"), "http": ("aiohttp", "http"),
            "https": ("aiohttp", "http")}
READ_ONLY = ("http", "https")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def uri_scheme(text: str) -> str | None:
    """The scheme of ``scheme://…`` as written (``S3``, ``ftp``), or None for a path."""
    if "://" not in text:  # the common case, a path: no regular expression
        return None
    match = _SCHEME.match(text)
    return match.group(1) if match else None


def normalise_uri(text: str) -> str:
    """One spelling per object: the canonical scheme, the bucket (or host) in lower case, the key as written.

    ValueError saying why for an unknown scheme, no bucket, credentials in the URI, or a ``.`` or ``..``
    segment (an object store takes them literally, other tools do not: refused rather than guessed).
    """
    scheme = uri_scheme(text) or ""
    canonical = SCHEMES.get(scheme.lower())
    if canonical is None:
        raise ValueError(f"{text!r}: {scheme}:// is not a supported scheme ({', '.join(sorted(set(SCHEMES)))})")
    bucket, _, key = text[len(scheme) + 3:].partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket")
    if canonical in READ_ONLY and "@" in bucket:
        raise ValueError(f"{text!r} carries credentials: give them in the environment, not in the URI")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError(f"{text!r} has a '.' or '..' segment")
    if canonical not in READ_ONLY and (mark := next((c for c in "?#" if c in text), None)):
        # s3fs takes "?versionId=" as a version, gcsfs "#" and "?generation=", adlfs "?versionid=": the key
        # they address is then another than the one written here (s3://b/x?versionId=1.jpg writes b/x), and
        # none of them has an escape that reaches a key holding these characters. Refused, never guessed.
        raise ValueError(f"{text!r} has a {mark!r} in its key: object-store clients read it as the start of a "
                         "version (?versionId=, #generation), so no URI names such a key reliably; rename the object")
    return f"{canonical}://{bucket.lower()}/{key}"


def object_uri(text: str) -> str:
    """``normalise_uri`` of a URI that names one object: ValueError too when its key is empty or ends in '/'
    (a store's client strips that '/': s3://b/a.jpg/ reads and writes b/a.jpg, which the clash checks would
    take for another object)."""
    normal = normalise_uri(text)
    scheme, _, rest = normal.partition("://")
    key = rest.partition("/")[2]
    if scheme not in READ_ONLY and (not key or key.endswith("/")):
        raise ValueError(f"{text!r} names a folder (its key is empty or ends in '/'), not an object")
    return normal


def missing_package(scheme: str) -> tuple[str, str] | None:
    """(package, extra) when the package that serves ``scheme`` (canonical) is not installed, else None."""
    package, extra = PACKAGES[scheme]
    if importlib.util.find_spec("fsspec") is None or importlib.util.find_spec(package) is None:
        return package, extra
    return None


def _filesystem(uri: str):
    import fsspec  # an extra: imported only when a URI is served

    # fsspec caches one instance per protocol and process (and makes a new one after a fork).
    return fsspec.filesystem(uri.partition("://")[0])


def read_object(uri: str, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of the object ``uri`` (normalised), in one ranged GET: more than
    ``max_bytes`` means it is too large. OSError as fsspec raises it (FileNotFoundError: no such object)."""
    fs = _filesystem(uri)
    try:
        return fs.cat_file(uri, start=0, end=max_bytes + 1)
    except OSError as e:
        # An empty object has no byte 0 to range over (416): read it as empty.
        if e.errno == errno.EINVAL and fs.info(uri).get("size") == 0:
            return b""
        raise


def write_object(uri: str, data: bytes) -> None:
    """Store ``data`` as the object ``uri`` (normalised): one PUT (multipart for big ones), atomic, durable once
    answered. OSError as fsspec raises it."""
    _filesystem(uri).pipe_file(uri, data)


def object_size(uri: str) -> int | None:
    """The size of the object ``uri`` (normalised) names (not a prefix), in one HEAD; None when there is none
    or the store cannot say (a row resumed on that answer runs again, and its own read says what is wrong)."""
    try:
        info = _filesystem(uri).info(uri)
    except OSError:
        return None
    return info.get("size") if info.get("type") == "file" else None


@dataclass(frozen=True)
class Roots:
    """Resolved folders, and normalised URI prefixes (``s3://bucket/in/``), a worker may read under and write
    under; empty: references are off."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    read_uris: tuple[str, ...] = ()
    write_uris: tuple[str, ...] = ()

    @classmethod
    def of(cls, read: Iterable[str | os.PathLike], write: Iterable[str | os.PathLike]) -> Roots:
        """Roots from the command line: each an existing folder or a URI prefix whose package is installed
        (ValueError saying which is not). Nothing is asked of a store here: the parent forks its processes
        after this."""
        read, write = [str(r) for r in read], [str(w) for w in write]
        return cls(tuple(_folder(r, "--data-root") for r in read if not uri_scheme(r)),
                   tuple(_folder(w, "--output-root") for w in write if not uri_scheme(w)),
                   tuple(_prefix(r, "--data-root") for r in read if uri_scheme(r)),
                   tuple(_prefix(w, "--output-root") for w in write if uri_scheme(w)))

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write or self.read_uris or self.write_uris)

    def read_uri(self, uri: str, max_bytes: int) -> bytes:
        """The bytes of the object ``uri`` under a --data-root prefix, at most ``max_bytes`` of them."""
        uri = self._contained(uri, self.read_uris, "--data-root", "read")
        try:
            data = read_object(uri, max_bytes)
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None
        except OSError as e:
            raise StorageError(f"cannot read {uri}: {e}", Reason.FILE_UNREADABLE) from None
        if len(data) > max_bytes:
            raise TooLarge(f"{uri} is over this worker's limit of {max_bytes / 2**20:.0f} MiB "
                           "(worker serve --max-image-mb)")
        return data

    def write_uri(self, uri: str, data: bytes) -> None:
        """Store ``data`` as the object ``uri`` under an --output-root prefix (one PUT: atomic)."""
        uri = self._contained(uri, self.write_uris, "--output-root", "write")
        try:
            write_object(uri, data)
        except OSError as e:
            raise StorageError(f"cannot write {uri}: {e}", Reason.FILE_UNWRITABLE) from None

    def _contained(self, uri: str, prefixes: tuple[str, ...], option: str, verb: str) -> str:
        if not self.enabled:
            raise StorageError(f"this worker does not {verb} objects (start it with {option} s3://BUCKET/PREFIX/ "
                               "to use references)", Reason.REFERENCES_OFF)
        try:
            normal = object_uri(uri)
        except ValueError as e:
            raise StorageError(f"reference {e}", Reason.OUTSIDE_ROOTS) from None
        if not any(normal.startswith(prefix) for prefix in prefixes):
            raise StorageError(f"{uri} is outside this worker's {option} ({', '.join(prefixes) or 'no URI'})",
                               Reason.OUTSIDE_ROOTS)
        return normal

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
                               f"{max_bytes / 2**20:.0f} MiB (worker serve --max-image-mb)")
            return f.read(info.st_size)

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` under a write root, atomically and durably; its folders are made."""
        if not os.path.isabs(path):
            raise StorageError(f"reference {path!r} is not an absolute path", Reason.OUTSIDE_ROOTS)
        folder, name = os.path.split(os.path.normpath(path))
        real = self._resolve(folder, self.write, "--output-root", "write")  # before making any folder
        root = next(r for r in self.write if _under(real, (r,)))
        dir_fd = _open_folders(root, os.path.relpath(real, root), path)
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
        try:
            real = os.path.realpath(path)
        except OSError as e:  # e.g. EINVAL: a link it had seen was no longer one when read, swapped meanwhile
            raise StorageError(f"cannot resolve {path}: {e.strerror} (it changed while it was resolved)",
                               Reason.OUTSIDE_ROOTS) from None
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


def _open_folders(root: str, relative: str, path: str) -> int:
    """A descriptor of ``root/relative``, its folders opened (and made where missing) one at a time relative
    to the one before, none through a link: a link found where the check saw a folder was swapped in since,
    and is refused (OUTSIDE_ROOTS) rather than followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except OSError as e:
        raise StorageError(f"cannot open the --output-root {root}: {e.strerror}", Reason.FILE_UNWRITABLE) from None
    try:
        for part in [] if relative == os.curdir else relative.split(os.sep):
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # made meanwhile: opened (or refused) below
                    os.mkdir(part, dir_fd=fd)
                child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except OSError as e:
        # A link meets O_NOFOLLOW | O_DIRECTORY with ELOOP or ENOTDIR (Linux); ENOTDIR is also a file in the way.
        swapped = e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and not _file_in_the_way(part, fd))
        os.close(fd)
        if swapped:
            raise StorageError(f"a folder of {path} is a link now (it was not when checked): refusing to follow it",
                               Reason.OUTSIDE_ROOTS) from None
        raise StorageError(f"cannot make the folder of {path}: {e.strerror}", Reason.FILE_UNWRITABLE) from None


def _file_in_the_way(name: str, dir_fd: int) -> bool:
    """Whether ``name`` is neither a folder nor a link: what a folder cannot be made over. A folder or nothing
    there now means it changed since it was opened as something else."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return False
    return not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def _under(real: str, roots: tuple[str, ...]) -> bool:
    return any(os.path.commonpath([real, root]) == root for root in roots)


def _prefix(uri: str, option: str) -> str:
    """A URI root, normalised and ending in ``/``: containment is then a plain prefix test on whole segments."""
    try:
        normal = normalise_uri(uri)
    except ValueError as e:
        raise ValueError(f"{option} {e}") from None
    scheme = normal.partition("://")[0]
    if option == "--output-root" and scheme in READ_ONLY:
        raise ValueError(f"{option} {uri}: {scheme}:// is read-only")
    if missing := missing_package(scheme):
        raise ValueError(f"{option} {uri} needs {missing[0]}, which is not installed: "
                         f"pip install 'imagebatch[{missing[1]}]'")
    return normal if normal.endswith("/") else normal + "/"


def _folder(path: str | os.PathLike, option: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ValueError(f"{option} {path} is not a folder")
    return real
