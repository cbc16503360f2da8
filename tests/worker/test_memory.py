"""The worker's malloc settings (worker/memory.py): photo-sized buffers freed by one call are reused by the next
instead of being unmapped and faulted in again. Counted in minor page faults, never timed."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.support.images import photo
from tests.support.processes import BIG_MESSAGES, ROOT, free_port, worker_process
from tests.support.rpc import scrape
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.memory import MMAP_THRESHOLD, tune_malloc

# Four threads each allocate, touch and free the buffers of a 1080p rotation (input, pixels, turned copy,
# output), as the worker's threads do; prints the minor faults per round after one round to warm up (untuned,
# every round faults them all in again: a few rounds tell, and each costs ~60 ms of page faults).
_ROUNDS = """
import resource, sys, threading
from worker.memory import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc(4)
SIZES = [800_000, 6_220_800, 8_294_400, 1_500_000, 8_294_400]
def work(rounds):
    for _ in range(rounds):
        held = []
        for size in SIZES:
            b = bytearray(size)
            b[::4096] = b"x" * len(b[::4096])
            held.append(b)
        del held
def run(rounds):
    threads = [threading.Thread(target=work, args=(rounds,)) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
run(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run(3)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 12)
"""
PAGES_PER_ROUND = sum([800_000, 6_220_800, 8_294_400, 1_500_000, 8_294_400]) // 4096


def _faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return float(out.stdout)


@pytest.mark.skipif(not tune_malloc(1), reason="glibc's mallopt only")
def test_tuned_malloc_reuses_freed_photo_buffers_across_threads():
    untuned, tuned = _faults_per_round("default"), _faults_per_round("tuned")
    # glibc's defaults unmap (or trim) most of these blocks when they are freed: the next round faults them in.
    assert untuned > PAGES_PER_ROUND / 4, untuned
    assert tuned < PAGES_PER_ROUND / 10, (tuned, untuned)  # 0-160 seen (arenas shared by chance)


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_rotating_photos_faults_far_fewer_pages_than_one_photo_holds():
    buf = io.BytesIO()
    photo(1920, 1080).save(buf, "JPEG", quality=90)
    request = v1.RotateRequest(image=buf.getvalue(), degrees=90)
    with worker_process("--threads", "4") as w, grpc.insecure_channel(w.address, options=BIG_MESSAGES) as ch:
        rotate = v1_grpc.ImageWorkerStub(ch).Rotate
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: rotate(request, timeout=120), range(8)))  # every thread's arena warmed up
            before = _minor_faults(w.proc.pid)
            answers = list(pool.map(lambda _: rotate(request, timeout=120), range(24)))
            per_call = (_minor_faults(w.proc.pid) - before) / 24
    assert all(a.width == 1080 and a.height == 1920 for a in answers)
    # A 1080p photo's decoded pixels alone are ~2,000 pages: glibc's defaults faulted ~2,400-2,550 per call
    # here, the tuned worker ~150-200.
    assert per_call < 600, per_call


# glibc's thread arenas grow in heaps of this size, each mapped at a multiple of it (arena.c: HEAP_MAX_SIZE, twice
# the largest mmap threshold, which is MMAP_THRESHOLD); the main arena grows by brk instead.
HEAP_MAX_SIZE = 2 * MMAP_THRESHOLD


def _thread_arena_heaps(pid: int) -> int:
    """How many glibc thread-arena heaps ``pid`` has: anonymous mappings that start at a multiple of HEAP_MAX_SIZE
    and, with the unusable rest of their reservation, end HEAP_MAX_SIZE later."""
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5:  # anonymous
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end, fields[1]))
    ends = {start: end for start, end, _ in regions}
    return sum(1 for start, end, perms in regions
               if start % HEAP_MAX_SIZE == 0 and perms.startswith("rw")
               and (end - start == HEAP_MAX_SIZE or ends.get(end, 0) - start == HEAP_MAX_SIZE))


@pytest.mark.slow
@pytest.mark.skipif(not tune_malloc(1), reason="glibc's mallopt only")
def test_one_thread_worker_keeps_one_arena_though_its_metrics_thread_starts_first():
    """--threads caps the arenas, each of which may keep TRIM_THRESHOLD free: it is set before --metrics-port's
    thread starts, whose first malloc would otherwise have made it an arena past the cap (two with --threads 1)."""
    buf = io.BytesIO()
    photo(1920, 1080).save(buf, "JPEG", quality=90)
    request = v1.RotateRequest(image=buf.getvalue(), degrees=90)
    metrics_port = free_port()
    with worker_process("--threads", "1", "--metrics-port", str(metrics_port)) as w, \
            grpc.insecure_channel(w.address, options=BIG_MESSAGES) as ch:
        rotate = v1_grpc.ImageWorkerStub(ch).Rotate
        with ThreadPoolExecutor(4) as pool:  # the worker's gRPC threads, its turn and its metrics all allocate
            answers = list(pool.map(lambda _: rotate(request, timeout=120), range(8)))
        assert scrape(metrics_port)
        assert all(a.width == 1080 for a in answers)
        assert _thread_arena_heaps(w.proc.pid) == 0
