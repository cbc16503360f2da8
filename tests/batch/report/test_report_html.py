"""The HTML report: self-contained, escaped, capped, and what headless Chromium makes of it."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from batch.cli import main
from batch.report import gallery, thumbs
from tests.support import browser
from tests.support.reports import assert_self_contained, check_visit, parse_tags
from tests.support.results import synthetic_rows, synthetic_run, write_results


def make_report(out: Path, target: Path | None = None) -> str:
    args = [str(out)] + (["--html", str(target)] if target else [])
    result = CliRunner().invoke(main, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return (target or out / "report.html").read_text(encoding="utf-8")


def test_html_has_every_section_and_only_embedded_images(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 80)
    page = make_report(out)
    assert_self_contained(page)
    for heading in ("Labels", "Latency", "Calls per worker", "Rotated images", "Classified images",
                    "Failed rows", "Failures by reason", "Slowest rows"):
        assert f">{heading}</h" in page, heading
    assert page.count("<svg") == 2  # label bars and latency histogram
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/jpeg;base64,") for src in images)
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    rotated = sum(r["op"] == "rotate" for r in rows)
    labels = Counter(r["label"] for r in rows if r["op"] == "classify")
    # Before and after per rotated row; per label at most PER_LABEL_CAP pictures.
    expected = 2 * min(rotated, gallery.ROTATE_CAP) + sum(min(n, gallery.PER_LABEL_CAP) for n in labels.values())
    assert len(images) == expected
    assert "Content-Security-Policy" in page


def test_text_from_the_table_cannot_inject_html(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = synthetic_rows(tmp_path, out, 12)
    evil = '"><script>alert(1)</script><img src=https://evil.example/x.png onerror=alert(2)>'
    rows[4].update(path=f"imgs/{evil}.jpg", error=f"file not found: imgs/{evil}.jpg", id=f"id{evil}")
    rows[2].update(label=f"</h3><iframe src=//evil.example>{evil}")
    write_results(out, rows, run={"command": f"batch run {evil}", "manifest": str(tmp_path / "m.csv")})
    page = make_report(out)
    assert_self_contained(page)
    assert "evil.example" in page  # it is shown, as text
    tags = parse_tags(page)
    assert not [t for t in tags if t[0] in ("script", "iframe")]
    assert not [t for t in tags if any(name.startswith("on") for name, _ in t[1])]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_galleries_are_capped_for_a_10000_row_run(tmp_path: Path) -> None:
    out = synthetic_run(tmp_path, 10_000)
    page = make_report(out)
    images = re.findall(r"<img ", page)
    cap = 2 * gallery.ROTATE_CAP + gallery.LABELS_CAP * gallery.PER_LABEL_CAP
    assert 0 < len(images) <= cap
    assert f"first {gallery.ROTATE_CAP} of" in page  # the page says it is capped
    assert f"the first {gallery.FAILED_CAP:,} of" in page
    # A few hundred KB of thumbnails and tables, whatever the number of rows (measured: ~150 KB here).
    size = len(page.encode("utf-8"))
    assert size < 1_000_000, size


def test_thumbnail_is_small_upright_and_draws_the_box() -> None:
    # A 400x200 image stored sideways: EXIF orientation 6 means "rotate 90° clockwise to view",
    # so upright it is 200x400. The box is given in upright pixels, as the worker reports faces.
    img = Image.new("RGB", (400, 200), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    jpeg = thumbs.thumbnail(buf.getvalue(), size=160, boxes=[(20, 40, 180, 200)])
    thumb = Image.open(io.BytesIO(jpeg)).convert("RGB")
    assert thumb.size == (80, 160)
    # Scale 0.4: the box's left edge is at x=8, its top at y=16, its bottom at y=80 (2 px thick, inside).
    for xy in ((8, 50), (40, 16), (40, 79)):
        r, g, b = thumb.getpixel(xy)
        assert r > 170 and g < 130 and b < 130, (xy, (r, g, b))
    assert thumb.getpixel((40, 50))[1] > 200  # inside the box: still white
    assert thumb.getpixel((40, 140))[1] > 200  # below the box: white


def test_unreadable_image_gives_a_reason_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert gallery.make_thumb(bad).problem.startswith("cannot read image")
    assert gallery.make_thumb(tmp_path / "gone.jpg").problem.startswith("cannot read file")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chromium_renders_offline_without_any_request_outside_the_file(tmp_path: Path) -> None:
    if browser.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); CI installs it")
    out = synthetic_run(tmp_path, 60)
    make_report(out)
    png = tmp_path / "report.png"
    page = browser.screenshot(out / "report.html", png)
    check_visit(page, out / "report.html", png)
