"""Shares of one manifest: ``batch run --shard K/N`` runs the rows of share K only.

A row's share is a stable hash of its identity, decided by the row alone, so
the same row lands in the same share for a given N whatever the other shards
do, and in whichever order they run. Rows that depend on each other share a
key: every row writing one output (exact duplicates, whose leader answers for
them, and outputs that clash) hashes the output's name relative to --out, so
they land together and the leader, the clash and the default names
(``photo.r90.jpg``) are decided from the whole manifest, which every shard
reads, exactly as one run decides them. Other rows hash their id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from batch.errors import UsageError
from batch.manifest import Row
from batch.store import Uri

ENV = "BATCH_SHARD"
# Where an engine puts this process's index: a Kubernetes Indexed Job, a Slurm array job.
INDEX_ENV = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder(self) -> str:
        """The default --out under ``results/<manifest stem>/``."""
        return f"shard-{self.index}-of-{self.count}"

    def info(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """``K/N``, or ``N`` with K from ``JOB_COMPLETION_INDEX``, else ``SLURM_ARRAY_TASK_ID`` minus
    ``SLURM_ARRAY_TASK_MIN``; UsageError saying what is wrong."""
    environ = os.environ if environ is None else environ
    index_text, slash, count_text = text.strip().rpartition("/")
    count = _whole(count_text, f"--shard {text!r}: N (the number of shares) is not a whole number")
    if count < 1:
        raise UsageError(f"--shard {text!r}: N must be at least 1")
    if slash:
        index = _whole(index_text, f"--shard {text!r}: K (this share's index) is not a whole number")
    else:
        index = _index_from(environ, text)
    if not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: the index {index} is not in 0..{count - 1}")
    return Shard(index, count)


def _index_from(environ: Mapping[str, str], text: str) -> int:
    if (value := environ.get("JOB_COMPLETION_INDEX", "").strip()):
        return _whole(value, f"JOB_COMPLETION_INDEX={value!r} is not a whole number")
    if (value := environ.get("SLURM_ARRAY_TASK_ID", "").strip()):
        index = _whole(value, f"SLURM_ARRAY_TASK_ID={value!r} is not a whole number")
        if (low := environ.get("SLURM_ARRAY_TASK_MIN", "").strip()):
            index -= _whole(low, f"SLURM_ARRAY_TASK_MIN={low!r} is not a whole number")
        return index
    raise UsageError(f"--shard {text!r} gives no index: use --shard K/N, or set JOB_COMPLETION_INDEX "
                     "(a Kubernetes Indexed Job does) or SLURM_ARRAY_TASK_ID (a Slurm array job does)")


def _whole(text: str, problem: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise UsageError(problem)
    return int(text)


def share_of(key: str, count: int) -> int:
    """The share of ``key``: the same on every machine and Python (not ``hash``, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big") % count


def sharer(shard: Shard, out_dir: Path, store: Uri | None = None) -> Callable[[Row, str | None], int]:
    """The share of a row given its resolved output (``output_real`` of the index), for ``RunIndex.add_rows``.

    The output is named relative to --out (``out_dir``, or ``store`` when --out is a URI): each shard has its
    own --out, and a row must land in the same share in all of them.
    """
    out_real = os.path.realpath(out_dir)
    prefix = store.rstrip("/") + "/" if store is not None else None

    def share(row: Row, output_real: str | None) -> int:
        if output_real is None:
            return share_of(f"id:{row.id}", shard.count)
        if isinstance(row.output_path, Uri):
            if prefix is not None and output_real.startswith(prefix):
                return share_of(f"out:{output_real[len(prefix):]}", shard.count)
            return share_of(f"uri:{output_real}", shard.count)
        relative = os.path.relpath(output_real, out_real)
        return share_of(f"out:{relative}", shard.count)

    return share


def file_sha256(path: Path) -> str:
    """The manifest's fingerprint in run.json: shards of one manifest say so by the same digest."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
