"""Conformance: a fresh `worker serve` answers clients the project did not write, as they call it by default.

Each client runs in a process of its own, with none of the project importable: Python stubs that
grpc_tools.protoc makes from proto/*.proto into a temporary folder (every RPC, with no deadline, with one of
1e9 s, and with one of 50 ms), the legacy ABImageService client as the seed used it (raw pixels of a photo
shrunk to 37x50 grey, no deadline, stubs from the contract's own .proto), and Node's @grpc/grpc-js loading the
.proto files at run time. Each test starts its own worker, so the calls that need the face model arrive before
it has loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.rpc import status_pb2
from grpc_tools import protoc

from tests.support.images import jpeg
from tests.support.processes import ROOT, rotates, serving, worker_process

CLIENTS = ROOT / "tests" / "conformance"
NODE_MODULES_ENV = "IMAGEBATCH_NODE_MODULES"
LABELS = {"George W Bush", "Colin Powell", "unknown", "no_face"}
# The calls that wait for the face model on a fresh worker (Rotate auto asks for faces: the image has no EXIF).
MODEL_CALLS = ("Classify", "ClassifyStream", "ClassifyBatch", "Rotate auto", "RotateStream auto", "RecognizeFace")
IMAGE_CALLS = ("Rotate", "RotateStream", "RotateBatch", "RotateImage", *MODEL_CALLS)
SERVICES = ["ABImageService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
            "imageworker.v1.ImageWorker"]
# google/rpc/status.proto (the batch RPCs' item errors), as googleapis-common-protos ships it.
GOOGLEAPIS = Path(status_pb2.__file__).resolve().parents[2]


def generate(protos: list[Path], out: Path) -> Path:
    """Python modules and gRPC stubs for ``protos`` by grpc_tools.protoc, in ``out``."""
    include = Path(protoc.__file__).parent / "_proto"
    for proto in protos:
        args = ["grpc_tools.protoc", f"-I{include}", f"-I{GOOGLEAPIS}", f"-I{proto.parent}",
                f"--python_out={out}", f"--grpc_python_out={out}", str(proto)]
        assert protoc.main(args) == 0, f"protoc failed on {proto}"
    return out


def run_client(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """A client's JSON answer; it must end by itself, well within the test's time."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, **env}, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_quiet_log(log: Path) -> None:
    """No call of a conforming client is a bug of the worker."""
    text = log.read_text()
    assert "internal error" not in text and "Traceback" not in text, text


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg(64, 48))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("deadline", ["none", "long", "short"])
def test_every_rpc_answers_protoc_stubs_on_a_fresh_worker(tmp_path, photo, deadline):
    stubs = generate(sorted((ROOT / "proto").glob("*.proto")), tmp_path)
    with worker_process() as w:
        results = run_client([sys.executable, str(CLIENTS / "client.py"), w.address, deadline, str(photo)],
                             {"PYTHONPATH": str(stubs)}, tmp_path)
        assert serving(w.address) and rotates(w.address)  # whatever the deadlines did, the worker still works
        assert_quiet_log(w.log)
    codes = {name: r["code"] for name, r in results.items()}
    if deadline == "short":
        # Gone before the model loads or the stream ends: the client's own DEADLINE_EXCEEDED, never INTERNAL.
        assert {codes[name] for name in (*MODEL_CALLS, "Watch") if name != "ClassifyBatch"} == {"DEADLINE_EXCEEDED"}, \
            results
        # A batch call that answers in time carries each item's own failure inside an OK call.
        assert codes["ClassifyBatch"] == "DEADLINE_EXCEEDED" or \
            all("reason" in item for item in results["ClassifyBatch"]["items"]), results
        assert set(codes.values()) <= {"OK", "DEADLINE_EXCEEDED"}, results
        return
    assert set(codes.values()) == {"OK"}, results
    for name in ("Rotate", "RotateStream"):
        assert (results[name]["width"], results[name]["height"]) == (48, 64), results[name]
    for name in ("Rotate auto", "RotateStream auto"):
        assert results[name]["bytes"] > 0 and results[name]["decided_by"], results[name]
    assert results["Classify"]["label"] in LABELS and results["ClassifyStream"]["label"] in LABELS
    # Each item of a batch as its own call: the good one answered, the bad one failed with its reason.
    assert results["RotateBatch"]["items"][0]["width"] == 48, results["RotateBatch"]
    assert results["RotateBatch"]["items"][1] == {"reason": "UNSUPPORTED_FORMAT"}
    assert results["ClassifyBatch"]["items"][0]["label"] in LABELS
    assert results["ClassifyBatch"]["items"][1] == {"reason": "EMPTY_IMAGE"}
    assert results["RecognizeFace"]["classification"] in LABELS
    turned = np.rot90(np.arange(6, dtype=np.uint8).reshape(2, 3))  # counter-clockwise
    assert (results["RotateImage"]["width"], results["RotateImage"]["height"]) == (2, 3)
    assert results["RotateImage"]["data"] == turned.ravel().tolist()
    assert results["Check"]["status"] == "SERVING" and results["Watch"]["statuses"] == ["SERVING"]
    assert results["ServerReflectionInfo"]["services"] == SERVICES


@pytest.mark.slow
def test_the_seeds_legacy_client_on_a_fresh_worker(tmp_path, photo):
    stubs = generate([CLIENTS / "legacy_abimage.proto"], tmp_path)
    with worker_process() as w:
        results = run_client([sys.executable, str(CLIENTS / "legacy_client.py"), w.address, str(photo)],
                             {"PYTHONPATH": str(stubs)}, tmp_path)
        assert_quiet_log(w.log)
    assert results["RecognizeFace"] == {"code": "OK", "classification": results["RecognizeFace"].get(
        "classification")} and results["RecognizeFace"]["classification"] in LABELS, results
    rotated = results["RotateImage"]
    assert rotated["code"] == "OK", rotated
    sent = np.frombuffer(bytes.fromhex(rotated["sent"]), np.uint8).reshape(50, 37)
    assert (rotated["color"], rotated["width"], rotated["height"]) == (False, 50, 37)
    assert bytes.fromhex(rotated["data"]) == np.rot90(sent).tobytes()


@pytest.mark.slow
def test_node_grpc_js_on_a_fresh_worker(tmp_path, photo):
    modules = os.environ.get(NODE_MODULES_ENV)
    if not modules or shutil.which("node") is None:
        pytest.skip(f"needs node and {NODE_MODULES_ENV}=DIR/node_modules, where DIR had "
                    "`npm install @grpc/grpc-js @grpc/proto-loader` (.ci/run does this)")
    with worker_process() as w:
        results = run_client(["node", str(CLIENTS / "client.js"), w.address, str(ROOT / "proto"), str(photo),
                              str(GOOGLEAPIS)],
                             {"NODE_PATH": modules}, tmp_path)
        assert_quiet_log(w.log)
    assert results["Rotate"] == {"code": "OK", "width": 48, "height": 64, "bytes": results["Rotate"].get("bytes")}
    assert results["Rotate"]["bytes"] > 0
    assert results["Classify"]["code"] == "OK" and results["Classify"]["label"] in LABELS, results
