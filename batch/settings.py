"""``Settings``: how each row's calls are made (deadline, retries and their waits, the run's folders and roots,
--quality, --batch-rows), from the run's options. No grpc import: the run's options are built, and its embedded
worker launched, before grpc is loaded (batch/session.py)."""

from __future__ import annotations

from dataclasses import dataclass

from batch.concurrency import BATCH_ROWS


@dataclass(frozen=True)
class Settings:
    timeout: float  # seconds per call
    retries: int  # retries after the first attempt
    backoff_base: float = 1.0  # first retry waits up to this; doubles each time
    backoff_cap: float = 20.0
    busy_backoff_base: float = 0.05  # the same, after a worker refused a call as busy
    # Waits after busy refusals stay short: a slot frees within a call's time, and a row that waited long would
    # lose its turn to rows refused for the first time (drivers sharing a fleet, each refused in turn).
    busy_backoff_cap: float = 1.0
    out_root: str = "/"  # --out with links resolved: outputs are written only inside it
    # Reference mode: resolved folders under which the worker reads inputs and writes outputs itself.
    read_roots: tuple[str, ...] = ()
    write_roots: tuple[str, ...] = ()
    quality: int = 0  # --quality for lossy targets; 0: the worker's rule (proto RotateRequest.quality)
    batch_rows: int = BATCH_ROWS  # --batch-rows: rows per call for references and small images (1: one each)

    @property
    def busy_budget(self) -> float:
        """Seconds a row may be refused as busy while no call of the run is answered: as long as --retries
        ordinary retries at most, and never less than a call may take (--timeout): other drivers' calls may hold
        every slot of the fleet that long, and a driver refused while they do has no answer of its own."""
        return max(self.timeout, sum(min(self.backoff_cap, self.backoff_base * 2 ** k) for k in range(self.retries)))
