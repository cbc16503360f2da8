"""The results folder is the run's own, and a damaged one never costs the run: through the real `batch run`
and `batch report` commands (in this process, click's CliRunner), against the worker's real servicers on
loopback."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import jpeg
from tests.support.inprocess import run_cli
from tests.support.manifests import write_manifest
from tests.support.results import by_id, results, stray_temporaries


def run_batch(*args: object) -> subprocess.CompletedProcess:
    """`batch run ARGS…` in this process, as a finished process: its exit code, stdout and stderr."""
    return subprocess.CompletedProcess(args, *run_cli("run", *args))


def said(done: subprocess.CompletedProcess) -> str:
    """What the table records of a run: its exit code and its last line on stderr (or stdout)."""
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return f"exit {done.returncode}: {lines[-1] if lines else ''}"


def images(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg(32, 24, seed=i))


def test_outputs_naming_the_runs_own_files_or_the_manifest_are_refused(tmp_path: Path, live,
                                                                        record_property) -> None:
    """Outputs named .lock, results.csv, run.json, the index, worker.log, report.html or without an extension"""
    images(tmp_path, "a.jpg")
    out = tmp_path / "out"
    bookkeeping = (".lock", "results.csv", "run.json", ".batch-index.sqlite", "worker.log", "report.html",
                   "results.journal.csv")
    rows = [{"id": name, "path": "a.jpg", "op": "rotate", "rotation": "90", "output": name} for name in bookkeeping]
    rows += [{"id": "noext", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "rotated/a"},
             {"id": "fine", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "a90.jpg"}]
    manifest = write_manifest(tmp_path / "jobs", rows)
    before = manifest.read_bytes()
    done = run_batch(manifest, "--worker", live.address, "--out", out, "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 1, done.stderr
    got = by_id(results(out))
    for name in bookkeeping:
        assert got[name]["status"] == "error"
        assert f"is {name}, one of the run's own files in --out" in got[name]["error"]
    assert "has no extension" in got["noext"]["error"]
    assert got["fine"]["status"] == "ok"
    assert manifest.read_bytes() == before


def test_the_manifest_inside_out_is_never_an_output(tmp_path: Path, live, record_property) -> None:
    """An output naming the manifest itself (--out is its folder): a row error, the manifest untouched"""
    images(tmp_path, "a.jpg")
    manifest = write_manifest(tmp_path / "jobs.csv", [
        {"id": "1", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "jobs.csv"}])
    before = manifest.read_bytes()
    done = run_batch(manifest, "--worker", live.address, "--out", tmp_path, "--quiet")  # --out is its folder
    record_property("observed", said(done))
    assert done.returncode == 1
    assert by_id(results(tmp_path))["1"]["error"] == "output 'jobs.csv' is the manifest itself"
    assert manifest.read_bytes() == before


@pytest.mark.parametrize(("name", "message"), [
    (".lock", ".lock is a symbolic link: refusing to follow it"),
    ("results.csv", "results.csv is a symbolic link: refusing to follow it"),
])
def test_a_link_planted_in_out_is_never_written_through(tmp_path: Path, name: str, message: str, live,
                                                        record_property) -> None:
    """A symlink planted at --out/.lock or --out/results.csv: refused, exit 2, its target untouched"""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.jpg", "op": "rotate", "rotation": "45"}])
    done = run_batch(manifest, "--worker", live.address, "--out", out, "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert victim.read_text() == "keep me\n"


def test_out_through_a_file_is_one_line_and_exit_2(tmp_path: Path, record_property) -> None:
    """--out through a file: one line, exit 2"""
    (tmp_path / "file").write_text("x")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.jpg", "op": "classify"}])
    done = run_batch(manifest, "--out", tmp_path / "file" / "out", "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 2
    assert "cannot create --out" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_manifest_leaves_no_results_folder(tmp_path: Path, record_property) -> None:
    """A missing manifest: exit 2, no results folder made"""
    done = run_batch(tmp_path / "nope.csv", "--out", tmp_path / "out", "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 2
    assert "cannot read the manifest" in done.stderr
    assert not (tmp_path / "out").exists()


def test_nul_bytes_and_huge_cells_are_row_errors(tmp_path: Path, live, record_property) -> None:
    """NUL bytes in a path or output and a 40,000-digit rotation: row errors, quoted short; resume reads them back"""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,op,rotation,output\n"
                        "nul,a\x00b.jpg,rotate,90,\n"
                        "nulout,a.jpg,rotate,90,x\x00.jpg\n"
                        f"huge,a.jpg,rotate,{'9' * 40_000},\n", encoding="utf-8")
    out = tmp_path / "out"
    done = run_batch(manifest, "--worker", live.address, "--out", out, "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 1, done.stderr
    got = by_id(results(out))
    assert got["nul"]["error"] == "path contains a NUL byte"
    assert got["nulout"]["error"] == "output contains a NUL byte"
    assert got["huge"]["error"] == f"rotation {'9' * 40}… (40,000 characters) is out of range"
    rerun = run_batch(manifest, "--worker", live.address, "--out", out, "--quiet")  # resume reads its own table back
    assert rerun.returncode == 1 and len(results(out)) == 3


def test_a_damaged_journal_is_resumed_and_reported_not_a_traceback(tmp_path: Path, live, record_property) -> None:
    """results.csv with a non-UTF-8 byte mid-file and cut inside a character: named, resumed"""
    names = ("é1.jpg", "é2.jpg", "é3.jpg")
    images(tmp_path, *names)
    manifest = write_manifest(tmp_path / "m.csv",
                              [{"id": n, "path": n, "op": "rotate", "rotation": "90"} for n in names])
    out = tmp_path / "out"
    assert run_batch(manifest, "--worker", live.address, "--out", out, "--quiet").returncode == 0
    table = out / "results.csv"
    data = table.read_bytes()
    lines = data.split(b"\n")
    lines[2] = lines[2].replace("é2".encode(), b"\xff2")  # a byte that is not UTF-8, mid-file
    cut = b"\n".join(lines)
    cut = cut[:cut.rindex("é3".encode()) + 1]  # a crash between the two bytes of a character
    table.write_bytes(cut)
    code, stdout, stderr = run_cli("report", out, "--json")
    assert code == 0, stderr
    warnings = json.loads(stdout)["warnings"]
    assert any("not UTF-8 text): line 3" in w for w in warnings), warnings
    assert any("unfinished last line" in w for w in warnings), warnings
    rerun = run_batch(manifest, "--worker", live.address, "--out", out)
    record_property("observed", f"report: {'; '.join(warnings)}; rerun {said(rerun)}")
    assert rerun.returncode == 0, rerun.stderr
    assert "not UTF-8 text): line 3" in rerun.stderr
    got = by_id(results(out))
    assert sorted(got) == sorted(names) and all(r["status"] == "ok" for r in got.values())
    assert json.loads((out / "run.json").read_text())["counts"]["skipped_already_done"] == 1


def test_a_shorter_manifest_keeps_the_other_rows_and_says_so(tmp_path: Path, live, record_property) -> None:
    """A shorter manifest into the same --out: the other rows kept, and the run says so"""
    images(tmp_path, "a.jpg", "b.jpg")
    rows = [{"id": n, "path": f"{n}.jpg", "op": "rotate", "rotation": "90"} for n in ("a", "b")]
    out = tmp_path / "out"
    assert run_batch(write_manifest(tmp_path / "m.csv", rows), "--worker", live.address, "--out", out,
                     "--quiet").returncode == 0
    shorter = run_batch(write_manifest(tmp_path / "m.csv", rows[:1]), "--worker", live.address, "--out", out)
    record_property("observed", said(shorter))
    assert shorter.returncode == 0
    assert "1 rows of earlier runs have ids this manifest does not have: kept" in shorter.stderr
    assert [r["id"] for r in results(out)] == ["a", "b"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own: a disk that fills up, or goes read-only, for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_a_full_disk_is_one_line_and_leaves_nothing_temporary(tmp_path: Path, small_disk: Path, live,
                                                               record_property) -> None:
    """A full disk (a 1 MiB tmpfs): one line naming it, no temporaries; freed, the rerun finishes"""
    names = [f"p{i}.jpg" for i in range(20)]
    images(tmp_path, *names)
    rows = [{"id": n, "path": n, "op": "rotate", "rotation": "90"} for n in names]
    out = small_disk / "out"
    first = run_batch(write_manifest(tmp_path / "m.csv", rows[:2]), "--worker", live.address, "--out", out,
                      "--quiet")
    assert first.returncode == 0, first.stderr
    fill(small_disk)
    done = run_batch(write_manifest(tmp_path / "m.csv", rows), "--worker", live.address, "--out", out, "--quiet")
    record_property("observed", said(done))
    assert done.returncode in (1, 2), done.stderr
    output = done.stdout + done.stderr
    assert ("No space left on device" in output or "disk is full" in output) and "Traceback" not in output
    assert not stray_temporaries(out)
    (small_disk / "filler").unlink()
    rerun = run_batch(write_manifest(tmp_path / "m.csv", rows), "--worker", live.address, "--out", out,
                      "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert [r["status"] for r in results(out)] == ["ok"] * 20


def test_a_read_only_out_is_one_line_and_exit_2(tmp_path: Path, small_disk: Path, record_property) -> None:
    """A read-only --out: one line naming it, exit 2"""
    (small_disk / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.jpg", "op": "classify"}])
    done = run_batch(manifest, "--out", small_disk / "out", "--quiet")
    record_property("observed", said(done))
    assert done.returncode == 2
    assert "cannot write in --out" in done.stderr and "Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
