"""`batch run` end to end: real commands, real workers on loopback, real files."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.support.images import jpeg
from tests.support.inprocess import in_process_worker, run_cli
from tests.support.manifests import make_batch, write_manifest
from tests.support.processes import run_batch, start_batch, wait_for, worker_process
from tests.support.results import by_id, results


def write_jpeg(path: Path, width: int = 48, height: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(width, height, seed))
    return path


def files_named(folder: Path, *suffixes: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(suffixes)]


# --- the embedded worker ----------------------------------------------------------------------------

DECOY = 'raise SystemExit("imported {} from the current folder instead of the real one")\n'


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_embedded_worker_from_a_folder_holding_worker_py_and_batch_py(tmp_path):
    """The current folder cannot take over the embedded worker (or the driver): children start with -P."""
    for module in ("worker", "batch"):
        (tmp_path / f"{module}.py").write_text(DECOY.format(f"{module}.py"))
    write_jpeg(tmp_path / "a.jpg", 48, 32)
    (tmp_path / "sub").mkdir()
    Image.new("RGBA", (20, 10), (10, 200, 30, 128)).save(tmp_path / "sub" / "b.png")
    write_manifest(tmp_path / "manifest.csv", [
        {"id": "rot", "path": "a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "png", "path": "sub/b.png", "op": "rotate", "rotation": "-90", "output": "named/b-left.png"},
        {"id": "face", "path": "a.jpg", "op": "classify"},
    ])

    done = run_batch("manifest.csv", "--out", "out", "--quiet", cwd=tmp_path, timeout=200)

    out = tmp_path / "out"
    assert done.returncode == 0, done.stdout + done.stderr
    rows = by_id(results(out))
    assert {r["status"] for r in rows.values()} == {"ok"} and sorted(rows) == ["face", "png", "rot"]
    with Image.open(out / "rotated" / "a.jpg") as img:
        assert (img.format, img.size) == ("JPEG", (32, 48))
    with Image.open(out / "named" / "b-left.png") as img:
        assert (img.format, img.size, img.mode) == ("PNG", (10, 20), "RGBA")
    assert (rows["face"]["label"], json.loads(rows["face"]["faces"])) == ("no_face", [])  # no face in a gradient
    assert json.loads((out / "run.json").read_text())["workers"]["embedded"] is True
    assert "stopped after serving" in (out / "worker.log").read_text()  # the embedded worker was stopped
    assert not files_named(out, ".batchtmp", ".tmp")


def test_manifest_problem_exits_2_before_any_work(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    manifest = write_manifest(tmp_path / "dup.csv", [
        {"id": "x", "path": "a.jpg", "op": "classify"},
        {"id": "x", "path": "a.jpg", "op": "rotate", "rotation": "90"},
    ])
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", str(manifest), "--out", str(out))
    assert code == 2
    assert f"{manifest}, line 3: duplicate id 'x' (first used on line 2)" in stderr
    assert not (out / "worker.log").exists()  # no worker was started
    assert not (out / "rotated").exists()
    assert not (out / "results.csv").exists()


def test_not_a_csv_exits_2_naming_the_line(tmp_path):
    manifest = tmp_path / "photo.csv"
    manifest.write_bytes(Image.new("RGB", (4, 4)).tobytes() + b"\x89\xff")
    code, _, stderr = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--worker", "127.0.0.1:9")
    assert code == 2
    assert "line 1" in stderr and ("not UTF-8" in stderr or "missing required column" in stderr)


def test_bad_worker_address_is_a_usage_error(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.jpg", "op": "classify"}])
    code, _, stderr = run_cli("run", str(manifest), "--worker", "localhost", "--out", str(tmp_path / "o"))
    assert code == 2 and "worker address 'localhost' is not HOST:PORT" in stderr


# --- named workers: spreading, failover, resume, formats ---------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_process_of_a_multi_process_worker_gets_calls(tmp_path):
    manifest = make_batch(tmp_path, 80)
    out = tmp_path / "out"
    with worker_process(processes=2) as w:
        # 16 connections, each used (80 single calls, round robin): the chance that the kernel puts them all on
        # one process is 2^-15. Batched, 80 tiny rows are 5 calls on 5 connections: 2^-4, which CI met once.
        code, stdout, stderr = run_cli("run", str(manifest), "--out", str(out), "--worker", w.address,
                                       "--connections", "16", "--batch-rows", "1", "--quiet")
    assert code == 0, stderr
    pids = {r["worker"].rsplit("/", 1)[1] for r in results(out)}
    assert len(pids) == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_then_the_same_command_finishes_exactly_once(tmp_path, worker):
    n = 1000  # the driver does ~1,000 tiny rows/s and journals in groups every ~0.1 s: room to land mid-run
    manifest = make_batch(tmp_path, n)
    out, reference = tmp_path / "out", tmp_path / "reference"
    args = (manifest, "--out", out, "--worker", worker.address)
    proc = start_batch(*args, log=tmp_path / "driver.log")
    journal = out / "results.csv"
    assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 80, timeout=60, interval=0.01)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(60)
    said = (tmp_path / "driver.log").read_text()
    assert code == 130, said
    assert "interrupted" in said and "run the same command again" in said
    partial = results(out)
    assert 0 < len(partial) < n and len({r["id"] for r in partial}) == len(partial)
    assert {r["status"] for r in partial} == {"ok"}

    again = run_batch(*args)
    assert again.returncode == 0, again.stderr
    assert f"({len(partial):,} already done)" in again.stdout
    table = results(out)
    assert [r["id"] for r in table] == [f"r{i}" for i in range(n)]
    assert {r["status"] for r in table} == {"ok"}
    kept = {r["id"]: r["finished_at"] for r in partial}
    assert all(r["finished_at"] == kept[r["id"]] for r in table if r["id"] in kept)  # not redone

    code, _, stderr = run_cli("run", str(manifest), "--out", str(reference), "--worker", worker.address, "--quiet")
    assert code == 0, stderr
    for r in results(reference):
        mine = Path(r["output"].replace(str(reference), str(out)))
        assert mine.read_bytes() == Path(r["output"]).read_bytes(), r["id"]
    assert not files_named(out, ".batchtmp", ".tmp")


def test_resume_redoes_failed_rows_and_missing_outputs_and_restart_starts_over(tmp_path, live):
    write_jpeg(tmp_path / "a.jpg")
    write_jpeg(tmp_path / "b.jpg", seed=3)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "path": "a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "b", "path": "b.jpg", "op": "rotate", "rotation": "180"},
        {"id": "c", "path": "c.jpg", "op": "classify"},
    ])
    out = tmp_path / "out"
    args = (str(manifest), "--out", str(out), "--worker", live.address, "--quiet")
    assert run_cli("run", *args)[0] == 1
    first = {r["id"]: r for r in results(out)}
    (out / "rotated" / "b.jpg").unlink()
    write_jpeg(tmp_path / "c.jpg", seed=5)

    code, stdout, _ = run_cli("run", *args)
    assert code == 0 and "3 rows: 3 ok (1 already done), 0 failed" in stdout
    second = {r["id"]: r for r in results(out)}
    assert second["a"] == first["a"]
    assert second["b"]["finished_at"] != first["b"]["finished_at"] and (out / "rotated" / "b.jpg").exists()
    assert second["c"]["status"] == "ok"

    code, stdout, _ = run_cli("run", *args, "--restart")
    assert code == 0 and "3 rows: 3 ok, 0 failed" in stdout
    assert results(out)[0]["finished_at"] != first["a"]["finished_at"]


def test_parquet_results_one_row_per_manifest_row(tmp_path, live):
    manifest = make_batch(tmp_path, 12)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", str(manifest), "--out", str(out), "--worker", live.address,
                                   "--results-format", "parquet", "--quiet")
    assert code == 0, stderr
    assert stdout.strip().endswith("results.parquet")
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["id"]) == [f"r{i}" for i in range(12)]
    assert table["width"].dtype == "int32" and (table["status"] == "ok").all()
    assert not (out / "results.journal.csv").exists() and not (out / "results.csv").exists()


def test_image_over_the_worker_message_limit_is_not_retried(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(int(1.5 * 2**20)))
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff\xd8\xff" + os.urandom(18 * 2**20))  # streamed (over 2 MiB), over --max-image-mb 16
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "big", "path": "big.jpg", "op": "classify"},
        {"id": "huge", "path": "huge.jpg", "op": "rotate", "rotation": "90"},
    ])
    out = tmp_path / "out"
    with in_process_worker(max_message_mb=1, max_image_mb=16) as w:
        code, _, _ = run_cli("run", str(manifest), "--out", str(out), "--worker", w.address, "--quiet")
    assert code == 1
    by_id = {r["id"]: r for r in results(out)}
    assert by_id["big"]["attempts"] == by_id["huge"]["attempts"] == "1"
    assert "over this worker's limit of 1 MiB (worker serve --max-message-mb)" in by_id["big"]["error"]
    assert by_id["huge"]["error"].startswith("RESOURCE_EXHAUSTED: ")
    assert "18.0 MiB" in by_id["huge"]["error"] and "worker serve --max-image-mb" in by_id["huge"]["error"]


def test_batch_worker_environment_variable(tmp_path, live, monkeypatch):
    manifest = make_batch(tmp_path, 2)
    monkeypatch.setenv("BATCH_WORKER", f" {live.address} ,")
    code, _, stderr = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0, stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["workers"] == {"targets": [f"ipv4:{live.address}"], "embedded": False, "embedded_processes": None,
                              "answered": run["workers"]["answered"], "rows_by_reference": 0}
    assert sum(run["workers"]["answered"].values()) == 2


def test_plain_progress_lines_when_not_a_terminal(tmp_path, live):
    manifest = make_batch(tmp_path, 3)
    code, stdout, stderr = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--worker", live.address)
    assert code == 0
    assert "batch: running 3 rows" in stderr and "\r" not in stderr
    assert len(stdout.strip().splitlines()) == 1 and io.StringIO(stdout).read().startswith("3 rows: 3 ok")
