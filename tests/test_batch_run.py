"""`batch run` end to end: real commands, real workers on loopback, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import ROOT, wait_for, worker_process
from PIL import Image
from reliability_support import results

from batch.cli import main


def jpeg(path: Path, width: int = 48, height: int = 32, seed: int = 0) -> Path:
    """A small gradient JPEG, different for each seed."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    img.putpixel((seed % width, (seed // width) % height), (255, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)
    return path


def png(path: Path, width: int = 20, height: int = 10) -> Path:
    Image.new("RGBA", (width, height), (10, 200, 30, 128)).save(path, "PNG")
    return path


def write_manifest(path: Path, rows: list[dict], columns=("id", "path", "op", "rotation", "output")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


def tiny_manifest(folder: Path, n: int) -> Path:
    for i in range(n):
        jpeg(folder / "img" / f"{i:04d}.jpg", seed=i)
    rows = [{"id": f"r{i}", "path": f"img/{i:04d}.jpg", "op": "rotate", "rotation": 90 * (1 + i % 3)}
            for i in range(n)]
    return write_manifest(folder / "many.csv", rows)


def run_cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["run", *args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batch", "run", *args]


def files_named(folder: Path, *suffixes: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(suffixes)]


# --- the embedded worker and every row-level problem ------------------------------------------


@pytest.mark.timeout(240)
def test_mixed_manifest_through_the_embedded_worker(tmp_path):
    jpeg(tmp_path / "a.jpg", 48, 32)
    (tmp_path / "sub").mkdir()
    png(tmp_path / "sub" / "b.png")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    rows = [
        {"id": "rot", "path": "a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "png", "path": "sub/b.png", "op": "rotate", "rotation": "-90", "output": "named/b-left.png"},
        {"id": "face", "path": "a.jpg", "op": "classify"},
        {"id": "missing", "path": "nope.jpg", "op": "rotate", "rotation": "90"},
        {"id": "dir", "path": "folder.jpg", "op": "classify"},
        {"id": "loop", "path": "loop.jpg", "op": "classify"},
        {"id": "corrupt", "path": "corrupt.jpg", "op": "classify"},
        {"id": "op", "path": "a.jpg", "op": "sharpen"},
        {"id": "r45", "path": "a.jpg", "op": "rotate", "rotation": "45", "output": "x1.jpg"},
        {"id": "rabc", "path": "a.jpg", "op": "rotate", "rotation": "abc", "output": "x2.jpg"},
        {"id": "rempty", "path": "a.jpg", "op": "rotate", "rotation": "", "output": "x3.jpg"},
        {"id": "r1e9", "path": "a.jpg", "op": "rotate", "rotation": "1e9", "output": "x4.jpg"},
        {"id": "escape", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "../../escaped.jpg"},
        {"id": "inside", "path": "out/keep.jpg", "op": "classify"},
        {"id": "input", "path": "sub/b.png", "op": "rotate", "rotation": "90", "output": "keep.jpg"},
        {"id": "ext", "path": "a.jpg", "op": "rotate", "rotation": "180", "output": "wrong.png"},
    ]
    manifest = write_manifest(tmp_path / "mixed.csv", rows)
    out = tmp_path / "out"
    jpeg(out / "keep.jpg")
    input_bytes = (tmp_path / "a.jpg").read_bytes()

    code, stdout, stderr = run_cli(str(manifest), "--out", str(out), "--quiet")

    assert code == 1, stderr
    assert "16 rows: 4 ok, 12 failed" in stdout and "see the error column" in stdout
    table = results(out)
    assert [r["id"] for r in table] == [r["id"] for r in rows]  # one row per manifest row, in order
    by_id = {r["id"]: r for r in table}
    errors = {k: v["error"] for k, v in by_id.items() if v["status"] == "error"}
    assert errors["missing"] == f"file not found: {tmp_path / 'nope.jpg'}"
    assert errors["dir"] == f"is a directory, not an image file: {tmp_path / 'folder.jpg'}"
    assert errors["loop"] == f"symlink loop: {tmp_path / 'loop.jpg'}"
    assert errors["corrupt"].startswith("INVALID_ARGUMENT: ")
    assert errors["op"] == "unknown op 'sharpen' (expected rotate or classify)"
    assert errors["r45"] == "rotation 45 is not a multiple of 90 degrees"
    assert errors["rabc"].startswith("rotation 'abc' is not a whole number of degrees")
    assert errors["rempty"].startswith("rotation is required for rotate")
    assert errors["r1e9"].startswith("rotation '1e9' is not a whole number of degrees")
    assert errors["escape"] == f"output '../../escaped.jpg' escapes --out {out} (outputs must stay inside it)"
    assert errors["input"] == (f"output {out / 'keep.jpg'} is the input of row 'inside' (line 15): "
                               "refusing to overwrite an input")
    assert errors["ext"] == (f"output {out / 'wrong.png'} has extension .png but the rotated image is JPEG "
                             "(rotate keeps the input's format)")
    assert {k for k, v in by_id.items() if v["status"] == "ok"} == {"rot", "png", "face", "inside"}
    assert (tmp_path / "a.jpg").read_bytes() == input_bytes  # never overwritten
    assert not (tmp_path / "escaped.jpg").exists()

    rotated = out / "rotated" / "a.jpg"
    assert by_id["rot"]["output"] == str(rotated)
    with Image.open(rotated) as img:
        assert (img.format, img.size) == ("JPEG", (32, 48))
    assert (by_id["rot"]["width"], by_id["rot"]["height"]) == ("32", "48")
    with Image.open(out / "named" / "b-left.png") as img:
        assert (img.format, img.size, img.mode) == ("PNG", (10, 20), "RGBA")
    face = by_id["face"]
    assert (face["label"], json.loads(face["faces"])) == ("no_face", [])  # a gradient has no face
    assert face["output"] == "" and (face["width"], face["height"]) == ("48", "32")
    assert all(by_id[k]["worker"].count("/") == 1 and by_id[k]["attempts"] == "1" for k in ("rot", "png", "face"))
    assert by_id["missing"]["attempts"] == "0" and by_id["missing"]["worker"] == ""

    run = json.loads((out / "run.json").read_text())
    assert run["workers"]["embedded"] is True
    assert run["counts"] == {"rows": 16, "ok": 4, "failed": 12, "skipped_already_done": 0, "not_run": 0}
    assert run["exit_code"] == 1 and run["interrupted"] is False
    assert "stopped after serving" in (out / "worker.log").read_text()  # the embedded worker was stopped
    assert not files_named(out, ".batchtmp", ".tmp")


def test_manifest_problem_exits_2_before_any_work(tmp_path):
    jpeg(tmp_path / "a.jpg")
    manifest = write_manifest(tmp_path / "dup.csv", [
        {"id": "x", "path": "a.jpg", "op": "classify"},
        {"id": "x", "path": "a.jpg", "op": "rotate", "rotation": "90"},
    ])
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(str(manifest), "--out", str(out))
    assert code == 2
    assert f"{manifest}, line 3: duplicate id 'x' (first used on line 2)" in stderr
    assert not (out / "worker.log").exists()  # no worker was started
    assert not (out / "rotated").exists()
    assert not (out / "results.csv").exists()


def test_not_a_csv_exits_2_naming_the_line(tmp_path):
    manifest = tmp_path / "photo.csv"
    manifest.write_bytes(Image.new("RGB", (4, 4)).tobytes() + b"\x89\xff")
    code, _, stderr = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--worker", "127.0.0.1:9")
    assert code == 2
    assert "line 1" in stderr and ("not UTF-8" in stderr or "missing required column" in stderr)


def test_bad_worker_address_is_a_usage_error(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.jpg", "op": "classify"}])
    code, _, stderr = run_cli(str(manifest), "--worker", "localhost", "--out", str(tmp_path / "o"))
    assert code == 2 and "worker address 'localhost' is not HOST:PORT" in stderr


# --- named workers: spreading, failover, resume, formats ---------------------------------------


@pytest.mark.timeout(180)
def test_two_workers_both_serve_and_one_killed_mid_run_still_all_ok(tmp_path):
    n = 600
    manifest = tiny_manifest(tmp_path, n)
    out = tmp_path / "out"
    with worker_process() as a, worker_process() as b:
        proc = subprocess.Popen(
            batch_cmd(str(manifest), "--out", str(out), "--worker", a.address, "--worker", b.address),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        journal = out / "results.csv"
        assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 60, timeout=60)
        a.proc.kill()  # abruptly, calls in flight included
        assert proc.poll() is None, "the batch finished before the worker was killed: make it longer"
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert f"{n:,} rows: {n:,} ok, 0 failed" in stdout.decode()
    table = results(out)
    assert [r["id"] for r in table] == [f"r{i}" for i in range(n)]
    ports = {r["worker"].split("/")[0].rsplit(":", 1)[1] for r in table}
    assert ports == {str(a.port), str(b.port)}  # both received calls
    assert {r["status"] for r in table} == {"ok"}
    assert sorted(json.loads((out / "run.json").read_text())["workers"]["targets"]) == [
        f"ipv4:{a.address},{b.address}"
    ]


@pytest.mark.timeout(120)
def test_every_process_of_a_multi_process_worker_gets_calls(tmp_path):
    manifest = tiny_manifest(tmp_path, 80)
    out = tmp_path / "out"
    with worker_process(processes=2) as w:
        # 16 connections: the chance that the kernel puts them all on one process is 2^-15.
        code, stdout, stderr = run_cli(str(manifest), "--out", str(out), "--worker", w.address,
                                       "--connections", "16", "--quiet")
    assert code == 0, stderr
    pids = {r["worker"].rsplit("/", 1)[1] for r in results(out)}
    assert len(pids) == 2


@pytest.mark.timeout(180)
def test_worker_restarting_mid_run_does_not_fail_the_batch(tmp_path):
    n = 2000  # enough that the restart lands mid-run at ~1,500 tiny rows/s with journaling in groups
    manifest = tiny_manifest(tmp_path, n)
    out = tmp_path / "out"
    with worker_process() as first:
        port = first.port
        proc = subprocess.Popen(batch_cmd(str(manifest), "--out", str(out), "--worker", first.address),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        journal = out / "results.csv"
        assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 40, timeout=60, interval=0.01)
        first.proc.kill()
    assert proc.poll() is None
    with worker_process(port=port):  # back on the same port a moment later
        stdout, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 0, stderr.decode()
    table = results(out)
    assert len(table) == n and {r["status"] for r in table} == {"ok"}
    assert max(int(r["attempts"]) for r in table) > 1  # some calls did hit the gap and were retried


@pytest.mark.timeout(120)
def test_no_worker_left_fails_rows_naming_the_attempts_then_stops(tmp_path):
    n = 2000  # enough that the kill lands mid-run at ~1,500 tiny rows/s with journaling in groups
    manifest = tiny_manifest(tmp_path, n)
    out = tmp_path / "out"
    with worker_process() as w:
        proc = subprocess.Popen(batch_cmd(str(manifest), "--out", str(out), "--worker", w.address, "--retries", "1"),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        journal = out / "results.csv"
        assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 30, timeout=60, interval=0.01)
        w.proc.kill()
        stdout, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 1
    failed = [r for r in results(out) if r["status"] == "error"]
    assert failed and all(r["error"].startswith("worker unavailable after 2 attempts: UNAVAILABLE: ")
                          for r in failed)
    assert len(failed) < 100  # it stopped rather than failing every remaining row slowly
    assert "stopped: no worker answered for" in stdout.decode() and "not run" in stdout.decode()
    assert len(results(out)) < n


@pytest.mark.timeout(180)
def test_ctrl_c_then_the_same_command_finishes_exactly_once(tmp_path, worker):
    n = 1000  # the driver does ~1,000 tiny rows/s and journals in groups every ~0.1 s: room to land mid-run
    manifest = tiny_manifest(tmp_path, n)
    out, reference = tmp_path / "out", tmp_path / "reference"
    cmd = batch_cmd(str(manifest), "--out", str(out), "--worker", worker.address)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / "results.csv"
    assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 80, timeout=60, interval=0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stdout.decode() and "run the same command again" in stdout.decode()
    partial = results(out)
    assert 0 < len(partial) < n and len({r["id"] for r in partial}) == len(partial)
    assert {r["status"] for r in partial} == {"ok"}

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    assert f"({len(partial):,} already done)" in again.stdout.decode()
    table = results(out)
    assert [r["id"] for r in table] == [f"r{i}" for i in range(n)]
    assert {r["status"] for r in table} == {"ok"}
    kept = {r["id"]: r["finished_at"] for r in partial}
    assert all(r["finished_at"] == kept[r["id"]] for r in table if r["id"] in kept)  # not redone

    code, _, stderr = run_cli(str(manifest), "--out", str(reference), "--worker", worker.address, "--quiet")
    assert code == 0, stderr
    for r in results(reference):
        mine = Path(r["output"].replace(str(reference), str(out)))
        assert mine.read_bytes() == Path(r["output"]).read_bytes(), r["id"]
    assert not files_named(out, ".batchtmp", ".tmp")


def test_resume_redoes_failed_rows_and_missing_outputs_and_restart_starts_over(tmp_path, worker):
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "b.jpg", seed=3)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "path": "a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "b", "path": "b.jpg", "op": "rotate", "rotation": "180"},
        {"id": "c", "path": "c.jpg", "op": "classify"},
    ])
    out = tmp_path / "out"
    args = (str(manifest), "--out", str(out), "--worker", worker.address, "--quiet")
    assert run_cli(*args)[0] == 1
    first = {r["id"]: r for r in results(out)}
    (out / "rotated" / "b.jpg").unlink()
    jpeg(tmp_path / "c.jpg", seed=5)

    code, stdout, _ = run_cli(*args)
    assert code == 0 and "3 rows: 3 ok (1 already done), 0 failed" in stdout
    second = {r["id"]: r for r in results(out)}
    assert second["a"] == first["a"]
    assert second["b"]["finished_at"] != first["b"]["finished_at"] and (out / "rotated" / "b.jpg").exists()
    assert second["c"]["status"] == "ok"

    code, stdout, _ = run_cli(*args, "--restart")
    assert code == 0 and "3 rows: 3 ok, 0 failed" in stdout
    assert results(out)[0]["finished_at"] != first["a"]["finished_at"]


def test_parquet_results_one_row_per_manifest_row(tmp_path, worker):
    manifest = tiny_manifest(tmp_path, 12)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(str(manifest), "--out", str(out), "--worker", worker.address,
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
    huge.write_bytes(b"\xff\xd8\xff" + os.urandom(18 * 2**20))  # over the worker's transport limit (1 + 16 MiB)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "big", "path": "big.jpg", "op": "classify"},
        {"id": "huge", "path": "huge.jpg", "op": "rotate", "rotation": "90"},
    ])
    out = tmp_path / "out"
    with worker_process("--max-message-mb", "1") as w:
        code, _, _ = run_cli(str(manifest), "--out", str(out), "--worker", w.address, "--quiet")
    assert code == 1
    by_id = {r["id"]: r for r in results(out)}
    assert by_id["big"]["attempts"] == by_id["huge"]["attempts"] == "1"
    assert "over this worker's limit of 1 MiB (worker serve --max-message-mb)" in by_id["big"]["error"]
    assert by_id["huge"]["error"].startswith("RESOURCE_EXHAUSTED: ")
    assert "18.0 MiB" in by_id["huge"]["error"] and "worker serve --max-message-mb" in by_id["huge"]["error"]


def test_tls_worker(tmp_path):
    from certs import make_pki

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    manifest = tiny_manifest(tmp_path, 3)
    with worker_process("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                        "--tls-client-ca", str(pki.ca)) as w:
        code, _, stderr = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--worker", w.address,
                                  "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                                  "--tls-key", str(pki.client_key), "--quiet")
    assert code == 0, stderr
    assert {r["status"] for r in results(tmp_path / "out")} == {"ok"}


def test_batch_worker_environment_variable(tmp_path, worker, monkeypatch):
    manifest = tiny_manifest(tmp_path, 2)
    monkeypatch.setenv("BATCH_WORKER", f" {worker.address} ,")
    code, _, stderr = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0, stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["workers"] == {"targets": [f"ipv4:{worker.address}"], "embedded": False, "embedded_processes": None,
                              "answered": run["workers"]["answered"]}
    assert sum(run["workers"]["answered"].values()) == 2


def test_plain_progress_lines_when_not_a_terminal(tmp_path, worker):
    manifest = tiny_manifest(tmp_path, 3)
    code, stdout, stderr = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--worker", worker.address)
    assert code == 0
    assert "batch: running 3 rows" in stderr and "\r" not in stderr
    assert len(stdout.strip().splitlines()) == 1 and io.StringIO(stdout).read().startswith("3 rows: 3 ok")
