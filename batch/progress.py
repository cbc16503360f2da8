"""Progress on stderr: a tqdm bar on a terminal, a plain line every few seconds otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Counts finished rows; ``mode`` is "bar", "lines" or "quiet" (see ``choose_mode``)."""

    def __init__(self, total: int, mode: str, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.total = total
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self.ok = self.failed = self.skipped = 0
        self._started = self._last = time.monotonic()
        self._bar = (
            tqdm(total=total, unit="row", file=self.stream, dynamic_ncols=True, smoothing=0.1)
            if mode == "bar" else None
        )

    def note(self, text: str) -> None:
        """A line for the user (not with --quiet), above the bar if there is one."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: bool, skipped: bool = False) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.skipped += skipped
        if self._bar is not None:
            self._bar.set_postfix_str(self._counts(), refresh=False)
            self._bar.update(1)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                print(self.line(), file=self.stream, flush=True)

    def _counts(self) -> str:
        skipped = f" ({self.skipped:,} already done)" if self.skipped else ""
        return f"{self.ok:,} ok{skipped}, {self.failed:,} failed"

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        worked = self.done - self.skipped
        rate = worked / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f", ETA {_duration(left / rate)}" if rate > 0 and left else ""
        percent = 100 * self.done / self.total if self.total else 100
        return (f"batch: {self.done:,}/{self.total:,} rows ({percent:.0f}%): {self._counts()}, "
                f"{rate:.1f} rows/s{eta}")

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
