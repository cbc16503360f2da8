"""glibc malloc settings for a worker process, set once before it starts any thread.

A 1080p photo's decode and encode buffers (6-8 MiB each) are above glibc's
mmap threshold (128 KiB, rising only as far as the largest block freed so
far) and above its trim threshold: each freed one was unmapped or trimmed
and the next call faulted it in again, page by page. In a worker that cost
370-790 minor faults and 4-5 ms of kernel CPU per photo, 14.7 % of its CPU
(1.1-1.2 x ``worker.rotation.rotate`` in-process, where one thread reuses one
heap). Blocks up to MMAP_THRESHOLD now come from the arenas' heaps, and a heap
keeps up to TRIM_THRESHOLD free at its top: ~20 faults per photo.

What that keeps: at most TRIM_THRESHOLD of free memory at the top of each
arena (--threads of them), on top of what the images in flight hold.
malloc_trim (after a big stream) does not shrink a thread arena's heap:
after eight cancelled 150 MiB streams, up to 101 MiB of such free tops
stayed resident with 4 arenas. Larger blocks (24 MP coefficient arrays) are
still mapped and unmapped per call. Off glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# 32 MiB is the most glibc accepts for the mmap threshold on 64-bit (half its 64 MiB heap size).
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 64 * 2**20


def tune_malloc(threads: int) -> bool:
    """Arenas capped at ``threads`` (as MALLOC_ARENA_MAX would: only --threads decode at once, and each arena
    keeps some of what big images freed), blocks up to MMAP_THRESHOLD kept in the heaps; True on glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = [mallopt(M_ARENA_MAX, threads), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    if not all(done):  # mallopt answers 0 for a value it refuses
        log.warning("glibc refused some malloc settings (mallopt answered %s)", done)
    return all(done)
