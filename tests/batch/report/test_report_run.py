"""`batch report` on a real `batch run` (embedded worker over loopback gRPC): figures, terminal, JSON, HTML
in headless Chromium. `REPORT_SCREENSHOT=1 pytest tests/batch/report/test_report_run.py` refreshes docs/report.png."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from batch import demo
from batch.cli import main
from tests.support import browser
from tests.support.processes import ROOT
from tests.support.reports import assert_self_contained, check_figures, check_terminal_width, check_visit

pytestmark = pytest.mark.slow  # real worker processes on loopback

DOCS_PNG = ROOT / "docs" / "report.png"
EVIL_NAME = """<b>&"quote'.jpg"""


def write_inputs(folder: Path) -> Path:
    """Small real images (one with a face) and a manifest of both ops plus two rows that fail."""
    imgs = folder / "imgs"
    imgs.mkdir(parents=True)
    grace = Path(demo.__file__).with_name("grace_hopper.jpg")  # the face photo the package ships
    shutil.copy(grace, imgs / "grace.jpg")
    Image.open(grace).resize((256, 300)).save(imgs / "grace-small.png")
    for i, colour in enumerate(((200, 60, 40), (40, 120, 200), (60, 160, 80))):
        img = Image.new("RGB", (96, 64), colour)
        img.paste((250, 250, 250), (8, 8, 30, 30))  # a corner mark, so the rotation shows
        img.save(imgs / f"tile{i}.jpg", quality=90)
    shutil.copy(imgs / "tile0.jpg", imgs / EVIL_NAME)  # a file name that is HTML
    (imgs / "notes.jpg").write_text("not an image\n")
    rows = [
        ("path", "op", "rotation"),
        ("imgs/tile0.jpg", "rotate", "90"),
        ("imgs/tile1.jpg", "rotate", "180"),
        ("imgs/tile2.jpg", "rotate", "270"),
        (f"imgs/{EVIL_NAME}", "rotate", "90"),
        ("imgs/grace-small.png", "rotate", "90"),
        ("imgs/grace.jpg", "classify", ""),
        ("imgs/grace-small.png", "classify", ""),
        ("imgs/tile1.jpg", "classify", ""),
        ("imgs/missing.jpg", "rotate", "90"),
        ("imgs/notes.jpg", "classify", ""),
    ]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report-run")
    write_inputs(folder)
    # The installed command in a subprocess, as a user types it (run.json records this command line).
    batch = Path(sys.executable).with_name("batch")
    done = subprocess.run([str(batch), "run", "manifest.csv", "--out", "out", "--quiet"], cwd=folder,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr  # two rows fail on purpose
    return folder / "out"


@pytest.mark.timeout(300)  # the first test also runs the batch (the fixture)
def test_figures_match_the_real_results_table(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(run_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fig = json.loads(result.output)
    check_figures(fig, run_dir / "results.csv")
    assert fig["rows"]["total"] == 10
    assert fig["rows"]["by_op"] == {"classify": {"ok": 3, "error": 1}, "rotate": {"ok": 5, "error": 1}}
    assert fig["run"]["complete"] is True
    assert fig["run"]["command"] and fig["run"]["started_at"] and fig["latency"]["rows_per_s"] > 0
    assert sum(w["rows"] for w in fig["workers"]) >= 8  # every row that reached a worker names it
    assert {e["sample"]["path"] for e in fig["errors"]} == {"imgs/missing.jpg", "imgs/notes.jpg"}


def test_terminal_report_of_a_real_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run_dir.parent)
    result = CliRunner().invoke(main, ["report", "out"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    check_terminal_width(result.output)
    assert "imgs/missing.jpg" in result.output and "Slowest rows" in result.output


@pytest.mark.timeout(120)
def test_real_report_in_headless_chromium(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run_dir.parent)  # relative paths, as a user would type them, in the page and screenshot
    result = CliRunner().invoke(main, ["report", "out"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = run_dir / "report.html"
    page = html.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "&lt;b&gt;&amp;&quot;quote&#x27;.jpg" in page  # the HTML file name, shown as text
    assert page.count('class="pair"') == 5  # before/after of every rotated row
    if browser.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); CI installs it")
    png = run_dir / "report.png"
    visit = browser.screenshot(html, png)
    check_visit(visit, html, png)
    # 5 rotated pairs + 3 classified rows, every one decoded by the browser.
    assert len(visit.images) == 13
    if os.environ.get("REPORT_SCREENSHOT") == "1":
        browser.screenshot(html, DOCS_PNG, width=1200, height=2000, max_width=800)
