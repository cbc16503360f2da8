"""A results folder in an object store: ``batch run --out s3://bucket/prefix``.

A pod's disk goes away with it; a bucket does not. While the run goes, its
bookkeeping stays on local disk, in a cache folder (``cache_folder``: under
``$TMPDIR``, else /tmp): the lock, the SQLite index and the journal, which are
written many times a second. The store gets the results table and run.json
when the run ends (however it ends, as the local files do), and the journal
at every checkpoint (``--checkpoint-every``) while it runs; a run starts by
fetching them, so that a new pod with an empty disk resumes where the last
checkpoint left off (rows journaled after it run again). Rotated outputs that
would be files under --out are objects under the URI instead (``rotated/…``,
or the row's own relative ``output``), each one PUT, as output URIs are.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from batch.results import JOURNAL_NAME, RUN_NAME, TABLE_NAMES
from batch.store import Uri, parse

CACHE_ENV = "BATCH_CACHE"  # where cache folders go, when not under $TMPDIR
_COPY_CHUNK = 8 * 2**20


def cache_folder(out: Uri) -> Path:
    """The local folder of a run into ``out``: one per URI, so that a run on the same disk finds its own."""
    root = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "imagebatch-cache")
    digest = hashlib.blake2b(out.encode(), digest_size=8).hexdigest()
    return Path(os.path.abspath(root)) / f"{out.relative.replace('/', '_')[:60]}-{digest}"


def object_of(out: Uri, name: str) -> Uri:
    """The object of ``name`` (a path relative to --out) under ``out``."""
    return parse(f"{out.rstrip('/')}/{name}")


def fetch(out: Uri, folder: Path) -> list[str]:
    """Copy the results files (tables, journal, run.json) that ``out`` holds into ``folder``, replacing local
    ones (the store is the record: another pod may have run since), each dated as its object is, so that the
    newest table still supersedes older ones. Returns the names fetched."""
    fs = _fs(out)
    fetched = []
    for name in (*TABLE_NAMES, RUN_NAME):
        uri = object_of(out, name)
        if not fs.isfile(uri):
            continue
        local = folder / name
        tmp = folder / f".{name}.fetch"
        fs.get_file(uri, str(tmp))
        stamp = fs.modified(uri).timestamp()
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, local)
        fetched.append(name)
    return fetched


def put(folder: Path, name: str, out: Uri, size: int | None = None) -> None:
    """Upload ``folder/name`` (its first ``size`` bytes when given: a journal being appended to, up to the end
    of its last whole group) as one object: a reader sees the old object or the new one."""
    with open(folder / name, "rb") as src, _fs(out).open(object_of(out, name), "wb") as dst:
        left = size
        while left is None or left > 0:
            chunk = src.read(_COPY_CHUNK if left is None else min(_COPY_CHUNK, left))
            if not chunk:
                break
            dst.write(chunk)
            if left is not None:
                left -= len(chunk)


def publish(folder: Path, out: Uri, names: list[str]) -> None:
    """The end of a run: upload ``names`` from ``folder``; a journal no longer kept locally (the table holds its
    rows now) is removed from the store too."""
    for name in names:
        if (folder / name).exists():  # not when the run failed before writing it
            put(folder, name, out)
    journal = object_of(out, JOURNAL_NAME)
    if not (folder / JOURNAL_NAME).exists() and _fs(out).isfile(journal):
        _fs(out).rm_file(journal)


def forget(out: Uri) -> None:
    """--restart: drop the store's earlier results tables (run.json keeps its legs)."""
    fs = _fs(out)
    for name in TABLE_NAMES:
        uri = object_of(out, name)
        if fs.isfile(uri):
            fs.rm_file(uri)


def _fs(uri: Uri):
    import fsspec  # the store's extra: checked when --out was parsed

    fs = fsspec.filesystem(uri.scheme)
    fs.invalidate_cache()  # listings cached by an earlier call must not hide what another pod wrote
    return fs
