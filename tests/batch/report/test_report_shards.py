"""`batch report DIR...` over the shards of one manifest: one run's figures, the shards missing or unfinished,
the merged table in the manifest's order, and the library's entry points (batch.report.api)."""

from __future__ import annotations

import csv
import json
import subprocess
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.report import api
from batch.results import read_run_info, run_legs, write_run_info
from tests.support import browser
from tests.support.manifests import make_entangled
from tests.support.processes import BATCH, batch_env, run_batch, start_batch
from tests.support.reports import check_figures, check_terminal_width, check_visit
from tests.support.results import results, synthetic_rows, write_results

# Columns that say when, where and how fast, not what: they differ between any two runs.
VOLATILE = ("attempts", "latency_ms", "worker", "finished_at")


def report(*args: str | Path) -> str:
    result = CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def comparable(rows: list[dict[str, str]], *outs: Path) -> list[dict[str, str]]:
    """The rows with every --out spelled <OUT> (outputs and errors name it), the volatile columns left out."""
    def plain(text: str) -> str:
        for out in outs:
            text = text.replace(str(out), "<OUT>")
        return text

    return [{k: plain(v) for k, v in r.items() if k not in VOLATILE} for r in rows]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def add_leg(out: Path, **changes: object) -> None:
    """A further leg in ``out``'s run.json, through batch run's own writer: its newest leg with ``changes``."""
    info, _ = read_run_info(out)
    write_run_info(out, {**run_legs(info)[-1], **changes})


# --- fast: folders written by the real writer ------------------------------------------------------


def _shard_folder(root: Path, name: str, index: int, count: int, digest: str, n: int = 12) -> Path:
    out = root / name
    rows = synthetic_rows(root, out, n)
    for r in rows:
        r["id"] = f"{name}-{r['id']}"
    write_results(out, rows)
    write_run_info(out, {"started_at": "2024-05-01T09:59:59+00:00", "finished_at": rows[-1]["finished_at"],
                         "counts": {"rows": n, "ok": n, "failed": 0, "skipped_already_done": 0, "not_run": 0},
                         "shard": {"index": index, "count": count}, "manifest_sha256": digest,
                         "manifest_rows": 4 * n, "shard_rows": n})
    return out


def test_folders_that_are_not_shards_of_one_manifest_say_so(tmp_path: Path) -> None:
    a = _shard_folder(tmp_path, "a", 0, 4, "1" * 64)
    b = _shard_folder(tmp_path, "b", 0, 4, "2" * 64)
    c = _shard_folder(tmp_path, "c", 1, 3, "1" * 64)
    fig = json.loads(report(a, b, c, "--json"))
    warnings = " ".join(fig["warnings"])
    assert "ran different manifests" in warnings
    assert "different splits (3 and 4 shards)" in warnings
    assert f"shard 0 is in more than one folder: {a}, {b}" in warnings
    assert fig["shards"]["count"] is None and fig["shards"]["missing"] == []
    assert fig["rows"]["total"] == 36  # every folder's rows, each id once


def test_a_shard_killed_before_its_first_leg_ended_is_unfinished_not_missing(tmp_path: Path) -> None:
    done = _shard_folder(tmp_path, "shard-0-of-2", 0, 2, "1" * 64)
    killed = tmp_path / "shard-1-of-2"  # its default --out; a journal, and no run.json yet
    write_results(killed, synthetic_rows(tmp_path, killed, 5))
    fig = json.loads(report(done, killed, "--json"))
    assert fig["shards"]["missing"] == []
    assert fig["shards"]["unfinished"] == [str(killed)]
    assert [(f["index"], f["state"]) for f in fig["shards"]["folders"]] == [(0, "finished"), (1, "running or killed")]
    assert fig["run"]["state"] == "running or killed" and fig["run"]["complete"] is False
    assert not [w for w in fig["warnings"] if "not a shard" in w]


def test_many_shards_stay_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    here = [k for k in range(16) if k not in (3, 4)]
    folders = [_shard_folder(Path("."), f"shard-{k}-of-16", k, 16, "1" * 64, n=3) for k in here]
    add_leg(folders[-1], interrupted=True, signal="SIGINT")  # shard 15
    text = report(*folders)
    check_terminal_width(text)
    flat = " ".join(text.split())
    assert "MISSING SHARDS: shard 3-4 of 16 is not among the folders" in flat
    assert "missing: shard 3-4 of 16" in flat
    assert "shard 15/16: shard-15-of-16" in flat  # the unfinished one is listed first
    assert f"… and {len(here) - 10} more folders, every one complete" in flat
    fig = json.loads(report(*folders, "--json"))
    assert fig["shards"]["missing"] == [3, 4] and fig["shards"]["unfinished"] == ["shard-15-of-16"]
    assert len(fig["run"]["legs"]) == len(here) + 1


def test_a_folder_given_twice_is_refused(tmp_path: Path) -> None:
    a = _shard_folder(tmp_path, "a", 0, 2, "1" * 64)
    result = CliRunner().invoke(main, ["report", str(a), str(tmp_path / "a" / ".")])
    assert result.exit_code == 2 and "is given twice" in result.output


def test_merge_names_a_table_file_and_never_a_folders_own(tmp_path: Path) -> None:
    a = _shard_folder(tmp_path, "a", 0, 2, "1" * 64)
    result = CliRunner().invoke(main, ["report", str(a), "--merge", str(tmp_path / "all.txt")])
    assert result.exit_code == 2 and "name a .csv or .parquet file" in result.output
    before = (a / "results.csv").read_bytes()
    result = CliRunner().invoke(main, ["report", str(a), "--merge", str(a / "results.csv")])
    assert result.exit_code == 2 and "is a results folder's own file" in result.output
    assert (a / "results.csv").read_bytes() == before


# --- slow: real `batch run --shard K/3` processes ----------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, worker) -> tuple[Path, Path, list[Path]]:
    """One manifest run whole and in three shards at once, all against the session's worker."""
    root = tmp_path_factory.mktemp("report-shards")
    manifest = make_entangled(root, 90)
    with open(manifest, "a", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [f"c{i}", f"img/{i:05d}.jpg", "classify", "", ""] for i in range(0, 90, 9))
    whole = root / "whole"
    done = run_batch(manifest, "--out", whole, "--worker", worker.address, "--quiet", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the manifest's bad rows fail
    outs = [root / "results" / f"shard-{k}-of-3" for k in range(3)]
    procs = [start_batch(manifest, "--shard", f"{k}/3", "--out", out, "--worker", worker.address, "--quiet",
                         log=root / f"s{k}.log") for k, out in enumerate(outs)]
    for k, proc in enumerate(procs):
        assert proc.wait(300) == 1, (root / f"s{k}.log").read_text()
    return manifest, whole, outs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_shards_report_as_the_one_run(shards: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    manifest, whole, outs = shards
    merged = tmp_path / "merged.csv"
    # The installed command in a subprocess, as a user types it.
    done = subprocess.run([*BATCH, "report", *map(str, outs), "--json", "--merge", str(merged)],
                          capture_output=True, text=True, timeout=120, env=batch_env())
    assert done.returncode == 0, done.stderr
    fig = json.loads(done.stdout)
    one = json.loads(report(whole, "--json"))

    # The same figures as the one run, and as the merged table says.
    check_figures(fig, merged)
    for key in ("rows", "labels"):
        assert fig[key] == one[key], key
    assert sum(e["count"] for e in fig["errors"]) == sum(e["count"] for e in one["errors"])
    assert sum(w["rows"] for w in fig["workers"]) == sum(w["rows"] for w in one["workers"])
    assert fig["latency"]["count"] == one["latency"]["count"]

    # Which shards: all three here, all finished; the run is the whole manifest's.
    info = [run_legs(read_run_info(out)[0])[-1] for out in outs]
    assert fig["shards"]["count"] == 3 and fig["shards"]["missing"] == [] and fig["shards"]["unfinished"] == []
    assert [f["index"] for f in fig["shards"]["folders"]] == [0, 1, 2]
    assert [f["rows"] for f in fig["shards"]["folders"]] == [leg["shard_rows"] for leg in info]
    assert fig["run"]["expected_rows"] == info[0]["manifest_rows"] == one["rows"]["total"]
    assert fig["run"]["complete"] is True and fig["run"]["rows_run"] == one["rows"]["total"]
    assert fig["shards"]["manifest_sha256"] == info[0]["manifest_sha256"]
    # Side by side: the time running is the span they covered together, not the sum of their times.
    spans = sorted((datetime.fromisoformat(leg["started_at"]).timestamp(), leg["elapsed_s"]) for leg in info)
    covered, reach = 0.0, spans[0][0]
    for start, elapsed in spans:
        end = start + elapsed
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    assert fig["run"]["duration_s"] == pytest.approx(covered, abs=0.005)

    # The merged table: the one run's rows, in the manifest's order.
    assert fig["merged"] == {"path": str(merged), "rows": one["rows"]["total"]}
    assert comparable(read_csv(merged), *outs) == comparable(results(whole), whole)
    as_parquet = tmp_path / "merged.parquet"
    report(*outs, "--merge", as_parquet)
    assert pd.read_parquet(as_parquet)["id"].tolist() == [r["id"] for r in results(whole)]

    # The library's entry points: the same figures, and the table in the manifest's order.
    assert api.report(*outs) == {k: v for k, v in fig.items() if k not in ("html", "merged")}
    assert api.read_results(*outs)["id"].tolist() == [r["id"] for r in results(whole)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_missing_and_unfinished_shards_are_named(shards: tuple[Path, Path, list[Path]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, whole, outs = shards
    partial = tmp_path / "results"
    partial.mkdir()
    for k in (0, 2):  # shard 1 never ran here; shard 2's last leg was interrupted
        subprocess.run(["cp", "-a", str(outs[k]), str(partial)], check=True)
    info, _ = read_run_info(partial / "shard-2-of-3")
    counts = info["counts"]  # a resume that was interrupted before it ran anything
    add_leg(partial / "shard-2-of-3", interrupted=True, signal="SIGTERM",
            counts={**counts, "skipped_already_done": counts["ok"]})
    monkeypatch.chdir(tmp_path)
    folders = ["results/shard-0-of-3", "results/shard-2-of-3"]
    fig = json.loads(report(*folders, "--json"))
    assert fig["shards"]["missing"] == [1]
    assert fig["shards"]["unfinished"] == ["results/shard-2-of-3"]
    assert fig["run"]["complete"] is False and fig["run"]["state"] == "interrupted"
    assert fig["html"] == "results/report.html"  # beside the shards' folders
    text = report(*folders)
    check_terminal_width(text)
    flat = " ".join(text.split())
    assert "MISSING SHARDS: shard 1 of 3 is not among the folders" in flat
    assert "UNFINISHED SHARDS: results/shard-2-of-3 (interrupted)" in flat
    assert "shard 2/3: results/shard-2-of-3" in flat and "missing: shard 1 of 3" in flat

    html = tmp_path / "results" / "report.html"
    page = html.read_text(encoding="utf-8")
    assert "Missing shards." in page and "<h3>Shards of 3</h3>" in page and "<b>missing</b>" in page
    if browser.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); CI installs it")
    png = tmp_path / "report.png"
    visit = browser.screenshot(html, png)
    check_visit(visit, html, png)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shards_in_an_object_store_report_as_one_run(tmp_path: Path, worker, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.s3 import s3_server

    manifest = make_entangled(tmp_path, 30)
    whole = tmp_path / "whole"
    assert run_batch(manifest, "--out", whole, "--worker", worker.address, "--quiet").returncode == 1
    with s3_server() as s3:
        s3.fs.mkdir("report-shards")  # moto's buckets are one per process: a name no other test uses
        outs = [f"s3://report-shards/job/shard-{k}-of-2" for k in range(2)]
        for k, out in enumerate(outs):  # exit 1 for a shard that has some of the manifest's bad rows
            done = run_batch(manifest, "--shard", f"{k}/2", "--out", out, "--worker", worker.address, "--quiet")
            assert done.returncode in (0, 1), done.stdout + done.stderr
        monkeypatch.chdir(tmp_path)
        fig = json.loads(report(*outs, "--json", "--merge", "merged.csv"))
        assert fig["run"]["folders"] == outs and fig["run"]["complete"] is True
        assert fig["shards"]["count"] == 2 and fig["shards"]["missing"] == [] and fig["shards"]["unfinished"] == []
        assert fig["rows"] == json.loads(report(whole, "--json"))["rows"]
        assert [r["id"] for r in read_csv(tmp_path / "merged.csv")] == [r["id"] for r in results(whole)]
        # The page is written here, never into the store; the outputs' thumbnails are read from their objects.
        assert fig["html"] == "report.html" and not s3.keys("s3://report-shards/job/report.html")
        page = (tmp_path / "report.html").read_text(encoding="utf-8")
        rotated = sum(r["op"] == "rotate" and r["status"] == "ok" for r in results(whole))
        assert page.count('class="pair"') == min(rotated, 24)
        assert "cannot read object" not in page and "cannot read file" not in page
        assert page.count("<img ") == 2 * min(rotated, 24)

        one = json.loads(report(outs[0], "--json"))
        assert one["shards"]["missing"] == [1] and one["run"]["complete"] is False
        result = CliRunner().invoke(main, ["report", "s3://report-shards/nothing-here"])
        assert result.exit_code == 2 and "no results table in s3://report-shards/nothing-here" in result.output
