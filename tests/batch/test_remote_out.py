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
from click.testing import CliRunner

from batch.cli import main
from batch.index import RunIndex
from batch.manifest import read_rows
from batch.remote import CACHE_ENV, cache_folder
from batch.shard import Shard, sharer
from batch.store import parse
from tests.support.manifests import make_entangled
from tests.support.processes import run_batch, start_batch, wait_for
from tests.support.results import files_under

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


@pytest.mark.parametrize(("out", "says"), [
    ("https://example.com/results", "https:// is read-only"),
    ("s3://", "--out "),
    ("s3://bucket/a/../b", "--out "),
])
def test_an_out_uri_that_cannot_be_written_is_a_usage_error(tmp_path: Path, out: str, says: str) -> None:
    manifest = make_entangled(tmp_path, 2)
    result = CliRunner().invoke(main, ["run", str(manifest), "--out", out, "--quiet"])
    assert result.exit_code == 2 and says in result.output, result.output


def test_the_cache_folder_is_one_per_uri_under_batch_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    a, b = cache_folder(parse("s3://results/job/shard-0-of-2")), cache_folder(parse("s3://results/job/shard-1-of-2"))
    assert a.parent == b.parent == tmp_path and a != b
    assert a == cache_folder(parse("s3://Results/job/shard-0-of-2"))  # one spelling per bucket


def test_a_row_has_one_share_whether_out_is_a_folder_or_a_uri(tmp_path: Path) -> None:
    manifest = make_entangled(tmp_path, 40)
    store = parse("s3://results/job/shard")

    def share(k: int, out: Path, uri=None) -> dict[str, str]:
        out.mkdir()
        index = RunIndex(out / ".index", k)
        try:
            index.add_rows(read_rows(manifest, out, store=uri), manifest, sharer(Shard(k, 3), out, uri))
            index.name_rotations()
            return {s.row.id: str(s.row.output_path).replace(str(uri or out), "<OUT>") for s in index.scan()}
        finally:
            index.close()

    everywhere = {}
    for k in range(3):
        local, remote = share(k, tmp_path / f"local{k}"), share(k, tmp_path / f"cache{k}", store)
        assert local == remote and local
        everywhere.update(remote)
    assert everywhere["many90"] == "<OUT>/rotated/many.r90.jpg"
    assert everywhere["clash-a"] == "<OUT>/clash.jpg"


@pytest.mark.slow
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
    assert (info["out"], info["results"]) == (out, f"{out}/results.csv")
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
    report = json.loads(CliRunner().invoke(main, ["report", "--json", "--html", str(tmp_path / "r.html"), out],
                                           catch_exceptions=False).output)
    assert report["rows"]["total"] == len(expected)
