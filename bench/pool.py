"""The machine's limit for rotation: the same work done in-process by one process per core, no gRPC.

Two limits, each a ``multiprocessing`` pool that reads the file, rotates it
and writes the output atomically (temporary file + rename), as the driver does:

- ``worker``: ``worker.rotation.rotate``, the very function the worker's
  servicer calls (lossless DCT path where the edges allow it, else re-encode).
- ``naive``: plain Pillow decode -> transpose -> encode with the input's own
  quantisation tables and subsampling, for every image.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

from PIL import Image, JpegImagePlugin

_TURN = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _write(out: Path, data: bytes) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


def _rotate_worker(job: tuple[str, int, str]) -> str:
    from worker.rotation import rotate

    src, degrees, out = job
    done = rotate(Path(src).read_bytes(), degrees)
    _write(Path(out), done.data)
    return done.method


def _rotate_naive(job: tuple[str, int, str]) -> str:
    src, degrees, out = job
    with Image.open(src) as img:
        qtables, sampling = img.quantization, JpegImagePlugin.get_sampling(img)
        turned = img.transpose(_TURN[degrees % 360])
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    turned.save(tmp, "JPEG", qtables=qtables, subsampling=sampling)
    os.replace(tmp, out)
    return "reencoded"


def _warm(_: int) -> int:
    import worker.rotation  # noqa: F401  imported before the clock starts, as a running worker has it

    return os.getpid()


FUNCS = {"worker": _rotate_worker, "naive": _rotate_naive}


def run_pool(kind: str, jobs: list[tuple[str, int, str]], processes: int) -> tuple[float, Counter]:
    """Seconds to do every job with a warmed-up pool of ``processes``, and the rotation methods used."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        pool.map(_warm, range(processes * 4))
        start = time.perf_counter()
        methods = Counter(pool.imap_unordered(FUNCS[kind], jobs, chunksize=1))
        elapsed = time.perf_counter() - start
    return elapsed, methods


def _cost(jobs: list[tuple[str, int]], tuned: bool) -> tuple[float, float]:
    import resource

    from worker.memory import tune_malloc
    from worker.rotation import rotate

    if tuned:
        tune_malloc(1)
    images = [(Path(src).read_bytes(), degrees) for src, degrees in jobs]
    for data, degrees in images:  # one pass first: the heap grows to its working size, as a warm worker's has
        rotate(data, degrees)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for data, degrees in images:
        rotate(data, degrees)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu / len(images) * 1000, (after.ru_minflt - before.ru_minflt) / len(images)


def in_process_cost(jobs: list[tuple[str, int]], tuned: bool = False) -> tuple[float, float]:
    """CPU milliseconds and minor page faults per image of ``worker.rotation.rotate`` on the jobs' bytes, in a
    fresh process of its own (files read before the clock starts); ``tuned``: with the worker's malloc settings
    (worker.memory)."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_cost, (jobs, tuned))
