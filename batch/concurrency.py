"""How many calls a run keeps in flight: adapted to what the workers answer, so a fleet is kept busy untuned.

A fixed number is wrong for every fleet but one: 8 calls keep one nearby
worker busy and leave three workers 25 ms away three quarters idle (137 rows/s
against 558 with 48 in flight, measured). The limit here follows the gradient
of Netflix's concurrency-limits (Gradient2): while the latency of recent calls
stays near its long-term average the workers are not queueing, so the limit
grows by about its square root per window; when recent calls get slower than
the long-term average (work queues somewhere) it shrinks in proportion; a
worker's busy refusal (WORKER_BUSY) cuts it by a tenth. It never goes above
the cap (--concurrency, or ``DEFAULT_CAP``) nor below 1. Written here because
the Python ports of concurrency-limits on PyPI are unmaintained single-author
packages, and the algorithm is twenty lines.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

DEFAULT_CAP = 128  # calls in flight at most without --concurrency: bytes mode holds each call's image in memory
BATCH_ROWS = 16  # rows per call by default (--batch-rows): past ~16 the per-row cost no longer falls much
PER_ADDRESS = 8  # calls to start with per address of named workers, whose size and distance are unknown
SMOOTHING = 0.3  # how far each window moves the limit toward its new estimate (0.2 ramped too slowly for short runs)
LONG_TERM = 0.02  # weight of one window in the long-term latency average (about 50 windows)


class AdaptiveLimit:
    """An asyncio gate whose limit adapts to observed latency and busy refusals (module docstring)."""

    def __init__(self, initial: int, cap: int, adaptive: bool = True) -> None:
        self.cap = cap
        self.adaptive = adaptive
        self.limit = float(min(max(initial, 1), cap))
        self.peak = self.limit
        self._in_flight = 0
        # Calls waiting for a slot, woken one per slot that frees: a Condition's notify_all would wake every
        # waiting task at every answer (up to the cap), which cost the driver more CPU than the calls.
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._window: list[float] = []
        self._long_term: float | None = None
        # When a call was last answered (or the gate made): a fleet full of other drivers' calls still answers
        # some of ours, while one that refuses everything does not (batch/retry.py's busy budget).
        self.last_answer = time.monotonic()
        self._last_refused: object = None

    @classmethod
    def for_addresses(cls, addresses: int) -> AdaptiveLimit:
        """An adaptive limit for named workers at ``addresses`` addresses: PER_ADDRESS calls each to start."""
        return cls(PER_ADDRESS * max(1, addresses), DEFAULT_CAP)

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    async def __aenter__(self) -> None:
        if self._in_flight < self.current and not self._waiting:
            self._in_flight += 1
            return
        slot = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await slot  # the slot is handed over already counted
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():  # handed over as it was cancelled: give it on
                self._release()
            raise

    async def __aexit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._in_flight < self.current:
            slot = self._waiting.popleft()
            if not slot.done():
                self._in_flight += 1
                slot.set_result(None)

    def answered(self, seconds: float) -> None:
        """A call was answered after ``seconds``."""
        self.last_answer = time.monotonic()
        if not self.adaptive:
            return
        self._window.append(seconds)
        if len(self._window) < max(8, self.current):
            return
        recent = sorted(self._window)[len(self._window) // 2]  # the median: one slow call is no trend
        self._window.clear()
        self._long_term = recent if self._long_term is None else (
            (1 - LONG_TERM) * self._long_term + LONG_TERM * recent)
        gradient = max(0.5, min(1.0, self._long_term / recent))
        estimate = self.limit * gradient + math.sqrt(self.limit)
        self._set((1 - SMOOTHING) * self.limit + SMOOTHING * estimate)

    def fleet(self, addresses: int) -> None:
        """The workers' names resolve to ``addresses`` addresses now: an adaptive limit grows to PER_ADDRESS
        calls for each, within the cap (a fleet that grew); it never shrinks for one that did not."""
        if self.adaptive:
            self._set(max(self.limit, float(PER_ADDRESS * addresses)))

    def refused(self, call: object = None) -> None:
        """A worker refused a call as busy: it holds as many as it may. ``call`` names the refused call: the rows
        of one batch (batch/batching.py) share one refusal, which cuts the limit once, not once a row."""
        if call is not None:
            if call is self._last_refused:
                return
            self._last_refused = call
        if self.adaptive:
            self._set(self.limit * 0.9)

    def _set(self, limit: float) -> None:
        self.limit = min(float(self.cap), max(1.0, limit))
        self.peak = max(self.peak, self.limit)
        self._wake()  # a higher limit has slots for waiting calls now
