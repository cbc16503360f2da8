"""`batch run --out s3://…`: a shard's results where its pod can keep them (moto's S3 server on loopback).

The journal stays in a local cache while the run goes and is uploaded at checkpoints; the table, run.json
and the outputs end in the store; a pod killed mid-run and replaced by one with an empty disk resumes from
the store alone, redoing only the rows no checkpoint had kept."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
from pathlib import Path

import pytest

from batch.remote import CACHE_ENV
from tests.support.manifests import make_entangled
from tests.support.processes import run_batch, start_batch, wait_for
from tests.support.results import files_under

pytestmark = pytest.mark.slow

BUCKET = "s3://results"
VOLATILE = ("attempts", "latency_ms", "worker", "finished_at")


@pytest.fixture(scope="module")
def s3():
    from tests.support.s3 import s3_server

    with s3_server() as server:
        server.fs.mkdir("results")
        yield server


def table(data: bytes) -> list[dict[str, str]]:
    """A results CSV's whole lines (a checkpoint may end in the middle of none, but be safe)."""
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_a_shard_into_a_bucket_resumes_on_an_empty_disk(tmp_path: Path, s3, monkeypatch) -> None:
    manifest = make_entangled(tmp_path, 300)
    local = tmp_path / "local"
    done = run_batch(manifest, "--shard", "0/2", "--out", local, "--quiet", timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1 when the share has bad rows
    expected = {r["id"]: r for r in table((local / "results.csv").read_bytes())}

    out = f"{BUCKET}/job/shard-0-of-2"
    first_disk, second_disk = tmp_path / "pod-a", tmp_path / "pod-b"
    monkeypatch.setenv(CACHE_ENV, str(first_disk))
    proc = start_batch(manifest, "--shard", "0/2", "--out", out, "--checkpoint-every", "0.2", "--quiet",
                       log=tmp_path / "a.log")
    try:
        # Killed once a checkpoint holds some rows: no chance to upload its table or run.json.
        assert wait_for(lambda: s3.fs.invalidate_cache() or (
            s3.fs.exists(f"{out}/results.csv")
            and any(r["status"] == "ok" for r in table(s3.get(f"{out}/results.csv")))), 120, 0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not s3.fs.exists(f"{out}/run.json")
    checkpoint = table(s3.get(f"{out}/results.csv"))
    kept_ok = {r["id"] for r in checkpoint if r["status"] == "ok"}
    assert kept_ok and len(checkpoint) < len(expected)  # killed mid-run
    cache = [p for p in first_disk.iterdir() if p.is_dir()]
    assert len(cache) == 1 and (cache[0] / "results.csv").exists()  # the journal was local while it ran
    shutil.rmtree(first_disk)  # the pod's disk goes with it

    monkeypatch.setenv(CACHE_ENV, str(second_disk))
    rerun = run_batch(manifest, "--shard", "0/2", "--out", out, timeout=300)
    assert rerun.returncode == done.returncode, rerun.stdout + rerun.stderr
    assert f"Results: {out}/results.csv" in rerun.stdout

    info = json.loads(s3.get(f"{out}/run.json"))
    assert info["counts"]["skipped_already_done"] == len(kept_ok)  # only the rows no checkpoint kept ran again
    assert info["shard"] == {"index": 0, "count": 2} and info["shard_rows"] == len(expected)
    got = table(s3.get(f"{out}/results.csv"))
    assert len(got) == len({r["id"] for r in got}) == len(expected)
    for row in got:
        want = expected[row["id"]]
        for column in row:
            if column not in VOLATILE:
                assert row[column].replace(out, "<OUT>") == want[column].replace(str(local), "<OUT>"), (row, want)

    # The outputs: objects under the URI, by the same names as files under a local --out, the same bytes.
    images = {name: data for name, data in files_under(local).items() if name.endswith(".jpg")}
    assert images and {uri[len(out) + 1:]: s3.get(uri) for uri in s3.keys(out) if uri.endswith(".jpg")} == images
    assert not s3.fs.exists(f"{out}/results.journal.csv")
