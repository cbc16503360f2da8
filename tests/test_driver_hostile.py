"""Hostile options and outputs through `batch run` (issue 18): seconds options and --name templates that would
fail every row are usage errors before any work; resume re-runs a row whose output is no longer what was written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import photo
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch

pytestmark = pytest.mark.slow


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    photo(32, 16, seed=1).save(tmp_path / "a.png")
    return write_manifest(tmp_path / "m.csv", [{"id": "a", "path": "a.png", "op": "rotate", "rotation": "90"}])


@pytest.mark.parametrize(("option", "value"), [
    ("--timeout", "inf"), ("--timeout", "nan"), ("--timeout", "-inf"), ("--timeout", "9e9"), ("--timeout", "1e300"),
    ("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "86401"),
    ("--resolve-every", "inf"), ("--resolve-every", "nan"), ("--resolve-every", "9e9"), ("--resolve-every", "0"),
    ("--resolve-every", "-5"), ("--resolve-every", "0.01"),
    ("--checkpoint-every", "inf"), ("--checkpoint-every", "nan"), ("--checkpoint-every", "0"),
])
def test_a_seconds_option_out_of_range_is_a_usage_error_before_any_work(manifest: Path, tmp_path: Path,
                                                                       option: str, value: str) -> None:
    out = tmp_path / "out"
    done = run_batch(manifest, "--out", out, option, value, "--quiet")
    assert done.returncode == 2, done.stderr
    assert f"batch run: error: {option} {float(value)!r}: expected a number of seconds from" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # refused before the results folder, the worker or any call


def test_the_ends_of_the_seconds_ranges_are_accepted(manifest: Path, tmp_path: Path) -> None:
    done = run_batch(manifest, "--out", tmp_path / "out", "--timeout", "86400", "--resolve-every", "0.1", "--quiet")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("template", "said"), [
    ("{stem}_{rotation:d}{ext}", "Unknown format code 'd'"),
    ("{stem}_{id:x}{ext}", "Unknown format code 'x'"),
    ("{stem:>99999999999}{ext}", "asks for a width or precision over 255"),
    ("{stem:.300}{ext}", "asks for a width or precision over 255"),
    ("{stem:>{id}}{ext}", "has a field inside it"),
    ("{stem!z}{ext}", "Unknown conversion specifier z"),
    ("{stem:,}{ext}", "Cannot specify ','"),
    ("{stem:=10}{ext}", "'=' alignment not allowed"),
    ("x" * 5000 + "{stem}{ext}", "over the 4,096 of a path"),
])
def test_a_template_that_cannot_format_is_a_usage_error_before_any_work(manifest: Path, tmp_path: Path,
                                                                       template: str, said: str) -> None:
    out = tmp_path / "out"
    done = run_batch(manifest, "--out", out, "--name", template, "--quiet")
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_template_with_format_specs_of_text_names_outputs(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_batch(manifest, "--out", out, "--name", "{stem:_>6}-{rotation!s:>4}-{id:.1}{ext}", "--quiet")
    assert done.returncode == 0, done.stderr
    assert (out / "rotated" / "_____a-  90-a.png").is_file()
