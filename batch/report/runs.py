"""What ran and when, over every leg of every folder reported: the legs, their totals, and the shards' state.

A leg is one `batch run` into a results folder (the first run, each resume, a
rerun with nothing left to do); run.json records each when it ends. A leg
still going, or killed before it could record itself, is known only by the
rows it finished: it is shown from their timestamps. run.json is read as data
that may be damaged or hand-edited: a value of the wrong type reads as unknown.
"""

from __future__ import annotations

import math
import re
import shlex
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from batch.report.table import PART, Part, Results

FINISHED, INTERRUPTED, STOPPED, RUNNING = "finished", "interrupted", "stopped", "running or killed"
# The state of several legs or folders together is the least finished of theirs.
_WORST_FIRST = (RUNNING, INTERRUPTED, STOPPED, FINISHED)


def num(value: float | int | None, digits: int = 1) -> float | int | None:
    """A JSON-safe number: NaN becomes None, floats are rounded for reading."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return round(float(value), digits)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _command(leg: dict) -> str | None:
    command = leg.get("command")
    if isinstance(command, str):
        return command
    return shlex.join(str(part) for part in command) if isinstance(command, list) else None


def _workers(leg: dict) -> str | None:
    """A leg's workers as one line: the targets, or the embedded worker and its processes."""
    workers = leg.get("workers")
    if not isinstance(workers, dict):
        return None
    targets = ", ".join(map(str, workers.get("targets") or []))
    if workers.get("embedded"):
        return f"embedded worker ({workers.get('embedded_processes')} processes) at {targets}"
    return targets or None


def _versions(legs: list[dict]) -> str | None:
    """The versions the legs ran with, each name once with every value it had (a leg that made no call has no
    face model: it must not hide the one the others used)."""
    merged: dict[str, list[str]] = {}
    for leg in legs:
        versions = leg.get("versions")
        for name, value in versions.items() if isinstance(versions, dict) else ():
            values = merged.setdefault(str(name), [])
            for v in value if isinstance(value, list) else [value]:
                if v is not None and str(v) not in values:
                    values.append(str(v))
    return ", ".join(f"{name} {', '.join(values) or '-'}" for name, values in merged.items()) or None


def _shard(leg: dict) -> tuple[int, int] | None:
    shard = leg.get("shard")
    if isinstance(shard, dict):
        index, count = _int(shard.get("index")), _int(shard.get("count"))
        if index is not None and count is not None:
            return index, count
    return None


def _shard_by_name(part: Part) -> tuple[int, int] | None:
    """A shard killed before its first leg ended has no run.json: its default --out (``shard-K-of-N``) says
    which it is."""
    name = part.uri.rstrip("/").rsplit("/", 1)[-1] if part.uri else part.folder.resolve().name
    match = re.fullmatch(r"shard-(\d+)-of-(\d+)", name)
    return (int(match[1]), int(match[2])) if match and int(match[1]) < int(match[2]) else None


def _leg(leg: dict, part: Part, finished: pd.Series) -> dict:
    """One recorded leg; rows it ran come from its counts, or (an older run.json) from the table's timestamps."""
    started, ended = _parse_time(leg.get("started_at")), _parse_time(leg.get("finished_at"))
    counts = leg.get("counts") if isinstance(leg.get("counts"), dict) else {}
    ok, failed, skipped = (_int(counts.get(k)) for k in ("ok", "failed", "skipped_already_done"))
    own = finished[finished >= pd.Timestamp(started)] if started else finished.iloc[:0]
    if ended:
        own = own[own <= pd.Timestamp(ended)]
    end = ended or (own.max().to_pydatetime() if len(own) else None)
    elapsed = leg.get("elapsed_s")
    if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and elapsed >= 0:
        duration = float(elapsed)
    else:
        duration = (end - started).total_seconds() if started and end else None
    if leg.get("interrupted"):
        state = INTERRUPTED
    elif isinstance(leg.get("stopped"), str) and leg["stopped"]:
        state = STOPPED
    else:
        state = FINISHED if ended else RUNNING
    shard = _shard(leg)
    return {
        "folder": part.name,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "recorded": True,
        "command": _command(leg),
        "started_at": started.isoformat() if started else None,
        "finished_at": end.isoformat() if end else None,
        "duration_s": num(duration, 3),
        "rows_run": ok + failed - (skipped or 0) if ok is not None and failed is not None else len(own),
        "skipped": skipped,
        "failed": failed,
        "not_run": _int(counts.get("not_run")),
        "state": state,
        "signal": leg.get("signal") if isinstance(leg.get("signal"), str) else None,
        "stopped": leg.get("stopped") if state == STOPPED else None,
        "workers": _workers(leg),
    }


def _unrecorded(part: Part, finished: pd.Series, after: datetime | None) -> dict:
    """The leg still going or killed, from the rows it finished after the last recorded one ended."""
    own = finished[finished > pd.Timestamp(after)] if after else finished
    first, last = (own.min().to_pydatetime(), own.max().to_pydatetime()) if len(own) else (None, None)
    return {
        "folder": part.name, "shard": None, "recorded": False, "command": None,
        "started_at": first.isoformat() if first else None, "finished_at": last.isoformat() if last else None,
        "duration_s": num((last - first).total_seconds(), 3) if first else None, "rows_run": len(own),
        "skipped": None,
        "failed": None, "not_run": None, "state": RUNNING, "signal": None, "stopped": None, "workers": None,
    }


def _span(legs: list[dict]) -> float | None:
    """Seconds during which at least one leg ran: legs one after another add up, shards side by side overlap."""
    spans = []
    for leg in legs:
        start = _parse_time(leg["started_at"])
        if start is not None and leg["duration_s"] is not None:
            spans.append((start, start + timedelta(seconds=leg["duration_s"])))
    if not spans:
        return None
    total, (begin, end) = 0.0, sorted(spans)[0]
    for start, stop in sorted(spans)[1:]:
        if start > end:
            total += (end - begin).total_seconds()
            begin, end = start, stop
        else:
            end = max(end, stop)
    return total + (end - begin).total_seconds()


def _worst(states: list[str]) -> str:
    return min(states, key=_WORST_FIRST.index) if states else RUNNING


def part_legs(results: Results) -> list[tuple[Part, list[dict]]]:
    """Each folder with its legs, oldest first (the unrecorded one last)."""
    out = []
    for number, part in enumerate(results.parts):
        finished = results.rows.loc[results.rows[PART] == number, "finished_at"].dropna()
        legs = [_leg(leg, part, finished) for leg in part.legs]
        last_end = _parse_time(legs[-1]["finished_at"]) if legs else None
        if part.run_stale or not legs:
            extra = _unrecorded(part, finished, last_end)
            if extra["rows_run"] or part.run_stale:  # stale: a later leg is going, perhaps with no row done yet
                legs.append(extra)
        out.append((part, legs))
    return out


def shard_status(parts: list[tuple[Part, list[dict]]]) -> tuple[dict | None, list[str]]:
    """Which shards of the manifest are here, missing or unfinished (None for one folder that is no shard),
    and warnings about folders that are not shards of one manifest."""
    folders, warnings = [], []
    for part, legs in parts:
        newest = part.legs[-1] if part.legs else {}
        shard = _shard(newest) if part.legs else _shard_by_name(part)
        state = legs[-1]["state"] if legs else RUNNING
        not_run = legs[-1]["not_run"] if legs else None
        folders.append({
            "folder": part.name,
            "index": shard[0] if shard else None,
            "count": shard[1] if shard else None,
            "manifest_sha256": newest.get("manifest_sha256") if isinstance(newest.get("manifest_sha256"), str)
            else None,
            "manifest_rows": _int(newest.get("manifest_rows")),
            "shard_rows": _int(newest.get("shard_rows")),
            "rows": part.rows,
            "state": state,
            "complete": state == FINISHED and not not_run,
        })
    if len(folders) == 1 and folders[0]["index"] is None:
        return None, warnings
    counts = {f["count"] for f in folders if f["count"] is not None}
    digests = {f["manifest_sha256"] for f in folders if f["manifest_sha256"]}
    if len(counts) > 1:
        warnings.append(f"the folders are shards of different splits ({' and '.join(map(str, sorted(counts)))} "
                        "shards): they are not the shards of one run")
    if len(digests) > 1:
        warnings.append("the folders ran different manifests (their manifest_sha256 differ): they are not the "
                        "shards of one manifest")
    if any(f["index"] is None for f in folders) and counts:
        unsharded = [f["folder"] for f in folders if f["index"] is None]
        warnings.append(f"not a shard (run without --shard): {', '.join(unsharded)}")
    indices = [f["index"] for f in folders if f["index"] is not None]
    for index in sorted({i for i in indices if indices.count(i) > 1}):
        twice = [f["folder"] for f in folders if f["index"] == index]
        warnings.append(f"shard {index} is in more than one folder: {', '.join(twice)}")
    count = counts.pop() if len(counts) == 1 else None
    rows = {f["manifest_rows"] for f in folders if f["manifest_rows"] is not None}
    return {
        "count": count,
        "manifest_sha256": next(iter(digests)) if len(digests) == 1 else None,
        "manifest_rows": rows.pop() if len(rows) == 1 else None,
        "folders": sorted(folders, key=lambda f: (f["index"] is None, f["index"] or 0)),
        "missing": sorted(set(range(count)) - set(indices)) if count else [],
        "unfinished": [f["folder"] for f in folders if not f["complete"]],
    }, warnings


def run_summary(results: Results) -> tuple[dict, dict | None, list[str]]:
    """What ran and when over every leg of every folder; the shards' state; warnings about the folders."""
    parts = part_legs(results)
    legs = [leg for _part, part_legs_ in parts for leg in part_legs_]
    shards, warnings = shard_status(parts)
    recorded = [leg for part, _ in parts for leg in part.legs]
    newest = recorded[-1] if recorded else {}
    state = _worst([part_legs_[-1]["state"] if part_legs_ else RUNNING for _part, part_legs_ in parts])
    starts = [leg["started_at"] for leg in legs if leg["started_at"]]
    ends = [leg["finished_at"] for leg in legs if leg["finished_at"]]
    if shards is not None and shards["manifest_rows"] is not None:
        expected = shards["manifest_rows"]
    else:
        per_part = [_int(part.legs[-1].get("counts", {}).get("rows")) if part.legs
                    and isinstance(part.legs[-1].get("counts"), dict) else None for part, _ in parts]
        expected = sum(per_part) if per_part and None not in per_part else None
    workers = list(dict.fromkeys(leg["workers"] for leg in legs if leg["workers"]))
    complete = state == FINISHED and not (shards and shards["missing"])
    return {
        "folder": ", ".join(part.name for part, _ in parts),
        "folders": [part.name for part, _ in parts],
        "table": ", ".join(dict.fromkeys(part.table_path.name for part, _ in parts)),
        "command": _command(newest),
        "manifest": newest.get("manifest") if isinstance(newest.get("manifest"), str) else None,
        "state": state,
        "complete": complete,
        "started_at": min(starts, key=_parse_time) if starts else None,
        "finished_at": max(ends, key=_parse_time) if ends else None,
        "duration_s": num(_span(legs), 3),
        "rows_run": sum(leg["rows_run"] for leg in legs),
        "expected_rows": expected,
        "workers": "; ".join(workers) or None,
        "versions": _versions(recorded),
        "legs": legs,
    }, shards, warnings
