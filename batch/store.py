"""Object stores in manifests: ``s3://``, ``gs://``, ``az://`` (``http(s)://`` to read) through fsspec.

A row whose ``path`` or ``output`` is a URI carries it as a ``Uri``, normalised the way the worker normalises
its references (worker/storage.py: one spelling per object), where other rows carry a ``Path``; local paths
never reach this module, so their code path costs nothing more. Credentials are the standard environment's
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` for S3), read
by the store's own package; none is ever written down by the run.

The reads, writes and checks are the worker's (one implementation): a read is one ranged GET bounded by its
size limit, a write one PUT (atomic: no reader sees half an object), and both raise OSError as fsspec does.
"""

from __future__ import annotations

import functools
import posixpath
from pathlib import Path

from batch.extras import MissingExtra
from worker.storage import READ_ONLY, missing_package, normalise_uri, object_uri, uri_scheme
from worker.storage import object_size as size
from worker.storage import read_object as read
from worker.storage import write_object as write

__all__ = ["Uri", "credentials_problem", "is_uri", "location", "parse", "parse_object", "read", "require", "size",
           "write"]


class Uri(str):
    """A normalised object-store URI, where a row has a path (``isinstance`` tells the two apart)."""

    __slots__ = ()

    @property
    def scheme(self) -> str:
        return self.partition("://")[0]

    @property
    def relative(self) -> str:
        """``bucket/key``: where a default output of this input goes under ``--out/rotated/``."""
        return self.partition("://")[2]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self)[1]

    @property
    def writable(self) -> bool:
        return self.scheme not in READ_ONLY


def is_uri(text: str) -> bool:
    """Whether a manifest cell is a URI (``scheme://…``) rather than a path."""
    return uri_scheme(text) is not None


def parse(text: str) -> Uri:
    """The normalised URI of a manifest cell: ValueError saying why it names no object (a row's error), or
    MissingExtra when its store's package is not installed (the run's: no row of that store could run)."""
    uri = Uri(normalise_uri(text))
    require(uri.scheme)
    return uri


def parse_object(text: str) -> Uri:
    """``parse`` of a manifest cell that names one object (a row's input or output), not a prefix."""
    uri = Uri(object_uri(text))
    require(uri.scheme)
    return uri


@functools.cache
def require(scheme: str) -> None:
    """Raise MissingExtra unless the package serving ``scheme`` (canonical) is installed; asked once a run."""
    if missing := missing_package(scheme):
        package, extra = missing
        raise MissingExtra(f"{scheme}:// needs {package}, which is not installed: pip install 'imagebatch[{extra}]'")


def credentials_problem(scheme: str) -> str | None:
    """What credentials for ``scheme`` (canonical) this process lacks and where they were looked for; None
    when it has some, or when the store's package cannot tell without a request.

    S3's answer is botocore's own chain (the one s3fs signs with), asked without a request: no credentials
    found (None), or an exception whose class says what is wrong.
    """
    if scheme != "s3":
        return None
    import botocore.exceptions
    import botocore.session

    session = botocore.session.get_session()
    try:
        if session.get_credentials() is not None:
            return None
        problem = "no S3 credentials"
    except botocore.exceptions.PartialCredentialsError as e:
        return (f"incomplete S3 credentials: {e.kwargs['cred_var']} is not set (the rest were found in "
                f"{e.kwargs['provider']})")
    except botocore.exceptions.ProfileNotFound as e:
        problem = f"no S3 profile {e.kwargs['profile']!r} (AWS_PROFILE)"
    except botocore.exceptions.BotoCoreError as e:  # a config file that does not parse, say: its own words
        problem = f"cannot load S3 credentials ({e})"
    return (f"{problem} in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), in "
            f"{session.get_config_variable('credentials_file')} or {session.get_config_variable('config_file')} "
            f"(profile {session.profile or 'default'}), or from container or instance metadata")


def location(text: str) -> Path | Uri:
    """A location as the index stores it (``str`` of either), back as what it was."""
    return Uri(text) if is_uri(text) else Path(text)
