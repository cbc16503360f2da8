"""The report as plain text for a terminal, never wider than 80 columns."""

from __future__ import annotations

import re
import textwrap

WIDTH = 80
FOLDERS_SHOWN = 10  # folders whose legs the terminal lists: a job of a thousand shards stays readable


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle (keeps a path's file name)."""
    # Newlines, tabs or escape codes in an error or a file name must not break the layout.
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail:]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _section(title: str) -> list[str]:
    return ["", title, "─" * min(len(title), WIDTH)]


def incomplete_notes(fig: dict) -> list[str]:
    """A sentence for each reason the report is not of a whole finished run, each beginning with a word in
    capitals and a colon."""
    run, shards = fig["run"], fig["shards"]
    of = f" of {run['expected_rows']:,}" if run["expected_rows"] is not None else ""
    done = f"{fig['rows']['total']:,}{of} rows"
    notes = []
    if shards and shards["missing"]:
        notes.append(f"MISSING SHARDS: shard {ranges(shards['missing'])} of {shards['count']} is not among the "
                     f"folders; the report covers the {done} of the others.")
    if shards and shards["unfinished"]:
        states = {f["folder"]: f["state"] for f in shards["folders"]}
        listed = "; ".join(f"{folder} ({states[folder]})" for folder in shards["unfinished"][:5])
        if len(shards["unfinished"]) > 5:
            listed += f" and {len(shards['unfinished']) - 5:,} more"
        notes.append(f"UNFINISHED SHARDS: {listed}; run the same command again for each.")
    if run["state"] == "interrupted":
        notes.append(f"INTERRUPTED: the report shows the {done} finished; run the same command again to finish.")
    elif run["state"] == "stopped":
        reasons = "; ".join(dict.fromkeys(leg["stopped"] for leg in run["legs"] if leg["stopped"]))
        notes.append(f"STOPPED: {reasons}; the report shows the {done} finished; run the same command again "
                     "once workers are up.")
    elif run["state"] != "finished":
        notes.append(f"INCOMPLETE: a run is still going or was killed (no current run.json); {done} finished "
                     "so far.")
    return notes


def when(iso: str | None) -> str | None:
    """An ISO timestamp as people read it: to the second, UTC spelled out."""
    if not iso:
        return None
    text = iso.replace("T", " ")
    if text.endswith("+00:00"):
        text = text[:-6].split(".")[0] + " UTC"
    return text


def _run_lines(fig: dict) -> list[str]:
    run = fig["run"]
    folders = run["folders"]
    if len(folders) == 1:
        lines = [shorten(f"Report on {run['folder']} ({run['table']})", WIDTH)]
    else:
        lines = [shorten(f"Report on {len(folders)} results folders ({run['table']}), each listed under Legs", WIDTH)]
    field = 11

    def add(name: str, value: object) -> None:
        if value not in (None, ""):
            # Wrapped, not cut: a command or a version list is worth reading whole.
            lines.extend(textwrap.wrap(
                shorten(str(value), 4 * WIDTH), WIDTH, initial_indent=f"{name:<{field}}",
                subsequent_indent=" " * field, break_on_hyphens=False,
            ))

    add("Command", run["command"])
    add("Manifest", run["manifest"])
    add("Started", when(run["started_at"]))
    ended = when(run["finished_at"])
    if run["duration_s"] is not None and ended:
        legs = len(run["legs"])
        ended += f" ({run['duration_s']:,.1f} s running" + (f", {legs} legs)" if legs > 1 else ")")
    add("Finished" if run["complete"] else "Last row", ended)
    add("Workers", run["workers"])
    add("Versions", run["versions"])
    for note in incomplete_notes(fig):
        lines += textwrap.wrap(note, WIDTH)
    return lines


def ranges(numbers: list[int]) -> str:
    """Sorted whole numbers as runs: [0, 1, 2, 5] -> "0-2, 5" (a thousand missing shards in one line)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _leg_lines(fig: dict) -> list[str]:
    """Every leg, grouped by folder when there are several: a run, each resume, each shard (at most
    FOLDERS_SHOWN folders, those not complete first)."""
    run, shards = fig["run"], fig["shards"]
    if len(run["legs"]) < 2 and not shards:
        return []
    lines = _section("Legs (each `batch run` into a folder)")
    lines.append(f"  {'started':<24}{'time':>10}{'rows run':>10}{'skipped':>9}  state")
    by_folder: dict[str, list[dict]] = {}
    for leg in run["legs"]:
        by_folder.setdefault(leg["folder"], []).append(leg)
    about = {f["folder"]: f for f in shards["folders"]} if shards else {}
    folders = list(by_folder)
    if len(folders) > FOLDERS_SHOWN:
        folders.sort(key=lambda f: about.get(f, {}).get("complete", by_folder[f][-1]["state"] == "finished"))
    for folder in folders[:FOLDERS_SHOWN]:
        if len(by_folder) > 1 or shards:
            shard = about.get(folder, {})
            head = (f"shard {shard['index']}/{shard['count']}: " if shard.get("index") is not None else "")
            rows = f"{shard['rows']:,}" + (f" of {shard['shard_rows']:,}" if shard.get("shard_rows") else "")
            lines.append(shorten(f"  {head}{folder} ({rows} rows)" if shard else f"  {folder}", WIDTH))
        for leg in by_folder[folder]:
            started = when(leg["started_at"]) or "-"
            if not leg["recorded"]:
                started = "(first row) " + started[11:] if leg["started_at"] else "-"
            took = "-" if leg["duration_s"] is None else f"{leg['duration_s']:,.1f} s"
            skipped = "-" if leg["skipped"] is None else f"{leg['skipped']:,}"
            state = leg["state"] + (f" ({leg['signal']})" if leg["signal"] else "")
            lines.append(shorten(f"  {started:<24}{took:>10}{leg['rows_run']:>10,}{skipped:>9}  {state}", WIDTH))
    if len(folders) > FOLDERS_SHOWN:
        lines.append(f"  … and {len(folders) - FOLDERS_SHOWN:,} more folders, every one complete"
                     if shards is None or len(shards["unfinished"]) <= FOLDERS_SHOWN else
                     f"  … and {len(folders) - FOLDERS_SHOWN:,} more folders (see --json or the HTML report)")
    if shards and shards["missing"]:
        lines += textwrap.wrap(f"missing: shard {ranges(shards['missing'])} of {shards['count']}", WIDTH,
                               initial_indent="  ", subsequent_indent="    ")
    return lines


def _rows_lines(fig: dict) -> list[str]:
    rows = fig["rows"]
    lines = _section("Rows by op and status")
    lines.append(f"  {'op':<20}{'ok':>10}{'error':>10}{'total':>10}")
    for op, counts in rows["by_op"].items():
        ok, err = counts.get("ok", 0), sum(v for k, v in counts.items() if k != "ok")
        lines.append(f"  {shorten(op, 20):<20}{ok:>10,}{err:>10,}{ok + err:>10,}")
    lines.append(f"  {'all':<20}{rows['ok']:>10,}{rows['error']:>10,}{rows['total']:>10,}")
    return lines


def _label_lines(fig: dict) -> list[str]:
    lines = _section("Labels (successful classify rows)")
    if not fig["labels"]:
        return lines + ["  none"]
    lines.append(f"  {'label':<50}{'count':>10}{'mean conf':>14}")
    for item in fig["labels"]:
        conf = "-" if item["mean_confidence"] is None else f"{item['mean_confidence']:.3f}"
        lines.append(f"  {shorten(item['label'], 48):<50}{item['count']:>10,}{conf:>14}")
    return lines


def _latency_lines(fig: dict) -> list[str]:
    lat = fig["latency"]
    lines = _section(f"Latency ({lat['count']:,} rows with a call)")
    lines.append(
        f"  p50 {_ms(lat['p50_ms'])}   p90 {_ms(lat['p90_ms'])}   "
        f"p99 {_ms(lat['p99_ms'])}   max {_ms(lat['max_ms'])}"
    )
    run = fig["run"]
    if lat["rows_per_s"] is not None:
        lines.append(f"  throughput {lat['rows_per_s']:,.2f} rows/s ({run['rows_run']:,} rows run "
                     f"in {run['duration_s']:,.1f} s)")
    return [shorten(line, WIDTH) for line in lines]


def _worker_lines(fig: dict) -> list[str]:
    lines = _section("Calls per worker")
    if not fig["workers"]:
        return lines + ["  none recorded"]
    lines.append(f"  {'worker':<48}{'rows':>10}{'ok':>10}{'calls':>10}")
    for w in fig["workers"]:
        lines.append(f"  {shorten(w['worker'], 46):<48}{w['rows']:>10,}{w['ok']:>10,}{w['calls']:>10,}")
    return lines


def _wrapped(text: str, indent: str, max_lines: int) -> list[str]:
    """``text`` wrapped at 80 columns under ``indent``, at most ``max_lines`` lines (the last one cut)."""
    clean = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    return textwrap.wrap(clean, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, max_lines=max_lines, placeholder=" …")


NO_REASON = "(no reason recorded: an older results table)"


def _error_lines(fig: dict) -> list[str]:
    lines = _section("Failures by reason")
    if not fig["errors"]:
        return lines + ["  none"]
    for err in fig["errors"]:
        sample = err["sample"]
        head = f"{err['count']:>7,} × "
        lines += [head + line.lstrip() if i == 0 else line
                  for i, line in enumerate(_wrapped(err["reason"] or NO_REASON, " " * len(head), 2))]
        lines.append(shorten(f"          e.g. id {sample['id']} ({sample['op']}): {sample['path']}", WIDTH))
        lines += _wrapped(sample["error"], " " * 10, 4)
    return lines


def _slow_lines(fig: dict) -> list[str]:
    lines = _section("Slowest rows")
    if not fig["slowest"]:
        return lines + ["  none"]
    lines.append(f"  {'id':<10}{'op':<10}{'status':<8}{'latency':>13}  path")
    for r in fig["slowest"]:
        head = f"  {shorten(r['id'], 9):<10}{shorten(r['op'], 9):<10}{shorten(r['status'], 7):<8}"
        head += f"{_ms(r['latency_ms']):>13}  "
        lines.append(head + shorten(r["path"], WIDTH - len(head)))
    return lines


def render(fig: dict) -> str:
    """The whole terminal report; every line is at most 80 columns."""
    lines = _run_lines(fig)
    for warning in fig["warnings"]:
        # Wrapped, not cut: a warning names the column or line that is the problem.
        clean = re.sub(r"[\x00-\x1f\x7f]+", " ", warning)
        lines += textwrap.wrap(f"warning: {clean}", WIDTH, subsequent_indent="  ", break_long_words=True)
    for part in (_leg_lines, _rows_lines, _label_lines, _latency_lines, _worker_lines, _error_lines, _slow_lines):
        lines += part(fig)
    return "\n".join(line.rstrip() for line in lines) + "\n"
