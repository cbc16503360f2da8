"""The report as one self-contained HTML file: inline CSS, inline SVG charts, data: URI thumbnails.

Every piece of text from the table (paths, labels, errors) goes through
``escape``; a Content-Security-Policy forbids scripts and any load that is not
a data: image, so even a mistake here could not make the page fetch anything.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from batch.report import charts
from batch.report.gallery import Galleries, Thumb
from batch.report.terminal import NO_REASON, incomplete_notes, when

LEGS_CAP = 200  # rows of the legs and shards tables: a job of thousands of shards keeps a small page
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1160px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:14px 0 6px}.muted,.note{color:#666}.note{font-size:12px}
.banner{background:#fff3cd;border:1px solid #e0c36b;padding:8px 12px;margin:10px 0}
.warn{background:#f8f8f8;border-left:3px solid #c90;padding:4px 10px;margin:4px 0;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.card.bad b{color:#b00}
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #eee;padding:3px 10px;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:flex;flex-wrap:wrap;gap:30px;align-items:flex-start}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:170px;font-size:12px;word-wrap:break-word}
figure.pair{width:346px}.pair .imgs{display:flex;gap:6px}
.thumb{width:160px;height:160px;display:flex;align-items:center;justify-content:center;
background:#f3f3f3;border:1px solid #e4e4e4}.thumb img{max-width:160px;max-height:160px}
.thumb.missing{color:#a00;font-size:11px;padding:6px;box-sizing:border-box;text-align:center}
td.err{color:#a00;max-width:560px;word-break:break-word}code{font-size:12px}
"""


def _n(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    if value is None or pd.isna(value):  # NaN, or a missing value of a nullable integer column
        return "–"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return text + unit


def _thumb(t: Thumb, alt: str) -> str:
    if t.uri is None:
        return f'<div class="thumb missing">{escape(t.problem or "no image")}</div>'
    return f'<div class="thumb"><img src="{t.uri}" alt="{escape(alt)}" loading="eager"></div>'


def _cards(fig: dict) -> str:
    rows, lat, run = fig["rows"], fig["latency"], fig["run"]
    cards = [
        ("rows", _n(rows["total"]), ""),
        ("ok", _n(rows["ok"]), ""),
        ("failed", _n(rows["error"]), "bad" if rows["error"] else ""),
    ]
    for op, counts in rows["by_op"].items():
        cards.append((op, _n(sum(counts.values())), ""))
    cards += [
        ("latency p50", _n(lat["p50_ms"], " ms"), ""),
        ("latency p99", _n(lat["p99_ms"], " ms"), ""),
        ("throughput", _n(lat["rows_per_s"], " rows/s", 2), ""),
        ("time running", _n(run["duration_s"], " s"), ""),
        ("legs", _n(len(run["legs"])), ""),
        ("workers", _n(len(fig["workers"])), ""),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card {cls}"><b>{escape(value)}</b><span>{escape(name)}</span></div>'
        for name, value, cls in cards
    ) + "</div>"


def _header(fig: dict) -> str:
    run = fig["run"]
    facts = [
        ("Folder" if len(run["folders"]) == 1 else "Folders", run["folder"]), ("Command", run["command"]),
        ("Manifest", run["manifest"]),
        ("Started", when(run["started_at"])),
        ("Finished" if run["complete"] else "Last row", when(run["finished_at"])),
    ]
    facts += [("Workers", run["workers"]), ("Versions", run["versions"])]
    out = ["<h1>imagebatch run report</h1><table>"]
    out += [f"<tr><th>{k}</th><td><code>{escape(str(v))}</code></td></tr>" for k, v in facts if v]
    out.append("</table>")
    for note in incomplete_notes(fig):
        head, _, rest = note.partition(":")
        out.append(f'<div class="banner"><b>{escape(head.capitalize())}.</b>{escape(rest)}</div>')
    out += [f'<div class="warn">{escape(w)}</div>' for w in fig["warnings"]]
    return "".join(out)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table whose cells are already-escaped HTML."""
    cls = lambda i: ' class="n"' if i in numeric else ""  # noqa: E731
    out = ["<table><tr>" + "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(head)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def _legs(fig: dict) -> str:
    """Every leg of every folder, and which shards are missing: a run, each resume, each shard."""
    shards = fig["shards"]
    about = {f["folder"]: f for f in shards["folders"]} if shards else {}
    rows = []
    for leg in fig["run"]["legs"]:
        shard = about.get(leg["folder"], {})
        state = leg["state"] + (f" ({leg['signal']})" if leg["signal"] else "")
        if leg["stopped"]:
            state += f": {leg['stopped']}"
        started = when(leg["started_at"]) or "–"
        rows.append([
            f"<code>{escape(leg['folder'])}</code>",
            escape(f"{shard['index']}/{shard['count']}" if shard.get("index") is not None else "–"),
            escape(started if leg["recorded"] else f"{started} (first row; not recorded yet)"),
            _n(leg["duration_s"], " s"), _n(leg["rows_run"]), _n(leg["skipped"]), escape(state),
            f"<code>{escape(leg['workers'] or '–')}</code>",
        ])
    capped = f" Showing the first {LEGS_CAP:,} of {len(rows):,}." if len(rows) > LEGS_CAP else ""
    out = ["<h2>Legs</h2><p class=note>Each <code>batch run</code> into a folder: the first run, each resume, "
           f"each shard. The totals above are over all of them.{capped}</p>",
           _table(["folder", "shard", "started", "time", "rows run", "skipped", "state", "workers"],
                  rows[:LEGS_CAP], {3, 4, 5})]
    if shards:
        # Those that need a look first: missing, then unfinished, then the rest.
        done = [[escape(str(i)), "<b>missing</b>", "–", "–", "–", "<b>no</b>"] for i in shards["missing"]]
        done += [
            [escape(str(f["index"]) if f["index"] is not None else "–"), f"<code>{escape(f['folder'])}</code>",
             _n(f["rows"]), _n(f["shard_rows"]), escape(f["state"]), "yes" if f["complete"] else "<b>no</b>"]
            for f in sorted(shards["folders"], key=lambda f: f["complete"])
        ]
        count = f" of {shards['count']}" if shards["count"] else ""
        capped = (f"<p class=note>Showing {LEGS_CAP:,} of {len(done):,}: missing and unfinished ones first.</p>"
                  if len(done) > LEGS_CAP else "")
        out.append(f"<h3>Shards{escape(count)}</h3>{capped}"
                   + _table(["shard", "folder", "rows", "shard rows", "state", "complete"], done[:LEGS_CAP], {2, 3}))
    return "".join(out)


def _labels(fig: dict) -> str:
    rows = [
        [escape(x["label"]), _n(x["count"]), _n(x["mean_confidence"], digits=3)] for x in fig["labels"]
    ]
    return (
        "<h2>Labels</h2><div class=cols><div>" + charts.label_bars(fig["labels"]) + "</div>"
        + _table(["label", "rows", "mean confidence"], rows, {1, 2}) + "</div>"
    )


def _latency(fig: dict) -> str:
    lat = fig["latency"]
    rows = [[escape(k), _n(lat[f"{k}_ms"], " ms")] for k in ("p50", "p90", "p99", "max", "mean")]
    rows.append(["throughput", _n(lat["rows_per_s"], " rows/s", 2)])
    workers = [
        [f"<code>{escape(w['worker'])}</code>", _n(w["rows"]), _n(w["ok"]), _n(w["calls"])] for w in fig["workers"]
    ]
    return (
        f"<h2>Latency</h2><p class=muted>{lat['count']:,} rows made a call.</p><div class=cols><div>"
        + charts.latency_histogram(fig["latency_histogram"]) + "</div>"
        + _table(["", "latency"], rows, {1}) + "</div>"
        + "<h3>Calls per worker</h3>"
        + (_table(["worker", "rows", "ok", "calls"], workers, {1, 2, 3}) if workers else "<p>None recorded.</p>")
    )


def _rotated(g: Galleries) -> str:
    out = ["<h2>Rotated images</h2>"]
    if not g.rotated_total:
        return out[0] + "<p>No successful rotate rows.</p>"
    out.append(
        f"<p class=note>Before and after for the first {len(g.rotated):,} of {g.rotated_total:,} "
        f"successful rotate rows (the gallery is capped at {g.caps['rotated']}). Left, the input as stored: its "
        "pixels before any EXIF orientation, which a viewer would apply. Right, the output.</p><div class=gallery>"
    )
    for item in g.rotated:
        facts = [f"id {item['id']}"]
        if item["rotation"]:
            decided = f" (by {item['decided_by']})" if item["decided_by"] else ""
            facts.append(f"rotation {item['rotation']}{decided}")
        if not pd.isna(item["turned"]):  # the worker said
            facts.append(f"turned {item['turned']:g}°")
        if item["before"].orientation != 1:
            facts.append(f"stored with EXIF orientation {item['before'].orientation}")
        out.append(
            '<figure class="pair"><div class="imgs">'
            + _thumb(item["before"], "before, as stored: " + item["path"])
            + _thumb(item["after"], "after: " + item["output"])
            + f"</div><figcaption>{escape(' · '.join(facts))}<br>"
            f"<code>{escape(item['path'])}</code></figcaption></figure>"
        )
    return "".join(out) + "</div>"


def _classified(g: Galleries) -> str:
    out = ["<h2>Classified images</h2>"]
    if not g.classified_total:
        return out[0] + "<p>No successful classify rows.</p>"
    out.append(
        f"<p class=note>Grouped by label, most common first: up to {g.caps['per_label']} images for each of "
        f"the {min(g.caps['labels'], g.caps['labels_total'])} most common of {g.caps['labels_total']} labels "
        f"({g.classified_total:,} successful classify rows in all). Face boxes are drawn in red.</p>"
    )
    for group in g.by_label:
        out.append(f"<h3>{escape(group['label'])} <span class=muted>({group['count']:,})</span></h3>"
                   "<div class=gallery>")
        for item in group["items"]:
            conf = "" if item["confidence"] != item["confidence"] else f"confidence {item['confidence']:.2f}"
            faces = "; ".join(
                f"{f['label']} {f['score']:.2f}" if isinstance(f["score"], (int, float)) else f["label"]
                for f in item["faces"]
            )
            out.append(
                "<figure>" + _thumb(item["thumb"], item["path"])
                + f"<figcaption>id {escape(item['id'])} · {escape(conf)}<br>"
                + (f"faces: {escape(faces)}<br>" if faces else "")
                + f"<code>{escape(item['path'])}</code></figcaption></figure>"
            )
        out.append("</div>")
    return "".join(out)


def _failed(fig: dict, g: Galleries) -> str:
    out = ["<h2>Failed rows</h2>"]
    if not g.failed_total:
        return out[0] + "<p>None: every row is ok.</p>"
    common = [
        [_n(e["count"]), f'<code>{escape(e["reason"] or NO_REASON)}</code>',
         f'<span class="err">{escape(e["sample"]["error"])}</span><br>'
         f"id {escape(e['sample']['id'])}: <code>{escape(e['sample']['path'])}</code>"]
        for e in fig["errors"]
    ]
    out.append("<h3>Failures by reason</h3>" + _table(["rows", "reason", "a sample"], common, {0}))
    note = f"the first {len(g.failed):,} of " if len(g.failed) < g.failed_total else ""
    out.append(f"<h3>All failed rows</h3><p class=note>Showing {note}{g.failed_total:,} failed rows"
               + (f" (capped at {g.caps['failed']})" if note else "") + ".</p>")
    rows = [
        [escape(r["id"]), escape(r["op"]), f"<code>{escape(r['path'])}</code>",
         f'<span class="err">{escape(r["error"])}</span>', _n(r["attempts"], digits=0)]
        for r in g.failed
    ]
    out.append(_table(["id", "op", "path", "error", "attempts"], rows, {4}))
    return "".join(out)


def _slowest(fig: dict) -> str:
    rows = [
        [escape(r["id"]), escape(r["op"]), escape(r["status"]), _n(r["latency_ms"], " ms"),
         f"<code>{escape(r['worker'])}</code>", f"<code>{escape(r['path'])}</code>"]
        for r in fig["slowest"]
    ]
    return "<h2>Slowest rows</h2>" + (
        _table(["id", "op", "status", "latency", "worker", "path"], rows, {3}) if rows else "<p>None.</p>"
    )


def render(fig: dict, galleries: Galleries) -> str:
    """The whole page as a string."""
    title = f"imagebatch report: {fig['run']['folder']}"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + _header(fig) + _cards(fig) + _legs(fig) + _labels(fig) + _latency(fig)
        + _rotated(galleries) + _classified(galleries) + _failed(fig, galleries) + _slowest(fig)
        + "</body></html>\n"
    )
