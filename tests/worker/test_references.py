"""Reference mode: the worker reads inputs and writes outputs itself, only under its roots. Through the worker's
real servicers on loopback (in this process) and the real `batch run`; the embedded worker's choice in a real
`batch run` process."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.images import jpeg, photo
from tests.support.inprocess import in_process_worker, run_cli
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch
from tests.support.results import by_id, files_under, results
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.cli import main


def reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder both sides see: data/ with a manifest and images, out/ for results, elsewhere/ outside both."""
    root = tmp_path_factory.mktemp("shared")
    data = root / "data"
    (data / "pics").mkdir(parents=True)
    for i in range(6):
        photo(96 + 16 * i, 64, seed=i).save(data / "pics" / f"p{i}.jpg", quality=90)
    photo(64, 64, seed=9).save(data / "pics" / "p.png")
    (root / "out").mkdir()
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "secret.jpg").write_bytes(jpeg(32, 32))
    rows = [{"id": f"r{i}", "path": f"pics/p{i}.jpg", "op": "rotate", "rotation": str(90 * (i % 4))}
            for i in range(6)]
    rows += [{"id": "png", "path": "pics/p.png", "op": "rotate", "rotation": "270"},
             {"id": "c", "path": "pics/p0.jpg", "op": "classify"}]
    write_manifest(data / "m.csv", rows)
    return root


@pytest.fixture(scope="module")
def rooted_worker(shared: Path):
    with in_process_worker(data_roots=(shared / "data",), output_roots=(shared / "out",)) as w:
        yield w


def test_a_named_worker_with_roots_rotates_and_classifies_by_reference(shared: Path, rooted_worker,
                                                                       record_property) -> None:
    """batch run --references against a worker with --data-root/--output-root: every row ok, by reference"""
    out = shared / "out" / "refs"
    code, _, stderr = run_cli("run", shared / "data" / "m.csv", "--worker", rooted_worker.address, "--references",
                              "--out", out, "--quiet")
    assert code == 0, stderr
    got = by_id(results(out))
    info = json.loads((out / "run.json").read_text())
    record_property("observed", f"exit 0; {len(got)} rows ok; {info['workers']['rows_by_reference']} by reference")
    assert all(r["status"] == "ok" for r in got.values())
    assert info["workers"]["rows_by_reference"] == 8
    assert got["c"]["label"] == "face"  # the stand-in model's answer for an image read by reference


@pytest.mark.slow  # the embedded worker: a `batch run` process and its child
def test_the_embedded_worker_uses_references_and_writes_the_same_bytes(shared: Path, rooted_worker,
                                                                       record_property) -> None:
    """The embedded worker goes by reference; its outputs are byte-identical to bytes mode's"""
    manifest = shared / "data" / "m.csv"
    embedded = run_batch(manifest, "--out", shared / "out" / "embedded", "--quiet")
    plain = run_batch(manifest, "--worker", rooted_worker.address, "--out", shared / "out" / "bytes", "--quiet")
    assert embedded.returncode == plain.returncode == 0, (embedded.stderr, plain.stderr)
    by_ref = json.loads((shared / "out" / "embedded" / "run.json").read_text())["workers"]["rows_by_reference"]
    in_bytes = json.loads((shared / "out" / "bytes" / "run.json").read_text())["workers"]["rows_by_reference"]
    a, b = files_under(shared / "out" / "embedded" / "rotated"), files_under(shared / "out" / "bytes" / "rotated")
    record_property("observed", f"{by_ref} rows by reference (embedded), {in_bytes} (named, bytes); "
                                f"{len(a)} outputs, identical: {a == b}")
    assert by_ref == 8 and in_bytes == 0
    assert a == b and len(a) == 7


@pytest.mark.slow  # the embedded worker: a `batch run` process and its child
def test_an_embedded_row_outside_the_roots_goes_by_bytes(tmp_path: Path, shared: Path) -> None:
    """An input outside the manifest's folder: the embedded worker gets its bytes, the row is ok"""
    (tmp_path / "m").mkdir()
    manifest = write_manifest(tmp_path / "m" / "m.csv", [
        {"id": "out", "path": str(shared / "elsewhere" / "secret.jpg"), "op": "rotate", "rotation": "90"},
        {"id": "in", "path": "here.jpg", "op": "rotate", "rotation": "90"}])
    (tmp_path / "m" / "here.jpg").write_bytes(jpeg(32, 32))
    done = run_batch(manifest, "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["workers"]["rows_by_reference"] == 1


@pytest.mark.parametrize("escape", ["dotdot", "symlink", "absolute", "relative", "output outside"])
def test_every_escape_is_refused_permission_denied(shared: Path, rooted_worker, escape: str,
                                                   record_property) -> None:
    """A reference leading outside the worker's roots is refused PERMISSION_DENIED, nothing written outside"""
    data, elsewhere = shared / "data", shared / "elsewhere"
    link = data / "link.jpg"
    if not link.is_symlink():
        link.symlink_to(elsewhere / "secret.jpg")
    source = {"dotdot": f"{data}/../elsewhere/secret.jpg", "symlink": str(link),
              "absolute": str(elsewhere / "secret.jpg"), "relative": "pics/p0.jpg",
              "output outside": str(data / "pics" / "p0.jpg")}[escape]
    destination = str(elsewhere / "x.jpg") if escape == "output outside" else str(shared / "out" / "x.jpg")
    request = v1.RotateRequest(degrees=90, source=v1.ImageRef(path=source),
                               destination=v1.ImageRef(path=destination))
    with grpc.insecure_channel(rooted_worker.address) as channel, pytest.raises(grpc.RpcError) as e:
        v1_grpc.ImageWorkerStub(channel).Rotate(request, timeout=30)
    record_property("observed", f"{e.value.code().name} {reason(e.value)}: {e.value.details()}")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(e.value) == "OUTSIDE_ROOTS"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.jpg"]


def test_a_worker_without_roots_refuses_references(shared: Path, live) -> None:
    """A worker started without roots refuses references (REFERENCES_OFF)"""
    request = v1.ClassifyRequest(source=v1.ImageRef(path=str(shared / "data" / "pics" / "p0.jpg")))
    with grpc.insecure_channel(live.address) as channel, pytest.raises(grpc.RpcError) as e:
        v1_grpc.ImageWorkerStub(channel).Classify(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(e.value) == "REFERENCES_OFF"


def test_a_root_given_as_a_file_stops_the_worker_at_start(shared: Path) -> None:
    """worker serve --data-root FILE: a usage error, exit 2"""
    result = CliRunner().invoke(main, ["serve", "--data-root", str(shared / "elsewhere" / "secret.jpg")])
    assert result.exit_code == 2 and "is not a folder" in result.output
