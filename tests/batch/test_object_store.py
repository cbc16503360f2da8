"""Object stores in manifests: s3:// inputs and outputs through a real S3 server on loopback (moto's server mode),
in bytes mode (the driver reads and writes the store) and reference mode (the worker does, under URI roots);
resume after Ctrl-C, one result per row, never overwriting an input object; and, without a server, URIs as the
manifest, the index and the worker's roots see them."""

from __future__ import annotations

import importlib.util
import io
import json
import signal
from pathlib import Path

import pytest
from PIL import Image

import batch.store
from batch.extras import MissingExtra
from batch.manifest import read_rows
from tests.support.images import photo
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch, start_batch, wait_for, worker_process
from tests.support.results import by_id, results
from worker.errors import Reason
from worker.storage import Roots, StorageError

IN, OUT = "s3://bucket/in/", "s3://bucket/out/"
PHOTOS = 6


def jpeg_of(width: int, height: int, seed: int) -> bytes:
    buf = io.BytesIO()
    photo(width, height, seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3():
    from tests.support.s3 import s3_server

    with s3_server() as server:
        server.fs.mkdir("bucket")
        for i in range(PHOTOS):
            server.put(f"{IN}p{i}.jpg", jpeg_of(96 + 16 * i, 64, seed=i))
        yield server


def rows_to(out: str) -> list[dict]:
    """Each photo rotated into ``out`` (a URI prefix), and classified."""
    rows = [{"id": f"r{i}", "path": f"{IN}p{i}.jpg", "op": "rotate", "rotation": str(90 * (i % 4)),
             "output": f"{out}p{i}.jpg"} for i in range(PHOTOS)]
    return rows + [{"id": "c", "path": f"{IN}p0.jpg", "op": "classify"}]


def check_rotated(s3, out: str) -> dict[str, bytes]:
    objects = {uri.rsplit("/", 1)[1]: s3.get(uri) for uri in s3.keys(out)}
    assert sorted(objects) == [f"p{i}.jpg" for i in range(PHOTOS)]
    for i in range(PHOTOS):
        size = Image.open(io.BytesIO(objects[f"p{i}.jpg"])).size
        assert size == ((96 + 16 * i, 64) if i % 2 == 0 else (64, 96 + 16 * i))
    return objects


@pytest.mark.slow
def test_bytes_and_reference_modes_rotate_and_classify_s3_objects_alike(s3, tmp_path: Path,
                                                                      record_property) -> None:
    """s3:// inputs into s3:// outputs: bytes mode (a worker without roots) and reference mode (a worker with
    URI roots, batch run --references) both ok, their outputs byte-identical"""
    with worker_process() as plain:
        done = run_batch(write_manifest(tmp_path / "bytes.csv", rows_to(f"{OUT}bytes/")), "--worker",
                         plain.address, "--out", tmp_path / "bytes", "--quiet")
    assert done.returncode == 0, done.stderr
    with worker_process("--data-root", IN, "--output-root", OUT) as rooted:
        done = run_batch(write_manifest(tmp_path / "refs.csv", rows_to(f"{OUT}refs/")), "--worker",
                         rooted.address, "--references", "--out", tmp_path / "refs", "--quiet")
    assert done.returncode == 0, done.stderr
    by_bytes, by_reference = check_rotated(s3, f"{OUT}bytes/"), check_rotated(s3, f"{OUT}refs/")
    assert by_bytes == by_reference
    info = json.loads((tmp_path / "refs" / "run.json").read_text())
    assert info["workers"]["rows_by_reference"] == PHOTOS + 1
    for out in ("bytes", "refs"):
        got = by_id(results(tmp_path / out))
        assert all(r["status"] == "ok" for r in got.values())
        assert got["r1"]["output"] == f"{OUT}{out}/p1.jpg"
        assert got["c"]["label"] == "no_face"
    assert "testing" not in (tmp_path / "refs" / "run.json").read_text()  # no credential written down
    record_property("observed", f"{PHOTOS} rotations and a classify ok in each mode, outputs identical")


@pytest.mark.slow
def test_the_embedded_worker_reads_s3_inputs_into_default_local_outputs(s3, tmp_path: Path) -> None:
    """No output cell and no --worker: the driver reads the object, the output goes under --out/rotated/bucket/"""
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "path": f"{IN}p1.jpg", "op": "rotate",
                                                    "rotation": "90"}])
    done = run_batch(manifest, "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "out" / "rotated" / "bucket" / "in" / "p1.jpg"
    assert Image.open(written).size == (64, 112)
    assert by_id(results(tmp_path / "out"))["a"]["output"] == str(written)


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_one_result_per_row(s3, tmp_path: Path, record_property) -> None:
    """SIGINT once some rows are done, then the same command: every row ok exactly once, done rows skipped
    (their objects exist); a deleted output object runs again"""
    n = 120
    for i in range(n):
        s3.put(f"{IN}many/m{i}.jpg", jpeg_of(640, 480, seed=i))
    rows = [{"id": f"m{i}", "path": f"{IN}many/m{i}.jpg", "op": "rotate", "rotation": "90",
             "output": f"{OUT}many/m{i}.png"} for i in range(n)]  # to PNG: slow enough to interrupt
    manifest, out = write_manifest(tmp_path / "many.csv", rows), tmp_path / "out"
    with worker_process() as w:
        args = (manifest, "--worker", w.address, "--out", out, "--concurrency", "2", "--quiet")
        proc = start_batch(*args, log=tmp_path / "first.log")
        journal = out / "results.csv"
        assert wait_for(lambda: journal.exists() and journal.read_text().count("\n") > 10, 60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, (tmp_path / "first.log").read_text()
        first = len(results(out))
        assert 0 < first < n, "not interrupted midway: make the rows slower"
        done = run_batch(*args)
        assert done.returncode == 0, done.stderr
        table = results(out)
        assert sorted(r["id"] for r in table) == sorted(f"m{i}" for i in range(n))
        assert all(r["status"] == "ok" for r in table)
        skipped = json.loads((out / "run.json").read_text())["counts"]["skipped_already_done"]
        assert skipped >= first
        assert len(s3.keys(f"{OUT}many/")) == n

        s3.fs.rm(f"{OUT}many/m3.png")
        again = run_batch(*args)
        assert again.returncode == 0, again.stderr
        assert json.loads((out / "run.json").read_text())["counts"]["skipped_already_done"] == n - 1
        assert s3.fs.isfile(f"{OUT}many/m3.png")
    record_property("observed", f"interrupted after {first} of {n} rows, resumed: {n} rows ok once each")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bytes", "references"])
def test_an_input_object_is_never_overwritten_and_a_missing_one_is_its_rows_error(s3, tmp_path: Path,
                                                                                 mode: str) -> None:
    """An output URI equal to an input URI (in another spelling too) is refused, the input unchanged; a missing
    object, a '..' segment, and (by reference) an object outside the worker's roots are each that row's error"""
    inputs = {i: s3.get(f"{IN}p{i}.jpg") for i in (2, 3)}
    rows = [{"id": "self", "path": f"{IN}p2.jpg", "op": "rotate", "rotation": "90", "output": "S3://BUCKET/in/p2.jpg"},
            {"id": "other", "path": f"{IN}p0.jpg", "op": "rotate", "rotation": "90", "output": f"{IN}p3.jpg"},
            {"id": "reader", "path": f"{IN}p3.jpg", "op": "classify"},
            {"id": "missing", "path": f"{IN}nothing.jpg", "op": "rotate", "rotation": "90",
             "output": f"{OUT}clash-{mode}/nothing.jpg"},
            {"id": "dots", "path": f"{IN}../in/p0.jpg", "op": "classify"},
            {"id": "ok", "path": f"{IN}p1.jpg", "op": "rotate", "rotation": "90",
             "output": f"{OUT}clash-{mode}/p1.jpg"}]
    if mode == "references":
        rows.append({"id": "outside", "path": "s3://bucket/elsewhere.jpg", "op": "classify"})
        s3.put("s3://bucket/elsewhere.jpg", inputs[2])
    manifest = write_manifest(tmp_path / "m.csv", rows)
    roots = ("--data-root", IN, "--output-root", OUT) if mode == "references" else ()
    with worker_process(*roots) as w:
        done = run_batch(manifest, "--worker", w.address, "--out", tmp_path / "out", "--quiet",
                         *(("--references",) if mode == "references" else ()))
    assert done.returncode == 1, done.stderr
    got = by_id(results(tmp_path / "out"))
    assert "refusing to overwrite an input" in got["self"]["error"]
    assert "refusing to overwrite an input" in got["other"]["error"]
    assert got["reader"]["status"] == got["ok"]["status"] == "ok"
    assert got["missing"]["status"] == "error"
    assert ("NOT_FOUND" if mode == "references" else "object not found") in got["missing"]["error"]
    assert "'..' segment" in got["dots"]["error"]
    if mode == "references":
        assert "PERMISSION_DENIED" in got["outside"]["error"]
    assert {i: s3.get(f"{IN}p{i}.jpg") for i in (2, 3)} == inputs
    assert s3.keys(f"{OUT}clash-{mode}/") == [f"{OUT}clash-{mode}/p1.jpg"]


# --- without a server -----------------------------------------------------------------------------------------


def test_a_uri_stays_a_normalised_uri_and_clashes_compare_as_such(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "path": "S3://Bucket/in/a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "b", "path": "s3://bucket/in/a.jpg", "op": "rotate", "rotation": "90", "output": "s3://bucket/o/b.png"},
        {"id": "c", "path": "https://example.org/x.jpg", "op": "rotate", "rotation": "90",
         "output": "https://example.org/y.jpg"},
        {"id": "d", "path": "ftp://host/x.jpg", "op": "classify"},
        {"id": "e", "path": "s3://bucket/in/a.jpg", "op": "rotate", "rotation": "90", "output": "s3://bucket/o/b"},
    ])
    rows = {r.id: r for r in read_rows(manifest, tmp_path / "out")}
    assert rows["a"].input_path == "s3://bucket/in/a.jpg" and isinstance(rows["a"].input_path, batch.store.Uri)
    assert rows["a"].output_path == tmp_path / "out" / "rotated" / "bucket" / "in" / "a.jpg"
    assert rows["b"].output_path == "s3://bucket/o/b.png" and rows["b"].format == "PNG"
    assert "read-only" in rows["c"].error
    assert "not a supported scheme" in rows["d"].error
    assert "no extension" in rows["e"].error


def test_a_store_whose_package_is_missing_names_its_extra(tmp_path: Path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a))
    batch.store.require.cache_clear()
    try:
        manifest = write_manifest(tmp_path / "m.csv", [{"path": "s3://bucket/a.jpg", "op": "classify"}])
        with pytest.raises(MissingExtra, match=r"imagebatch\[s3\]"):
            list(read_rows(manifest, tmp_path / "out"))
        with pytest.raises(ValueError, match=r"--data-root s3://bucket/ needs s3fs.*imagebatch\[s3\]"):
            Roots.of(["s3://bucket/"], [])
    finally:
        batch.store.require.cache_clear()


@pytest.mark.parametrize(("uri", "reason"), [
    ("s3://bucket/in/../secret.jpg", Reason.OUTSIDE_ROOTS),
    ("s3://bucket/inside.jpg", Reason.OUTSIDE_ROOTS),  # "in" is a prefix of the key, not a folder of it
    ("s3://other/in/a.jpg", Reason.OUTSIDE_ROOTS),
    ("gs://bucket/in/a.jpg", Reason.OUTSIDE_ROOTS),
])
def test_a_worker_serves_uris_only_under_its_uri_roots(uri: str, reason: Reason) -> None:
    roots = Roots.of(["s3://Bucket/in"], ["s3://bucket/out/"])
    assert roots.read_uris == ("s3://bucket/in/",)
    with pytest.raises(StorageError) as refused:
        roots.read_uri(uri, 1024)
    assert refused.value.reason == reason
    with pytest.raises(StorageError) as off:
        Roots().read_uri("s3://bucket/in/a.jpg", 1024)
    assert off.value.reason == Reason.REFERENCES_OFF
    with pytest.raises(ValueError, match="read-only"):
        Roots.of([], ["https://example.org/out/"])


def test_results_of_uri_rows_read_back(tmp_path: Path) -> None:
    """The index stores URIs as text and gives them back as URIs (not paths that fold s3:// into s3:/)."""
    assert batch.store.location("s3://bucket/a.jpg") == "s3://bucket/a.jpg"
    assert isinstance(batch.store.location("s3://bucket/a.jpg"), batch.store.Uri)
    assert batch.store.location("/data/s3://x") == Path("/data/s3://x")
