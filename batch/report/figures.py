"""The report's figures as plain, JSON-ready data: one function from results folders to a dict.

The terminal, JSON and HTML renderings all draw from this one dict, so they
can never disagree about a number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from batch.report.runs import num as _num
from batch.report.runs import run_summary
from batch.report.table import Results

TOP_ERRORS = 10
TOP_SLOWEST = 10
PERCENTILES = (50, 90, 99)


def row_counts(rows: pd.DataFrame) -> dict:
    """Rows in total, by status, and by op and status."""
    by_op: dict[str, dict[str, int]] = {}
    for (op, status), n in rows.groupby(["op", "status"]).size().items():
        by_op.setdefault(str(op), {"ok": 0, "error": 0})[str(status)] = int(n)
    return {
        "total": len(rows),
        "ok": int((rows["status"] == "ok").sum()),
        "error": int((rows["status"] != "ok").sum()),
        "by_op": dict(sorted(by_op.items())),
    }


def label_counts(rows: pd.DataFrame) -> list[dict]:
    """Labels of the successful classify rows, most common first, with mean confidence."""
    done = rows[(rows["op"] == "classify") & (rows["status"] == "ok")]
    out = []
    for label, group in done.groupby("label"):
        out.append({
            "label": str(label),
            "count": len(group),
            "mean_confidence": _num(group["confidence"].mean(), 3),
        })
    return sorted(out, key=lambda d: (-d["count"], d["label"]))


def latency(rows: pd.DataFrame, run: dict) -> dict:
    """Latency percentiles over rows that made a call, and rows this run finished per second."""
    values = rows["latency_ms"].dropna().to_numpy(dtype=float)
    out: dict = {"count": int(values.size)}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = _num(np.percentile(values, p)) if values.size else None
    out["max_ms"] = _num(values.max()) if values.size else None
    out["mean_ms"] = _num(values.mean()) if values.size else None
    duration = run["duration_s"]
    out["rows_per_s"] = _num(run["rows_run"] / duration, 2) if duration else None
    return out


def latency_histogram(rows: pd.DataFrame, bins: int = 24) -> list[dict]:
    """Counts of latencies in equal-width bins from 0 to the maximum (for the HTML chart)."""
    values = rows["latency_ms"].dropna().to_numpy(dtype=float)
    if not values.size:
        return []
    top = max(float(values.max()), 1.0)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, top))
    return [
        {"from_ms": _num(edges[i]), "to_ms": _num(edges[i + 1]), "count": int(c)}
        for i, c in enumerate(counts)
    ]


def per_worker(rows: pd.DataFrame) -> list[dict]:
    """Rows answered and calls made per worker (a row's attempts count for the worker that finished it)."""
    answered = rows[rows["worker"] != ""]
    out = []
    for worker, group in answered.groupby("worker"):
        out.append({
            "worker": str(worker),
            "rows": len(group),
            "ok": int((group["status"] == "ok").sum()),
            "calls": int(group["attempts"].fillna(1).sum()),
        })
    return sorted(out, key=lambda d: (-d["rows"], d["worker"]))


def common_errors(rows: pd.DataFrame, top: int = TOP_ERRORS) -> list[dict]:
    """The failed rows grouped by ``reason`` (the worker's ErrorReason name or the driver's own, never the
    message's wording), most frequent first, each with one sample row and its message. A table written
    before the column existed groups its failures under the reason "" (not recorded)."""
    failed = rows[rows["status"] != "ok"]
    groups: dict[str, dict] = {}
    for row in failed.itertuples(index=False):
        key = row.reason or ""
        if key not in groups:
            groups[key] = {
                "reason": key,
                "count": 0,
                "sample": {"id": row.id, "path": row.path, "op": row.op, "error": row.error},
            }
        groups[key]["count"] += 1
    return sorted(groups.values(), key=lambda g: -g["count"])[:top]


def slowest(rows: pd.DataFrame, top: int = TOP_SLOWEST) -> list[dict]:
    """The rows with the highest latency."""
    picked = rows.dropna(subset=["latency_ms"]).nlargest(top, "latency_ms")
    return [
        {
            "id": r.id, "path": r.path, "op": r.op, "status": r.status,
            "latency_ms": _num(r.latency_ms), "attempts": _num(r.attempts, 0), "worker": r.worker,
        }
        for r in picked.itertuples(index=False)
    ]


def compute(results: Results) -> dict:
    """Every figure of the report, as a JSON-ready dict."""
    rows = results.rows
    run, shards, warnings = run_summary(results)
    return {
        "run": run,
        "shards": shards,
        "rows": row_counts(rows),
        "labels": label_counts(rows),
        "latency": latency(rows, run),
        "latency_histogram": latency_histogram(rows),
        "workers": per_worker(rows),
        "errors": common_errors(rows),
        "slowest": slowest(rows),
        "warnings": [*results.warnings, *warnings],
        "missing_columns": list(results.missing_columns),
    }
