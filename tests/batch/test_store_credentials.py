"""A driver without object-store credentials, through the real command against moto's S3 server on loopback:
one line naming what is missing and where it was looked for (exit 2, before anything runs) when the driver
must read or write the objects itself; with --references (the workers have credentials of their own) the run
goes on, and a resume that cannot check the earlier outputs says so, on stderr and in run.json."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import photo
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch, worker_process
from tests.support.results import results

IN, OUT = "s3://creds/in/", "s3://creds/out/"
N = 3
NO_KEYS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}


@pytest.fixture(scope="module")
def s3():
    from tests.support.s3 import s3_server

    with s3_server() as server:
        server.fs.mkdir("creds")
        for i in range(N):
            buf = io.BytesIO()
            photo(64, 48, seed=i).save(buf, "JPEG", quality=90)
            server.put(f"{IN}p{i}.jpg", buf.getvalue())
        yield server


def manifest(folder: Path, out: str) -> Path:
    return write_manifest(folder / "m.csv", [{"id": f"r{i}", "path": f"{IN}p{i}.jpg", "op": "rotate",
                                             "rotation": "90", "output": f"{out}p{i}.jpg"} for i in range(N)])


@pytest.mark.slow
@pytest.mark.parametrize(("missing", "expected"), [
    (NO_KEYS, "no S3 credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), in "),
    ({"AWS_SECRET_ACCESS_KEY": None}, "incomplete S3 credentials: AWS_SECRET_ACCESS_KEY is not set"),
    ({**NO_KEYS, "AWS_PROFILE": "nobody"}, "no S3 profile 'nobody' (AWS_PROFILE) in the environment"),
])
def test_a_driver_without_credentials_says_what_is_missing_in_one_line(s3, tmp_path: Path, missing: dict,
                                                                       expected: str) -> None:
    """bytes mode (the embedded worker): exit 2, stderr one line naming the missing credential and the files
    looked in (the empty ones the test points AWS_* at), no results table or run.json: no row was run"""
    out = tmp_path / "out"
    done = run_batch(manifest(tmp_path, f"{OUT}bytes/"), "--out", out, env=missing)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert line.startswith("batch run: error: " + expected), line
    if "incomplete" not in expected:
        assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] in line
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (out / "results.csv").exists() and not (out / "run.json").exists()
    assert s3.keys(f"{OUT}bytes/") == []


@pytest.mark.slow
def test_a_resume_that_cannot_check_earlier_outputs_says_so(s3, tmp_path: Path) -> None:
    """--references: the worker has the credentials, the driver none. The first run is ok; its resume
    without the driver's credentials cannot ask whether the outputs exist: a warning line and run.json say so,
    and the rows run again (still ok). With credentials the same resume skips them all."""
    out = tmp_path / "out"
    with worker_process("--data-root", IN, "--output-root", OUT) as w:
        args = (manifest(tmp_path, f"{OUT}refs/"), "--worker", w.address, "--references", "--out", out)
        first = run_batch(*args, env=NO_KEYS)
        assert first.returncode == 0, first.stderr
        assert "warning" not in first.stderr  # nothing earlier to check
        assert len(s3.keys(f"{OUT}refs/")) == N

        blind = run_batch(*args, env=NO_KEYS)
        assert blind.returncode == 0, blind.stderr
        warnings = [line for line in blind.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1, blind.stderr
        assert (f"cannot check that the {N} outputs on s3:// of earlier runs still exist (no S3 credentials"
                in warnings[0])
        assert warnings[0].endswith("those rows run again")
        info = json.loads((out / "run.json").read_text())
        assert info["warnings"] == [warnings[0].removeprefix("batch: warning: ")]
        assert info["counts"]["skipped_already_done"] == 0 and info["counts"]["ok"] == N

        seeing = run_batch(*args)
        assert seeing.returncode == 0, seeing.stderr
        info = json.loads((out / "run.json").read_text())
        assert info["warnings"] == [] and info["counts"]["skipped_already_done"] == N
    assert all(r["status"] == "ok" for r in results(out))
    assert Image.open(io.BytesIO(s3.get(f"{OUT}refs/p0.jpg"))).size == (48, 64)
