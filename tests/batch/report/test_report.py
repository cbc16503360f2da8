"""`batch report` on results folders: figures against the table, terminal width, JSON, tolerant reading."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.report import figures, terminal
from batch.report.table import load
from batch.results import COLUMNS
from tests.support.reports import check_figures, check_terminal_width
from tests.support.results import synthetic_rows, synthetic_run, write_results


def invoke(*args: str):
    return CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)


def test_figures_match_the_table(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 200)
    fig = figures.compute(load(out))
    check_figures(fig, out / "results.csv")
    assert fig["run"]["complete"] is True
    assert fig["run"]["duration_s"] == pytest.approx(200.0)  # 09:59:59 to 10:03:19
    assert fig["latency"]["rows_per_s"] == pytest.approx(1.0)
    # Failures group by reason, whatever their messages say, each with one of its rows as the sample.
    reasons = {e["reason"]: e["count"] for e in fig["errors"]}
    assert reasons == {"INPUT_NOT_FOUND": sum(1 for i in range(200) if i % 9 == 4),
                       "TIMED_OUT": sum(1 for i in range(200) if i % 9 == 7)}
    assert all(e["sample"]["error"] for e in fig["errors"])


def test_terminal_report_is_readable_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # as a user types it: `batch report out`; the HTML path is printed as given
    out = Path("out")
    rows = synthetic_rows(tmp_path, out, 30)
    long = "very/" * 40 + "long name with spaces.jpg"
    rows[4].update(path=long, error=f"file not found: {long}\nsecond line\tand a tab")
    rows.append(dict(rows[5], id="a-very-long-identifier-" * 5, worker="w" * 120, latency_ms="99999"))
    write_results(out, rows, run={"command": "batch run " + "x" * 200, "started_at": "2024-05-01T09:59:59+00:00"})
    result = invoke(out)
    assert result.exit_code == 0, result.output
    check_terminal_width(result.output)
    text = result.output
    for heading in ("Rows by op and status", "Labels", "Latency", "Calls per worker", "Failures by reason",
                    "Slowest rows"):
        assert heading in text
    assert "p50 " in text and "p99 " in text and "throughput" in text
    assert "long name with spaces.jpg" in text  # the middle of a long path goes, never its file name
    assert "INCOMPLETE" in text  # run.json has no end time
    assert "HTML report: out/report.html" in text


def test_json_is_one_object_with_the_same_figures(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 120)
    result = invoke(out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    check_figures(data, out / "results.csv")
    expected = figures.compute(load(out))
    assert {k: v for k, v in data.items() if k != "html"} == json.loads(json.dumps(expected))
    assert data["html"] == str(out / "report.html")
    assert (out / "report.html").is_file()


def test_html_option_writes_where_asked(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 20)
    target = tmp_path / "elsewhere.html"
    result = invoke(out, "--html", target)
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not (out / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_still_going_reports_complete_lines_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 40)
    half = "41,imgs/p1.jpg,rotate,90,ok,rotated/imgs/p1.jpg,80,13"  # the writer is mid-line
    write_results(out, rows, run={"started_at": "2024-05-01T09:59:59+00:00"}, tail=half)
    result = invoke(out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"]["total"] == 40
    assert data["run"]["complete"] is False
    assert any("unfinished last line" in w for w in data["warnings"])
    text = " ".join(invoke(out).output.split())  # the note is wrapped at 80 columns
    assert "INCOMPLETE" in text and "40 rows finished so far" in text


def test_resumed_journal_keeps_the_newest_row_per_id(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 10)
    failed = rows[4]
    assert failed["status"] == "error"
    retried = dict(failed, status="ok", error="", path="imgs/p0.jpg", output="rotated/imgs/p0.jpg",
                   latency_ms="12.0", worker="127.0.0.1:50/40")
    write_results(out, [*rows, retried], run={})
    data = json.loads(invoke(out, "--json").output)
    assert data["rows"]["total"] == 10
    assert data["rows"]["error"] == sum(r["status"] == "error" for r in rows) - 1
    assert any("retried later" in w for w in data["warnings"])


def test_older_table_without_a_column_says_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 20)
    write_results(out, rows, columns=tuple(c for c in COLUMNS if c != "worker"), run={})
    monkeypatch.chdir(tmp_path)
    result = invoke("out")
    assert result.exit_code == 0, result.output
    assert "no column 'worker'" in result.output
    check_terminal_width(result.output)
    assert json.loads(invoke(out, "--json").output)["missing_columns"] == ["worker"]


def test_table_without_a_required_column_is_refused_by_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 5)
    write_results(out, rows, columns=tuple(c for c in COLUMNS if c != "status"))
    result = invoke(out)
    assert result.exit_code == 2
    assert "results.csv has no column 'status'" in result.output


def test_folder_without_results_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke(tmp_path)
    assert result.exit_code == 2
    assert f"no results table in {tmp_path}" in result.output
    assert CliRunner().invoke(main, ["report", str(tmp_path / "nope")]).exit_code == 2


def test_parquet_table_gives_the_same_figures(tmp_path: Path) -> None:
    from batch.results import write_table

    out = synthetic_run(tmp_path, 60)
    from_csv = figures.compute(load(out))
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    write_table(rows, out / "results.parquet")  # batch run's own writer: typed columns, timestamps
    (out / "results.csv").unlink()
    (out / "run.json").write_bytes((out / "run.json").read_bytes())  # written last, as batch run does
    from_parquet = figures.compute(load(out))
    assert from_parquet["run"].pop("table") == "results.parquet"
    from_csv["run"].pop("table")
    assert from_parquet == from_csv


def test_parquet_run_in_progress_reads_the_newer_journal(tmp_path: Path) -> None:
    from batch.results import write_table

    out = synthetic_run(tmp_path, 30)
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    (out / "results.csv").unlink()
    write_table(rows[:20], out / "results.parquet")  # the first run, finished
    retried = [dict(r, status="ok", error="", latency_ms="5.0") for r in rows[10:30] if r["status"] == "error"]
    write_results(out, rows[20:] + retried)
    (out / "results.csv").rename(out / "results.journal.csv")  # a resumed run, still going
    data = figures.compute(load(out))
    assert data["rows"]["total"] == 30
    assert data["run"]["state"] == "running or killed"  # run.json is the first run's
    assert data["rows"]["error"] == sum(r["status"] == "error" for r in rows[:10])


def test_shorten_keeps_both_ends() -> None:
    assert terminal.shorten("abcdefghij", 5) == "ab…ij"
    assert terminal.shorten("line\nbreak", 80) == "line break"


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 10)
    write_results(out, rows, run={})
    with open(out / "results.csv", "a", encoding="utf-8") as f:
        f.write(",".join(["11", "imgs/p0.jpg", "rotate", "90", "ok"] + ["x"] * len(COLUMNS)) + "\n")  # too many
    data = json.loads(invoke(out, "--json").output)
    assert data["rows"]["total"] == 10
    assert ("results.csv: dropped 1 damaged line(s) (wrong number of fields): line 12; "
            "those rows run again on resume") in data["warnings"]


def test_html_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 5)
    result = invoke(out, "--html", tmp_path / "no" / "such" / "report.html")
    assert result.exit_code == 2
    assert f"cannot write the HTML report to {tmp_path / 'no' / 'such' / 'report.html'}" in result.output


def test_interrupted_run_says_so(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 30, complete=False)
    data = json.loads(invoke(out, "--json").output)
    assert data["run"]["state"] == "interrupted" and data["run"]["expected_rows"] == 30
    text = " ".join(invoke(out).output.split())
    assert "INTERRUPTED: the report shows the 30 of 30 rows finished; run the same command again" in text
