"""Checks shared by the report tests: figures recomputed from the table, terminal width, a self-contained
page, and what headless Chromium did with it."""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.support.browser import PageVisit


def expected_figures(table: Path) -> dict:
    """The figures recomputed from the CSV with the standard library only (no pandas, no numpy)."""
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_op: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_op[r["op"]][r["status"]] += 1
    conf: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["op"] == "classify" and r["status"] == "ok":
            conf[r["label"]].append(float(r["confidence"]))
    lat = [float(r["latency_ms"]) for r in rows if r["latency_ms"]]
    cuts = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    workers = Counter(r["worker"] for r in rows if r["worker"])
    errors = Counter(r["error"] for r in rows if r["status"] != "ok")
    return {
        "total": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "by_op": {op: dict(c) for op, c in by_op.items()},
        "labels": {k: (len(v), statistics.fmean(v)) for k, v in conf.items()},
        "p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(lat) if lat else None,
        "workers": dict(workers),
        "errors": errors,
        "slowest": max(lat) if lat else None,
    }


def check_figures(fig: dict, table: Path) -> None:
    want = expected_figures(table)
    assert fig["rows"]["total"] == want["total"]
    assert fig["rows"]["ok"] == want["ok"]
    assert fig["rows"]["error"] == want["total"] - want["ok"]
    for op, counts in want["by_op"].items():
        assert fig["rows"]["by_op"][op]["ok"] == counts.get("ok", 0)
        assert fig["rows"]["by_op"][op]["error"] == counts.get("error", 0)
    assert {x["label"]: x["count"] for x in fig["labels"]} == {k: n for k, (n, _) in want["labels"].items()}
    for item in fig["labels"]:
        assert item["mean_confidence"] == pytest.approx(want["labels"][item["label"]][1], abs=0.0005)
    lat = fig["latency"]
    for key in ("p50", "p90", "p99", "max"):
        assert lat[f"{key}_ms"] == pytest.approx(want[key], abs=0.051), key  # figures are rounded to 0.1 ms
    assert {w["worker"]: w["rows"] for w in fig["workers"]} == want["workers"]
    assert sum(e["count"] for e in fig["errors"]) == sum(want["errors"].values())
    for e in fig["errors"]:
        assert e["sample"]["error"] in want["errors"]
    if want["slowest"] is not None:
        assert fig["slowest"][0]["latency_ms"] == pytest.approx(want["slowest"], abs=0.051)


def check_terminal_width(text: str) -> None:
    lines = text.splitlines()
    assert lines, "empty report"
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide


# In a tag, a src or href to http(s) or protocol-relative //, or a CSS url() that is not data:, would load
# from outside the file (the same words in escaped text are harmless: they hold no "<").
EXTERNAL_REF = re.compile(r"""<[^<>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?+(?!data:)""", re.IGNORECASE)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def parse_tags(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag as a browser's tokenizer sees it, with its attributes."""
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def assert_self_contained(page: str) -> None:
    for tag, attrs in parse_tags(page):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "background"):
                assert (value or "").startswith(("data:", "#")), (tag, name, value)
    assert not EXTERNAL_REF.findall(page), EXTERNAL_REF.findall(page)[:5]
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "@font-face" not in page


def check_visit(page: PageVisit, html: Path, png: Path) -> None:
    """What a reader's browser did with the page: loaded only itself and its data: images, all of them."""
    own = html.resolve().as_uri()
    assert page.requests and page.requests[0] == own
    outside = [u for u in page.requests if u != own and not u.startswith("data:")]
    assert not outside, outside
    assert page.images and all(i["complete"] and i["width"] > 0 for i in page.images), page.images
    # A CSP violation would mean the page tried to load or run something.
    assert not [m for m in page.console if "Content Security Policy" in m], page.console
    shot = Image.open(png)
    assert shot.size == (1200, 2000)
    # Not a blank page: the screenshot has the blue bars and thumbnails' colours.
    assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
