"""Hostile options and outputs through `batch run` (issue 18): seconds options and --name templates that would
fail every row are usage errors before any work; resume re-runs a row whose output is no longer what was written;
object-store keys with '?' or '#' (read by s3fs as a version) are refused on the driver's and the worker's side."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from batch.stream import STREAM_MIN
from tests.support.images import jpeg, photo
from tests.support.inprocess import in_process_worker, run_cli
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch, worker_process
from tests.support.results import by_id, results
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.storage import Roots


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on loopback, one for the module, with a bucket of its own (moto keeps buckets per process)."""
    from tests.support.s3 import s3_server

    with s3_server() as server:
        server.fs.mkdir("hostile-keys")
        yield server


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
    code, _, stderr = run_cli("run", manifest, "--out", out, option, value, "--quiet")
    assert code == 2, stderr
    assert f"batch run: error: {option} {float(value)!r}: expected a number of seconds from" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()  # refused before the results folder, the worker or any call


def test_the_ends_of_the_seconds_ranges_are_accepted(live, manifest: Path, tmp_path: Path) -> None:
    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", tmp_path / "out",
                              "--timeout", "86400", "--resolve-every", "0.1", "--quiet")
    assert code == 0, stderr


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
    code, _, stderr = run_cli("run", manifest, "--out", out, "--name", template, "--quiet")
    assert code == 2, stderr
    assert said in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_a_template_with_format_specs_of_text_names_outputs(live, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", out,
                              "--name", "{stem:_>6}-{rotation!s:>4}-{id:.1}{ext}", "--quiet")
    assert code == 0, stderr
    assert (out / "rotated" / "_____a-  90-a.png").is_file()


# --- resume re-runs a row whose output is no longer what was written --------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mode", ["references", "bytes"])
def test_resume_reruns_rows_whose_output_was_truncated_emptied_or_replaced(tmp_path: Path, mode: str) -> None:
    """Each output's size and SHA-256 are recorded with its row (written by the worker by reference, or by the
    driver from the bytes it got); a second run re-runs the rows whose file was cut short, emptied or replaced at
    the same size, restoring them, and skips the one left alone"""
    names = ("cut", "empty", "replaced", "kept")
    for i, name in enumerate(names):
        photo(48 + 8 * i, 32, seed=i).save(tmp_path / f"{name}.jpg", quality=90)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": name, "path": f"{name}.jpg", "op": "rotate", "rotation": "90"} for name in names])
    out = tmp_path / "out"

    def run() -> dict[str, dict[str, str]]:
        if mode == "references":  # as the embedded worker: it reads and writes the files itself
            out.mkdir(exist_ok=True)  # a worker's root exists before it starts
            with in_process_worker(data_roots=(tmp_path,), output_roots=(out,)) as w:
                code, _, stderr = run_cli("run", manifest, "--worker", w.address, "--references", "--out", out,
                                          "--quiet")
        else:
            with in_process_worker() as w:
                code, _, stderr = run_cli("run", manifest, "--worker", w.address, "--out", out, "--quiet")
        assert code == 0, stderr
        return by_id(results(out))

    first = run()
    written = {name: (out / "rotated" / f"{name}.jpg").read_bytes() for name in names}
    for name in names:
        assert first[name]["output_bytes"] == str(len(written[name]))
        assert first[name]["output_sha256"] == _digest(written[name])
    (out / "rotated" / "cut.jpg").write_bytes(written["cut"][: len(written["cut"]) // 2])
    (out / "rotated" / "empty.jpg").write_bytes(b"")
    replaced = bytearray(written["replaced"])
    replaced[len(replaced) // 2] ^= 0xFF  # the same size: only the digest tells
    (out / "rotated" / "replaced.jpg").write_bytes(bytes(replaced))

    second = run()
    for name in ("cut", "empty", "replaced"):
        assert second[name]["finished_at"] != first[name]["finished_at"], name  # run again, not skipped
        assert (out / "rotated" / f"{name}.jpg").read_bytes() == written[name]
        assert second[name]["output_sha256"] == _digest(written[name])
    assert second["kept"] == first["kept"]  # skipped: its earlier result kept as it was


@pytest.mark.slow  # the embedded worker (or a worker process) against moto's S3
def test_resume_reruns_a_row_whose_object_was_truncated(s3, tmp_path: Path) -> None:
    """The same for an output object: its size (one HEAD) against the recorded one"""
    photo(64, 48, seed=1).save(tmp_path / "a.jpg", quality=90)
    photo(56, 40, seed=2).save(tmp_path / "b.jpg", quality=90)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": x, "path": f"{x}.jpg", "op": "rotate", "rotation": "90", "output": f"s3://hostile-keys/resume/{x}.jpg"}
        for x in ("a", "b")])
    out = tmp_path / "out"
    first = run_batch(manifest, "--out", out, "--quiet")
    assert first.returncode == 0, first.stderr
    before = by_id(results(out))
    written = {x: s3.get(f"s3://hostile-keys/resume/{x}.jpg") for x in ("a", "b")}
    assert before["a"]["output_bytes"] == str(len(written["a"]))
    assert before["a"]["output_sha256"] == _digest(written["a"])
    s3.put("s3://hostile-keys/resume/a.jpg", written["a"][:100])
    second = run_batch(manifest, "--out", out, "--quiet")
    assert second.returncode == 0, second.stderr
    after = by_id(results(out))
    assert after["a"]["finished_at"] != before["a"]["finished_at"]
    assert s3.get("s3://hostile-keys/resume/a.jpg") == written["a"]
    assert after["b"] == before["b"]


# --- object-store keys with ? or # ------------------------------------------------------------------------------


@pytest.mark.slow  # the embedded worker (or a worker process) against moto's S3
def test_keys_with_a_question_mark_or_hash_are_refused_per_row_and_nothing_else_is_written(s3, tmp_path: Path) \
        -> None:
    """s3fs reads '?versionId=' as a version: such outputs would all land on out/x. Each is its row's error with
    the reason; out/x keeps its bytes; an input whose key really holds '?versionId=' is refused, not 'not found'"""
    import boto3

    photo(64, 48, seed=1).save(tmp_path / "a.jpg", quality=90)
    s3.put("s3://hostile-keys/keys/x", b"precious")
    source = (tmp_path / "a.jpg").read_bytes()
    s3.put("s3://hostile-keys/keys/src.jpg", source)
    boto3.client("s3", endpoint_url=s3.endpoint).put_object(Bucket="hostile-keys", Key="keys-in/q?versionId=7.jpg",
                                                            Body=(tmp_path / "a.jpg").read_bytes())
    rows = [{"id": "v1", "path": "a.jpg", "op": "rotate", "rotation": "90",
             "output": "s3://hostile-keys/keys/x?versionId=1.jpg"},
            {"id": "v2", "path": "a.jpg", "op": "rotate", "rotation": "180",
             "output": "s3://hostile-keys/keys/x?versionId=2.jpg"},
            {"id": "hash", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "s3://hostile-keys/keys/x#1.jpg"},
            {"id": "query", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "s3://hostile-keys/keys/x?.jpg"},
            {"id": "input", "path": "s3://hostile-keys/keys-in/q?versionId=7.jpg", "op": "classify"},
            {"id": "slash", "path": "s3://hostile-keys/keys/src.jpg/", "op": "rotate", "rotation": "90",
             "output": "s3://hostile-keys/keys/src.jpg"},  # s3fs strips the '/': it would turn its own input
            {"id": "ok", "path": "a.jpg", "op": "rotate", "rotation": "90", "output": "s3://hostile-keys/keys/ok.jpg"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    for attempt in (1, 2):  # resumed: still refused, never counted done
        done = run_batch(manifest, "--out", tmp_path / "out", "--quiet")
        assert done.returncode == 1, done.stderr
        got = by_id(results(tmp_path / "out"))
        for row_id, mark in (("v1", "?"), ("v2", "?"), ("hash", "#"), ("query", "?"), ("input", "?")):
            assert got[row_id]["status"] == "error", (attempt, row_id)
            assert f"has a '{mark}' in its key" in got[row_id]["error"]
        assert "ends in '/'" in got["slash"]["error"]
        assert got["ok"]["status"] == "ok"
    assert s3.get("s3://hostile-keys/keys/x") == b"precious"
    assert s3.get("s3://hostile-keys/keys/src.jpg") == source
    assert s3.keys("s3://hostile-keys/keys/") == ["s3://hostile-keys/keys/ok.jpg", "s3://hostile-keys/keys/src.jpg",
                                                  "s3://hostile-keys/keys/x"]


@pytest.mark.slow  # the embedded worker (or a worker process) against moto's S3
def test_a_worker_by_reference_refuses_keys_with_a_question_mark_or_hash(s3) -> None:
    """The worker's side: a destination or source URI with '?' or '#' in its key, or a key ending in '/', is
    refused (OUTSIDE_ROOTS, the reason said), out/x untouched; a root with '?' does not start; what it does
    write, its answer accounts for (size and SHA-256)"""
    s3.put("s3://hostile-keys/refs/out/x", b"precious")
    s3.put("s3://hostile-keys/refs/in/a.jpg", jpeg(64, 48, seed=1))
    roots = ("--data-root", "s3://hostile-keys/refs/in/", "--output-root", "s3://hostile-keys/refs/out/")
    with worker_process(*roots) as w, \
            grpc.insecure_channel(w.address) as channel:
        stub = v1_grpc.ImageWorkerStub(channel)
        refs = "s3://hostile-keys/refs"
        for source, destination in ((f"{refs}/in/a.jpg", f"{refs}/out/x?versionId=1.jpg"),
                                    (f"{refs}/in/a.jpg", f"{refs}/out/x#1.jpg"),
                                    (f"{refs}/in/a.jpg?versionId=1", f"{refs}/out/y.jpg"),
                                    (f"{refs}/in/a.jpg", f"{refs}/out/x/")):  # s3fs would strip the '/'
            with pytest.raises(grpc.RpcError) as refused:
                stub.Rotate(v1.RotateRequest(degrees=90, source=v1.ImageRef(uri=source),
                                             destination=v1.ImageRef(uri=destination)), timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "in its key" in refused.value.details() or "ends in '/'" in refused.value.details()
        ok = stub.Rotate(v1.RotateRequest(degrees=90, source=v1.ImageRef(uri="s3://hostile-keys/refs/in/a.jpg"),
                                          destination=v1.ImageRef(uri="s3://hostile-keys/refs/out/y.jpg")), timeout=30)
        stored = s3.get("s3://hostile-keys/refs/out/y.jpg")
        assert (ok.output_bytes, ok.output_sha256) == (len(stored), _digest(stored))
    assert s3.get("s3://hostile-keys/refs/out/x") == b"precious"
    with pytest.raises(ValueError, match="in its key"):
        Roots.of([], ["s3://hostile-keys/refs/out?x/"])


def test_a_streamed_output_is_recorded_and_rerun_when_cut_short(tmp_path: Path) -> None:
    """An input over the stream threshold goes by RotateStream: the worker's account of the bytes it streamed
    is recorded, matches the file, and a truncated file runs again"""
    photo(1100, 800, seed=3).save(tmp_path / "big.bmp")  # uncompressed: 2.5 MiB, quick to write and to turn
    assert (tmp_path / "big.bmp").stat().st_size > STREAM_MIN
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "big", "path": "big.bmp", "op": "rotate", "rotation": "90"}])
    out, output = tmp_path / "out", tmp_path / "out" / "rotated" / "big.bmp"
    with in_process_worker() as w:
        code, _, stderr = run_cli("run", manifest, "--worker", w.address, "--out", out, "--quiet")
        assert code == 0, stderr
        before = by_id(results(out))["big"]
        written = output.read_bytes()
        assert (before["output_bytes"], before["output_sha256"]) == (str(len(written)), _digest(written))
        output.write_bytes(written[:STREAM_MIN])
        code, _, stderr = run_cli("run", manifest, "--worker", w.address, "--out", out, "--quiet")
    assert code == 0, stderr
    assert w.state.served == {"RotateStream": 2}
    assert by_id(results(out))["big"]["finished_at"] != before["finished_at"]
    assert output.read_bytes() == written
