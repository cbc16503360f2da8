"""The results table's one owner (batch/results.py): result rows, "already done", the reader's one policy,
the tally, and the index's single scan. Pure logic on real files: seconds, no processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from batch.manifest import read_rows
from batch.progress import Progress, Tally
from batch.results import (
    COLUMNS,
    ERROR,
    ERROR_MAX,
    OK,
    Journal,
    Outcome,
    Reason,
    ResultsError,
    TableReader,
    already_done,
    result_row,
    write_table,
)
from tests.support.manifests import indexed


def manifest_rows(tmp_path: Path, text: str) -> list:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text, encoding="utf-8")
    return list(read_rows(manifest, tmp_path / "out"))


def ok_row(id_: str, **values: str) -> dict[str, str]:
    row = dict.fromkeys(COLUMNS, "")
    row.update({"id": id_, "path": f"{id_}.jpg", "op": "classify", "status": OK, "attempts": "1", **values})
    return row


def write_csv(path: Path, rows: list[dict[str, str]], tail: str = "") -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        f.write(tail)


def test_result_row_has_every_column_as_text(tmp_path: Path) -> None:
    (row,) = manifest_rows(tmp_path, "path,op\na.jpg,classify\n")
    result = result_row(row, Outcome(OK, label="unknown", confidence=0.5, width=3, height=2, attempts=1,
                                     faces=[{"box": [0, 0, 1, 1], "label": "unknown", "score": 0.5}]))
    assert tuple(result) == COLUMNS
    assert all(isinstance(v, str) for v in result.values())
    assert result["confidence"] == "0.5000" and result["width"] == "3" and result["rotation"] == ""
    assert json.loads(result["faces"])[0]["box"] == [0, 0, 1, 1]


def test_a_huge_cell_is_quoted_short_and_every_error_is_bounded(tmp_path: Path) -> None:
    (row,) = manifest_rows(tmp_path, f"path,op,rotation\na.jpg,rotate,{'9' * 40_000}\n")
    assert row.error == f"rotation {'9' * 40}… (40,000 characters) is out of range"
    result = result_row(row, Outcome(ERROR, error="x" * 40_000))
    assert len(result["error"]) == ERROR_MAX and result["error"].endswith("…")


def test_an_earlier_result_is_kept_as_it_is(tmp_path: Path) -> None:
    (row,) = manifest_rows(tmp_path, "path,op\na.jpg,classify\n")
    earlier = ok_row(row.id, path=row.path, finished_at="2026-01-01T00:00:00.000+00:00")
    outcome = Outcome.done_before(earlier)
    assert outcome.skipped and result_row(row, outcome) == earlier


def test_already_done_needs_the_same_row_and_its_output(tmp_path: Path) -> None:
    rotate, classify = manifest_rows(tmp_path, "path,op,rotation\na.jpg,rotate,90\nb.jpg,classify,\n")
    done = ok_row(rotate.id, path="a.jpg", op="rotate", rotation="90", output=str(rotate.output_path))
    assert not already_done(rotate, done)  # the output is gone
    rotate.output_path.parent.mkdir(parents=True)
    rotate.output_path.write_bytes(b"x")
    assert already_done(rotate, done)
    assert not already_done(rotate, dict(done, rotation="180"))
    assert not already_done(rotate, dict(done, status=ERROR))
    assert already_done(classify, ok_row(classify.id, path="b.jpg"))
    assert not already_done(classify, ok_row(classify.id, path="other.jpg"))
    assert not already_done(classify, None)


def test_reader_drops_damaged_lines_and_names_them(tmp_path: Path) -> None:
    rows = [ok_row(str(i)) for i in range(1, 7)]
    rows[1]["status"] = "garbled"
    write_csv(tmp_path / "results.csv", rows, tail=",".join(["7", "a.jpg", "classify", "", "ok"] * 5) + "\n")
    reader = TableReader(tmp_path)
    ids = [values[0] for values in reader.rows()]
    assert ids == ["1", "3", "4", "5", "6"]
    assert any("status is neither ok nor error): line 3" in n for n in reader.notes), reader.notes
    assert any("wrong number of fields): line 8" in n for n in reader.notes), reader.notes


def test_reader_ignores_a_torn_last_line_only(tmp_path: Path) -> None:
    write_csv(tmp_path / "results.csv", [ok_row("1"), ok_row("2")], tail="3,c.jpg,classify,,ok")
    reader = TableReader(tmp_path)
    assert [v[0] for v in reader.rows()] == ["1", "2"]
    assert any("unfinished last line (line 4)" in n for n in reader.notes)


def test_reader_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(path, [ok_row("1"), ok_row("2"), ok_row("3")])
    data = path.read_bytes().replace(b"2.jpg", b"\xff\xfe.jpg")
    path.write_bytes(data)
    reader = TableReader(tmp_path)
    assert [v[0] for v in reader.rows()] == ["1", "3"]
    assert any("not UTF-8 text): line 3" in n for n in reader.notes)


def test_reader_refuses_a_table_without_a_required_column(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("id,path,op\n1,a.jpg,classify\n", encoding="utf-8")
    with pytest.raises(ResultsError, match="results.csv has no column 'status'"):
        list(TableReader(tmp_path).rows())


def test_reader_reads_an_older_table_missing_a_column_as_empty(tmp_path: Path) -> None:
    columns = [c for c in COLUMNS if c != "worker"]
    with open(tmp_path / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(ok_row("1", worker="gone"))
    reader = TableReader(tmp_path)
    (values,) = list(reader.rows())
    assert values[COLUMNS.index("worker")] == "" and reader.missing == ["worker"]


def test_files_are_read_oldest_first_so_the_newest_row_wins(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet results need the parquet extra")
    write_table(iter([ok_row("1", label="old")]), tmp_path / "results.parquet")
    journal = Journal(tmp_path / "results.journal.csv")
    journal.append_many([ok_row("1", label="new")])
    journal.close()
    rows = list(TableReader(tmp_path).rows())
    assert [v[COLUMNS.index("label")] for v in rows] == ["old", "new"]


def test_parquet_and_csv_read_back_as_the_same_text(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet results need the parquet extra")
    row = ok_row("1", width="3", height="2", confidence="0.5000", latency_ms="1.5",
                 finished_at="2026-01-01T00:00:00.123+00:00")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_table(iter([row]), tmp_path / "a" / "results.csv")
    write_table(iter([row]), tmp_path / "b" / "results.parquet")
    from_csv = list(TableReader(tmp_path / "a").rows())
    from_parquet = list(TableReader(tmp_path / "b").rows())
    assert from_csv[0][COLUMNS.index("finished_at")] == from_parquet[0][COLUMNS.index("finished_at")]
    assert from_csv[0][COLUMNS.index("width")] == from_parquet[0][COLUMNS.index("width")] == "3"


def test_journal_starts_a_fresh_line_after_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(path, [ok_row("1")], tail="2,b.jpg,classify,,o")
    journal = Journal(path)
    journal.append_many([ok_row("3")])
    journal.close()
    assert [v[0] for v in TableReader(tmp_path).rows()] == ["1", "3"]


def test_tally_is_what_progress_and_summary_show() -> None:
    tally = Tally(rows=4)
    tally.add(Outcome(OK, worker="w/1", model="m 1"))
    tally.add(Outcome(ERROR, error="x", reason=Reason.INPUT_NOT_FOUND))
    tally.add(Outcome.done_before(ok_row("9")))
    assert (tally.ok, tally.failed, tally.skipped, tally.worked, tally.not_run) == (2, 1, 1, 2, 1)
    assert tally.workers == {"w/1": 1} and tally.models == {"m 1"}
    line = Progress(tally, "quiet").line()
    assert "3/4 rows" in line and "2 ok (1 already done), 1 failed" in line
    assert tally.failures() == "1 INPUT_NOT_FOUND"


def test_the_summary_names_the_commonest_reasons_rows_failed() -> None:
    tally = Tally(rows=9)
    for reason, n in [(Reason.INPUT_NOT_FOUND, 1), (Reason.OUTPUT_UNWRITABLE, 4), ("NOT_AN_IMAGE", 2),
                      (Reason.TIMED_OUT, 1), (Reason.INVALID_ROW, 1)]:
        for _ in range(n):
            tally.add(Outcome(ERROR, error="x", reason=reason))
    assert tally.failures() == "4 OUTPUT_UNWRITABLE, 2 NOT_AN_IMAGE, 1 INPUT_NOT_FOUND and 2 more reasons"


def test_one_scan_settles_invalid_conflicting_and_done_rows(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,path,op,rotation,output\n"
                        "bad,a.jpg,rotate,45,\n"
                        "clash,b.jpg,rotate,90,a.jpg\n"
                        "done,c.jpg,classify,,\n"
                        "todo,d.jpg,classify,,\n", encoding="utf-8")
    with indexed(manifest, tmp_path) as index:
        index.add_previous([tuple(ok_row("done", path="c.jpg").values())])
        settled = {s.row.id: s.outcome for s in index.scan()}
    assert settled["bad"].status == ERROR and "multiple of 90" in settled["bad"].error
    assert settled["clash"].status == ERROR and "refusing to overwrite an input" in settled["clash"].error
    assert settled["done"].skipped
    assert settled["todo"] is None


def test_spreadsheet_export_marks_formulas_as_text_and_keeps_results_exact(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batch.cli import main

    evil = ["=1+2", "@SUM(A1)", "+cmd", "-2+3", "\tx", "plain"]
    rows = [ok_row(e, path=f"=HYPERLINK(\"http://x\",\"{i}\")") for i, e in enumerate(evil)]
    rows.append(ok_row("negative", op="rotate", rotation="-90", output="r.jpg"))
    write_csv(tmp_path / "results.csv", rows)
    exact = (tmp_path / "results.csv").read_bytes()
    sheet = tmp_path / "sheet.csv"
    done = CliRunner().invoke(main, ["report", str(tmp_path), "--spreadsheet", str(sheet)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "results.csv").read_bytes() == exact
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    got = {r["id"]: r for r in csv.DictReader(raw.decode("utf-8-sig").splitlines())}
    assert set(got) == {"'=1+2", "'@SUM(A1)", "'+cmd", "'-2+3", "'\tx", "plain", "negative"}
    assert all(r["path"].startswith("'=HYPERLINK") for i, r in got.items() if i != "negative")
    assert got["negative"]["rotation"] == "-90"
