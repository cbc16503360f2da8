"""Security claims, checked: the worker only sees bytes, and no model file is unpickled.

- While serving, the worker's request threads open, write, list, rename or
  delete no file: a Python audit hook installed in a real worker records every
  such event raised on a request thread while requests (including ones whose bytes
  are file paths) are answered.
- No module under ``worker/`` imports a pickle-based loader or asks numpy to
  allow pickles, and every shipped model artifact loads with pickles refused.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.support.images import jpeg
from tests.support.processes import ROOT
from worker.api import abimage_pb2 as ab
from worker.api import abimage_pb2_grpc as ab_grpc
from worker.api import imageworker_v1_pb2 as v1
from worker.api import imageworker_v1_pb2_grpc as v1_grpc
from worker.local import LocalServer, python_command

# File-system audit events (PEP 578) a request handler has no business raising.
WATCHED = ("open", "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.listdir", "os.scandir", "os.truncate",
           "os.chmod", "os.symlink", "os.link", "shutil.copyfile", "shutil.rmtree", "os.chdir")

# Runs the worker with an audit hook that reports watched events raised on the
# request threads (thread_name_prefix="rpc" in worker.server) to stderr.
AUDITED_WORKER = f"""
import sys, threading
WATCHED = {WATCHED!r}
def hook(event, args):
    if event in WATCHED and threading.current_thread().name.startswith("rpc"):
        sys.stderr.write("AUDIT %s %r\\n" % (event, args[:2]))
sys.addaudithook(hook)
from worker.cli import main
sys.argv[0] = "worker"
main()
"""


def _python_internal(line: str) -> bool:
    """Reads of Python's own files (lazy imports of modules and shared libraries) are not requests' files."""
    roots = {sys.prefix, sys.base_prefix, str(ROOT / "worker")}
    return line.startswith("AUDIT open (") and any(f"('{r}" in line for r in roots) and (
        ".py" in line or ".so" in line) and ", 'w" not in line and ", 'a" not in line


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rpc_threads_touch_no_files_even_when_sent_paths(tmp_path, record_property):
    """Rotate, Classify and the legacy RPCs answered with no file opened on a request thread"""
    log = tmp_path / "worker.log"
    cmd = python_command("-c", AUDITED_WORKER, "serve", "--port", "0", "--processes", "1", "--threads", "2")
    with LocalServer(cmd, log, startup_timeout=60) as server:
        secret = tmp_path / "secret.jpg"
        secret.write_bytes(jpeg(16, 16))
        answers = []
        with grpc.insecure_channel(server.address) as ch:
            stub, legacy = v1_grpc.ImageWorkerStub(ch), ab_grpc.ABImageServiceStub(ch)
            for degrees in (90, 180, 0):
                answers.append(stub.Rotate(v1.RotateRequest(image=jpeg(48, 32), degrees=degrees), timeout=30).format)
            answers.append(stub.Classify(v1.ClassifyRequest(image=jpeg(64, 64)), timeout=60).label)
            answers.append(legacy.RotateImage(ab.ABImageRotateRequest(
                rotation=1, image=ab.ABImage(color=False, data=bytes(12), width=4, height=3)), timeout=30).width)
            for path in (str(secret).encode(), b"/etc/passwd", b"file:///etc/passwd", b"../../../../etc/shadow"):
                for call in (lambda p=path: stub.Rotate(v1.RotateRequest(image=p, degrees=90), timeout=30),
                             lambda p=path: stub.Classify(v1.ClassifyRequest(image=p), timeout=30)):
                    with pytest.raises(grpc.RpcError) as e:
                        call()
                    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "not a supported image" in e.value.details()
    events = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("AUDIT")]
    touched = [e for e in events if not _python_internal(e)]
    record_property("observed", f"{len(answers)} good answers, 8 path-as-bytes requests refused; "
                                f"{len(touched)} file events on request threads (ignoring {len(events) - len(touched)} "
                                "reads of Python's own modules)")
    assert answers[:3] == ["JPEG"] * 3
    assert touched == []


# --- no pickle -----------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
# joblib is fine for parallel loops; its load/dump are pickle.
PICKLE_FUNCTIONS = {("joblib", "load"), ("joblib", "dump"), ("torch", "load")}


def _worker_sources() -> list[Path]:
    return [p for p in sorted((ROOT / "worker").rglob("*.py")) if "_pb2" not in p.name]


def test_worker_code_imports_no_pickle_loader(record_property):
    """No module under worker/ imports pickle, dill, shelve or marshal, calls joblib.load, or allows numpy pickles"""
    found = []
    for path in _worker_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n in PICKLE_MODULES]
            if isinstance(node, ast.ImportFrom) and node.module in ("joblib", "torch"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                          for a in node.names if (node.module, a.name) in PICKLE_FUNCTIONS]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in PICKLE_FUNCTIONS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
            for kw in node.keywords if isinstance(node, ast.Call) else []:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} allow_pickle={ast.unparse(kw.value)}")
    record_property("observed", f"{len(_worker_sources())} modules scanned, {len(found)} findings")
    assert found == []


def test_shipped_model_artifacts_load_with_pickles_refused(record_property):
    """Every shipped model artifact (worker/models/*.npz) loads with allow_pickle=False, every array read"""
    artifacts = sorted((ROOT / "worker" / "models").glob("*.npz"))
    assert artifacts, "worker/models ships at least one .npz artifact"
    arrays = 0
    for path in artifacts:
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                assert npz[name].dtype != object, f"{path.name}:{name} is an object array"
                arrays += 1
    record_property("observed", f"{len(artifacts)} artifact(s), {arrays} arrays, none needing pickle")
