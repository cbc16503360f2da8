"""The run's tally, and its display: a tqdm bar on a terminal (or a notebook's widget), a plain line on stderr
every few seconds otherwise, or nothing; and a callback for callers that show it their own way."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from batch.results import OK, Outcome


@dataclass
class Tally:
    """The one count of a run's rows: the progress display renders it, the summary and run.json read it."""

    rows: int = 0
    ok: int = 0  # already-done rows included
    failed: int = 0
    skipped: int = 0  # ok from an earlier run, not run again
    by_reference: int = 0  # rows whose files the worker read and wrote itself
    workers: dict[str, int] = field(default_factory=dict)  # "host:port/pid" -> calls answered
    models: set[str] = field(default_factory=set)  # "name version" of the face models that answered
    reasons: Counter[str] = field(default_factory=Counter)  # failed rows by their reason column

    def add(self, outcome: Outcome) -> None:
        if outcome.status == OK:
            self.ok += 1
        else:
            self.failed += 1
            self.reasons[outcome.reason] += 1
        self.skipped += outcome.skipped
        self.by_reference += outcome.by_reference
        if outcome.model:
            self.models.add(outcome.model)
        if outcome.worker:
            self.workers[outcome.worker] = self.workers.get(outcome.worker, 0) + 1

    @property
    def settled(self) -> int:
        return self.ok + self.failed

    @property
    def worked(self) -> int:
        """Rows settled by this run (not skipped as already done): what its rate counts."""
        return self.settled - self.skipped

    @property
    def not_run(self) -> int:
        return self.rows - self.settled

    def counts(self) -> str:
        skipped = f" ({self.skipped:,} already done)" if self.skipped else ""
        return f"{self.ok:,} ok{skipped}, {self.failed:,} failed"

    def failures(self, most: int = 3) -> str:
        """The commonest reasons rows failed, with their counts: ``2 INPUT_NOT_FOUND, 1 NOT_AN_IMAGE``."""
        common = self.reasons.most_common()
        shown = ", ".join(f"{n:,} {reason}" for reason, n in common[:most])
        return shown + (f" and {len(common) - most} more reasons" if len(common) > most else "")

    def rate(self, elapsed: float) -> float:
        return self.worked / elapsed if elapsed > 0 else 0.0


MODES = ("bar", "notebook", "lines", "quiet")


class Progress:
    """Shows a ``Tally`` as it changes; ``mode`` is one of ``MODES`` (see ``choose_mode``): "notebook" is
    tqdm's notebook widget in Jupyter (its text bar elsewhere). ``callback`` sees the tally at each change."""

    def __init__(self, tally: Tally, mode: str, stream: TextIO | None = None, interval: float = 10.0,
                 callback: Callable[[Tally], None] | None = None) -> None:
        self.tally = tally
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self.callback = callback
        self._shown = 0
        self._started = self._last = time.monotonic()
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm  # here: ~50 ms of imports that a run without a bar does without

            self._bar = tqdm(total=tally.rows, unit="row", file=self.stream, dynamic_ncols=True, smoothing=0.1)
        elif mode == "notebook":
            from tqdm.auto import tqdm as auto

            self._bar = auto(total=tally.rows, unit="row", smoothing=0.1)

    def note(self, text: str) -> None:
        """A line for the user (not with --quiet), above the bar if there is one."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def update(self) -> None:
        """The tally has changed."""
        if self.callback is not None:
            self.callback(self.tally)
        if self._bar is not None:
            self._bar.set_postfix_str(self.tally.counts(), refresh=False)
            self._bar.update(self.tally.settled - self._shown)
            self._shown = self.tally.settled
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        t = self.tally
        rate = t.rate(time.monotonic() - self._started)
        left = t.rows - t.settled
        eta = f", ETA {_duration(left / rate)}" if rate > 0 and left else ""
        percent = 100 * t.settled / t.rows if t.rows else 100
        return f"batch: {t.settled:,}/{t.rows:,} rows ({percent:.0f}%): {t.counts()}, {rate:.1f} rows/s{eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def choose_mode(quiet: bool, stream: TextIO | None = None) -> str:
    if quiet:
        return "quiet"
    stream = stream or sys.stderr
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
