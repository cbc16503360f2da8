"""Inputs and outputs that would hang, exhaust or mislead the driver: each is one row's error, the rest of the
batch goes on, and outputs never leave --out. Through the real `batch run` against a worker on loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.support.images import jpeg
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch
from tests.support.results import by_id, results

pytestmark = pytest.mark.slow


def test_non_regular_and_oversized_inputs_are_row_errors(tmp_path: Path, worker, record_property) -> None:
    """A FIFO, /dev/zero, /dev/urandom, a socket and a 2.5 GiB file: each one row's error, the good row ok"""
    (tmp_path / "good.jpg").write_bytes(jpeg(32, 24))
    os.mkfifo(tmp_path / "fifo.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock.jpg"))
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(5 * 2**29)  # 2.5 GiB, sparse: costs no disk
    rows = {"fifo": tmp_path / "fifo.jpg", "zero": "/dev/zero", "urandom": "/dev/urandom",
            "sock": tmp_path / "sock.jpg", "huge": tmp_path / "huge.jpg", "good": tmp_path / "good.jpg"}
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": i, "path": str(p), "op": "rotate", "rotation": "90"} for i, p in rows.items()])
    try:
        done = run_batch(manifest, "--worker", worker.address, "--out", tmp_path / "out", "--quiet", timeout=60)
    finally:
        listener.close()
    assert done.returncode == 1, done.stderr
    got = by_id(results(tmp_path / "out"))
    record_property("expected", "exit 1 at once; 'not a regular file (…)' per row, the 2.5 GiB file refused by "
                                "its declared size before its bytes; good row ok")
    record_property("observed", f"exit {done.returncode}; " + "; ".join(f"{i}: {r['error'] or r['status']}"
                                                                       for i, r in got.items()))
    assert got["fifo"]["error"] == f"not a regular file (a FIFO): {tmp_path / 'fifo.jpg'}"
    assert got["zero"]["error"] == "not a regular file (a character device): /dev/zero"
    assert got["urandom"]["error"] == "not a regular file (a character device): /dev/urandom"
    assert got["sock"]["error"] == f"not a regular file (a socket): {tmp_path / 'sock.jpg'}"
    # streamed, and refused on its first message, by its declared size: never read whole
    assert got["huge"]["error"] == ("RESOURCE_EXHAUSTED: image is 2560.0 MiB, over this worker's limit of 512 MiB "
                                    "(worker serve --max-image-mb)")
    assert got["huge"]["attempts"] == "1"
    assert got["good"]["status"] == "ok"


def test_a_linked_folder_inside_out_never_takes_outputs_outside(tmp_path: Path, worker, record_property) -> None:
    """--out/rotated is a link to a folder elsewhere: that row fails, nothing is written outside --out"""
    (tmp_path / "a.jpg").write_bytes(jpeg(32, 24))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "rotated").symlink_to(elsewhere)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "default", "path": "a.jpg", "op": "rotate", "rotation": "90"},
        {"id": "inside", "path": "a.jpg", "op": "rotate", "rotation": "180", "output": "kept/a.jpg"}])
    done = run_batch(manifest, "--worker", worker.address, "--out", out, "--quiet")
    assert done.returncode == 1, done.stderr
    got = by_id(results(out))
    record_property("expected", "the linked row fails naming where the link leads; the other row ok; nothing outside")
    record_property("observed", f"{got['default']['error']}; other row {got['inside']['status']}; "
                                f"{len(list(elsewhere.iterdir()))} files outside")
    assert got["default"]["error"] == (f"output {out / 'rotated' / 'a.jpg'} would be written outside --out: "
                                       f"{out / 'rotated'} leads to {elsewhere}")
    assert got["inside"]["status"] == "ok" and (out / "kept" / "a.jpg").is_file()
    assert list(elsewhere.iterdir()) == []
