"""A results folder's legs (the first run, each resume, a rerun with nothing to do) in run.json and in
`batch report`: every leg kept, totals over all of them, the "before" of a rotation drawn as stored."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from batch.cli import main
from batch.results import read_run_info, run_legs, write_run_info
from tests.support import browser
from tests.support.images import photo
from tests.support.inprocess import run_cli
from tests.support.manifests import make_batch, write_manifest
from tests.support.processes import run_batch, start_batch, wait_for
from tests.support.reports import check_terminal_width, check_visit
from tests.support.results import results, synthetic_run


def report(*args: str | Path) -> str:
    result = CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def leg_of(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "legs"}


# --- run.json's writer: fast ----------------------------------------------------------------------


def test_the_writer_adds_a_leg_and_keeps_an_old_single_leg_run_json(tmp_path: Path) -> None:
    old = {"command": ["batch", "run", "m.csv"], "started_at": "2024-05-01T10:00:00+00:00",
           "counts": {"rows": 3, "ok": 3, "failed": 0, "skipped_already_done": 0}}
    (tmp_path / "run.json").write_text(json.dumps(old), encoding="utf-8")  # as batch run wrote it before legs
    new = {"command": ["batch", "run", "m.csv"], "started_at": "2024-05-02T10:00:00+00:00",
           "counts": {"rows": 3, "ok": 3, "failed": 0, "skipped_already_done": 3}}
    write_run_info(tmp_path, new)
    info, notes = read_run_info(tmp_path)
    assert notes == []
    assert run_legs(info) == [old, new]
    assert leg_of(info) == new  # the top level is the newest leg, as scripts reading `counts` expect
    write_run_info(tmp_path, new)
    assert len(run_legs(read_run_info(tmp_path)[0])) == 3


def test_a_damaged_run_json_gives_way_to_the_new_leg(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json", encoding="utf-8")
    write_run_info(tmp_path, {"started_at": "2024-05-02T10:00:00+00:00"})
    assert run_legs(read_run_info(tmp_path)[0]) == [{"started_at": "2024-05-02T10:00:00+00:00"}]
    assert not [p for p in tmp_path.iterdir() if p.name != "run.json"]  # no temporary left behind


def test_an_old_single_leg_run_json_still_reports(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 50)  # run.json in the shape batch run wrote before legs
    fig = json.loads(report(out, "--json"))
    assert len(fig["run"]["legs"]) == 1
    assert fig["run"]["legs"][0]["rows_run"] == 50
    assert fig["run"]["duration_s"] == pytest.approx(50.0)  # 09:59:59 to the last row at 10:00:49
    assert fig["latency"]["rows_per_s"] == pytest.approx(1.0)
    assert "Legs" not in report(out)  # one leg: the header says it all


def test_a_stopped_last_leg_says_why_and_is_not_complete(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 20)
    info, _ = read_run_info(out)
    why = "no worker answered for 16 rows in a row (UNAVAILABLE: connection refused)"
    write_run_info(out, {**info, "started_at": "2024-05-01T11:00:00+00:00", "finished_at": "2024-05-01T11:00:30+00:00",
                         "counts": {"rows": 20, "ok": 10, "failed": 0, "skipped_already_done": 10, "not_run": 10},
                         "stopped": why})
    fig = json.loads(report(out, "--json"))
    assert [leg["state"] for leg in fig["run"]["legs"]] == ["finished", "stopped"]
    assert fig["run"]["state"] == "stopped" and fig["run"]["complete"] is False
    assert fig["run"]["legs"][1]["rows_run"] == 0 and fig["run"]["legs"][1]["not_run"] == 10
    text = " ".join(report(out).split())
    assert f"STOPPED: {why}; the report shows the 20 of 20 rows finished" in text
    assert f"stopped: {why}" in (out / "report.html").read_text(encoding="utf-8")


# --- real runs: slow -------------------------------------------------------------------------------


def test_a_rerun_with_nothing_to_do_keeps_what_the_first_run_recorded(tmp_path: Path, live,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    n = 30
    manifest = make_batch(tmp_path, n, classify_every=10)
    out = tmp_path / "out"
    args = ("run", manifest, "--out", out, "--worker", live.address)
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    leg1 = json.loads((out / "run.json").read_text())
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert f"({n:,} already done)" in stdout
    info = json.loads((out / "run.json").read_text())
    assert [leg_of(leg) for leg in info["legs"]] == [leg_of(leg1), leg_of(info)]
    assert info["counts"]["skipped_already_done"] == n  # the top level: the newest leg, as before

    fig = json.loads(report(out, "--json"))
    run = fig["run"]
    assert [leg["rows_run"] for leg in run["legs"]] == [n, 0]
    assert [leg["skipped"] for leg in run["legs"]] == [0, n]
    assert [leg["state"] for leg in run["legs"]] == ["finished", "finished"]
    assert run["rows_run"] == n and run["complete"] is True
    # Two legs one after the other: the time running is the sum of their times.
    elapsed = [leg["elapsed_s"] for leg in info["legs"]]
    assert run["duration_s"] == pytest.approx(sum(elapsed), abs=0.002)
    assert fig["latency"]["rows_per_s"] == pytest.approx(n / sum(elapsed), abs=0.011)  # rounded to 0.01
    # The second leg called no worker and used no face model: the first leg's are still named.
    assert leg1["workers"]["targets"] and all(t in run["workers"] for t in leg1["workers"]["targets"])
    model = leg1["versions"]["face_models"]
    assert model and all(m in run["versions"] for m in model)
    assert leg1["started_at"][:19] == run["started_at"][:19]

    monkeypatch.chdir(tmp_path)  # as a user types it, so that the paths printed are short
    text = report("out")
    check_terminal_width(text)
    assert f"throughput {fig['latency']['rows_per_s']:,.2f} rows/s ({n} rows run in" in text
    assert "2 legs)" in text and "Legs (each `batch run` into a folder)" in text
    # No throughput of nothing (a bare "0.00 rows/s", not the end of "400.00 rows/s"), no blank model line.
    assert not re.search(r"(?<![\d,.])0\.00 rows/s", text) and "face_models -" not in text

    # --restart drops the rows, and with them the legs that ran them.
    code, _, stderr = run_cli(*args, "--restart")
    assert code == 0, stderr
    assert len(json.loads((out / "run.json").read_text())["legs"]) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_interrupted_then_resumed_run_reports_both_legs(tmp_path: Path, worker) -> None:
    n = 3000  # the driver does over 2,000 tiny rows/s (docs/benchmarks.md) and journals in groups every ~0.1 s
    manifest = make_batch(tmp_path, n)
    out = tmp_path / "out"
    args = (manifest, "--out", out, "--worker", worker.address)
    proc = start_batch(*args, log=tmp_path / "driver.log")
    journal = out / "results.csv"
    assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 80, timeout=60, interval=0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, (tmp_path / "driver.log").read_text()
    partial = len(results(out))
    assert 0 < partial < n
    again = run_batch(*args)
    assert again.returncode == 0, again.stderr

    info = json.loads((out / "run.json").read_text())
    fig = json.loads(report(out, "--json"))
    run = fig["run"]
    assert [(leg["state"], leg["signal"]) for leg in run["legs"]] == [("interrupted", "SIGINT"), ("finished", None)]
    assert [leg["rows_run"] for leg in run["legs"]] == [partial, n - partial]  # each row run once
    assert run["legs"][1]["skipped"] == partial
    assert run["rows_run"] == n and fig["rows"]["total"] == n and run["complete"] is True
    assert run["duration_s"] == pytest.approx(sum(leg["elapsed_s"] for leg in info["legs"]), abs=0.002)
    assert run["started_at"][:19] == info["legs"][0]["started_at"][:19]
    assert run["finished_at"][:19] == info["legs"][1]["finished_at"][:19]
    text = " ".join(report(out).split())
    assert "INTERRUPTED" not in text  # the folder's run is finished now
    assert "interrupted (SIGINT)" in text

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "interrupted (SIGINT)" in page and "<h2>Legs</h2>" in page
    if browser.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); CI installs it")
    png = tmp_path / "report.png"
    visit = browser.screenshot(out / "report.html", png)
    check_visit(visit, out / "report.html", png)


def _data_images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(uri))) for uri in
            re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_before_of_an_exif_rotated_input_is_drawn_as_stored(tmp_path: Path, worker) -> None:
    # Stored landscape (320x240) with EXIF orientation 6: a viewer shows it portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "img").mkdir()
    photo(320, 240, seed=3).save(tmp_path / "img" / "sideways.jpg", "JPEG", quality=90, exif=exif)
    manifest = write_manifest(tmp_path / "manifest.csv", [
        {"id": "a", "path": "img/sideways.jpg", "op": "rotate", "rotation": "auto"},
        {"id": "b", "path": "img/sideways.jpg", "op": "rotate", "rotation": "0"},
    ], ("id", "path", "op", "rotation"))
    out = tmp_path / "out"
    done = run_batch(manifest, "--out", out, "--worker", worker.address)
    assert done.returncode == 0, done.stderr
    table = {r["id"]: r for r in results(out)}
    report(out)
    page = (out / "report.html").read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 2 and not [c for c in captions if "nan" in c.lower()]  # no NaN rotation
    assert "rotation auto (by exif)" in page and "stored with EXIF orientation 6" in page
    assert f"turned {int(table['a']['turned'])}°" in page
    sizes = [img.size for img in _data_images(page)]
    # Per pair: the input as stored (landscape), then the output (upright: portrait, by its pixels or EXIF).
    outputs = [Image.open(r["output"]) for r in (table["a"], table["b"])]
    upright = [ImageOps.exif_transpose(o).size for o in outputs]
    assert upright == [(240, 320), (240, 320)]
    assert sizes == [(160, 120), (120, 160), (160, 120), (120, 160)]
    if browser.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); CI installs it")
    png = tmp_path / "report.png"
    visit = browser.screenshot(out / "report.html", png)
    check_visit(visit, out / "report.html", png)
    # What the reader sees: Chromium applies EXIF orientation to <img> by default, so the before thumbnail must
    # carry none for the stored pixels to show.
    assert [(i["width"], i["height"]) for i in visit.images] == sizes
