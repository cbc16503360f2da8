"""The driver against broken manifests and hostile rows.

Row-level cases share one manifest and one run of the real run loop (``batch.run``) against the real
servicers in this process (``--max-message-mb 1``): each bad row must end with its own specific message while
every good row beside it succeeds. The same manifest also goes once through `batch run` against a worker
process with its memory capped: exit 1, nothing written outside --out, and the worker still serves.
Manifest-level cases each raise ``batch.ManifestError`` (`batch run`: exit 2) before any call, naming the line.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from pathlib import Path

import pytest

import batch
from tests.support.hostile import HTML, noise, png_bomb, truncated
from tests.support.images import jpeg, png_bytes, png_header
from tests.support.inprocess import in_process_worker
from tests.support.manifests import write_manifest
from tests.support.processes import cap_memory, rotates, run_batch, serving, worker_process
from tests.support.results import by_id, results

SPACES = "photos/my holiday — été ü 東京.jpg"  # spaces, punctuation and non-ASCII letters in a path

# (id, path, op, rotation, output, expected: "ok" or words the row's error must contain)
ROWS = [
    ("ok-rotate", "img/good.jpg", "rotate", "90", "", "ok"),
    ("ok-classify", "img/good.jpg", "classify", "", "", "ok"),
    ("ok-spaces-non-ascii", SPACES, "rotate", "180", "", "ok"),
    ("ok-minus-90", "img/good.jpg", "rotate", "-90", "minus90.jpg", "ok"),
    ("ok-450", "img/good.jpg", "rotate", "450", "r450.jpg", "ok"),
    ("rotation 45", "img/good.jpg", "rotate", "45", "", ["rotation 45", "multiple of 90"]),
    ("rotation abc", "img/good.jpg", "rotate", "abc", "", ["'abc'", "whole number"]),
    ("rotation empty", "img/good.jpg", "rotate", "", "", ["rotation is required"]),
    ("rotation 1e9", "img/good.jpg", "rotate", "1e9", "", ["'1e9'", "whole number"]),
    ("rotation 10**30", "img/good.jpg", "rotate", "1" + "0" * 30, "", ["out of range"]),
    ("unknown op", "img/good.jpg", "resize", "90", "", ["unknown op 'resize'", "rotate or classify"]),
    ("empty op", "img/good.jpg", "", "90", "", ["op is empty"]),
    ("empty path", "", "rotate", "90", "", ["path is empty"]),
    ("missing file", "img/nope.jpg", "rotate", "90", "", ["file not found", "nope.jpg"]),
    ("a directory", "img", "classify", "", "", ["is a directory"]),
    ("symlink loop", "img/loop.jpg", "rotate", "90", "", ["symlink loop", "loop.jpg"]),
    ("empty file", "img/empty.jpg", "rotate", "90", "", ["INVALID_ARGUMENT", "empty"]),
    ("truncated JPEG", "img/truncated.jpg", "rotate", "90", "", ["INVALID_ARGUMENT", "JPEG", "truncated"]),
    ("truncated PNG", "img/truncated.png", "classify", "", "", ["INVALID_ARGUMENT", "PNG"]),
    ("random bytes named .jpg", "img/noise.jpg", "rotate", "90", "", ["INVALID_ARGUMENT", "not a supported image"]),
    ("HTML page named .png", "img/page.png", "classify", "", "", ["INVALID_ARGUMENT", "not a supported image"]),
    ("decompression bomb (400 MP 1-bit PNG)", "img/bomb.png", "rotate", "90", "",
     ["INVALID_ARGUMENT", "20000x20000", "--max-pixels"]),
    ("PNG declaring 100,000 x 100,000", "img/huge.png", "classify", "", "",
     ["INVALID_ARGUMENT", "100000x100000", "--max-pixels"]),
    ("image over --max-message-mb (1 MiB here)", "img/big.jpg", "rotate", "90", "",
     ["RESOURCE_EXHAUSTED", "--max-message-mb"]),
    ("output escaping --out with ..", "img/good.jpg", "rotate", "90", "../../escaped.jpg", ["escapes --out"]),
    ("absolute output outside --out", "img/good.jpg", "rotate", "90", "/tmp/escaped.jpg", ["escapes --out"]),
    ("output equal to its input", "out/inside.jpg", "rotate", "90", "inside.jpg", ["refusing to overwrite an input"]),
    ("output with another format's extension: converted", "img/good.jpg", "rotate", "90", "converted.png", "ok"),
    ("output with an extension no image format has", "img/good.jpg", "rotate", "90", "notes.txt",
     ["extension .txt", "names no format"]),
    ("output without an extension", "img/good.jpg", "rotate", "90", "noext", ["has no extension"]),
    ("two rows, one output (first)", "img/good.jpg", "rotate", "180", "same.jpg", "ok"),
    ("two rows, one output (second)", "img/other.jpg", "rotate", "180", "same.jpg",
     ["also the output of row 'two rows, one output (first)'"]),
]


def _lay_out(folder):
    img = folder / "img"
    img.mkdir()
    (img / "good.jpg").write_bytes(jpeg(64, 48, seed=1))
    (img / "other.jpg").write_bytes(jpeg(64, 48, seed=2))
    spaced = folder / SPACES
    spaced.parent.mkdir()
    spaced.write_bytes(jpeg(40, 30, seed=3))
    os.symlink("loop.jpg", img / "loop.jpg")
    (img / "empty.jpg").write_bytes(b"")
    (img / "truncated.jpg").write_bytes(truncated(jpeg(256, 256, seed=4), 0.5))
    (img / "truncated.png").write_bytes(truncated(png_bytes((256, 256)), 0.5))
    (img / "noise.jpg").write_bytes(noise(4096))
    (img / "page.png").write_bytes(HTML)
    (img / "bomb.png").write_bytes(png_bomb())
    (img / "huge.png").write_bytes(png_header(100_000, 100_000, idat=zlib.compress(b"\0" * 64)))
    (img / "big.jpg").write_bytes(jpeg(64, 64) + noise(int(1.5 * 2**20)))  # a JPEG with 1.5 MiB of trailing data
    (folder / "out").mkdir()
    (folder / "out" / "inside.jpg").write_bytes(jpeg(32, 32, seed=5))


def _mixed_manifest(folder):
    _lay_out(folder)
    columns = ("id", "path", "op", "rotation", "output")
    return write_manifest(folder / "manifest.csv", [dict(zip(columns, row, strict=False)) for row in ROWS])


@pytest.fixture(scope="module")
def row_results(tmp_path_factory):
    """The mixed manifest through batch.run against an in-process worker with a 1 MiB message limit;
    (rows by id, folder)."""
    folder = tmp_path_factory.mktemp("rows")
    manifest = _mixed_manifest(folder)
    with in_process_worker(max_message_mb=1, threads=2) as w:
        table = batch.run(manifest, out=folder / "out", workers=[w.address], retries=2)
    return {r["id"]: r for r in table.to_dict("records")}, folder


@pytest.mark.timeout(240)
@pytest.mark.parametrize("id_, expected", [(r[0], r[5]) for r in ROWS], ids=[r[0] for r in ROWS])
def test_row_gets_its_result_and_the_rest_go_on(row_results, record_property, id_, expected):
    rows, folder = row_results
    row = rows.get(id_)
    assert row is not None, f"no result row for {id_!r}"
    record_property("expected", "status ok" if expected == "ok" else "error naming " + ", ".join(map(repr, expected)))
    outcome = f": {row['error']}" if row["error"] else f" → {row['output'] or 'label ' + row['label']}"
    record_property("observed", row["status"] + outcome)
    if expected == "ok":
        assert row["status"] == "ok", row["error"]
        if row["op"] == "rotate":
            assert Path(row["output"]).is_file() and (folder / "out") in Path(row["output"]).parents
    else:
        assert row["status"] == "error" and row["reason"]
        for word in expected:
            assert word in row["error"]


@pytest.mark.slow  # a real worker process, memory capped, and `batch run`
@pytest.mark.timeout(240)
def test_mixed_run_exits_1_with_one_row_each_and_the_worker_still_serves(tmp_path, record_property):
    """All rows of the mixed manifest through `batch run`: one result each, exit 1, nothing written outside --out,
    a worker process (memory capped) still serving"""
    manifest = _mixed_manifest(tmp_path)
    with worker_process("--max-message-mb", "1", "--threads", "2") as w:
        cap_memory(w)
        done = run_batch(manifest, "--worker", w.address, "--out", tmp_path / "out", "--retries", "2", "--quiet",
                         timeout=180)
        rows = by_id(results(tmp_path / "out"))
        record_property("expected", "exit 1; one result per row; no file outside --out; worker SERVING")
        record_property("observed", f"exit {done.returncode}; {len(rows)} results for {len(ROWS)} rows; "
                                    f"summary: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''}")
        assert done.returncode == 1, done.stderr
        assert sorted(rows) == sorted(r[0] for r in ROWS)
        reasons = Counter(r["reason"] for r in rows.values() if r["status"] != "ok")
        top = max(reasons.values())  # the summary says why most rows failed (ties in either order)
        assert any(f"failed: {top} {reason}" in done.stdout for reason, n in reasons.items() if n == top)
        assert not (tmp_path.parent / "escaped.jpg").exists() and not os.path.exists("/tmp/escaped.jpg")
        assert (tmp_path / "out" / "inside.jpg").read_bytes() == jpeg(32, 32, seed=5)  # the input not overwritten
        assert serving(w.address) and rotates(w.address)
        assert w.proc.poll() is None


# --- manifest-level problems: exit 2 before any call --------------------------------------------

MANIFESTS = [
    ("missing path and op columns", b"file,operation\nimg/good.jpg,rotate\n",
     ["line 1", "missing required columns path and op"]),
    ("missing op column", b"path,rotation\nimg/good.jpg,90\n", ["line 1", "missing required column op"]),
    ("duplicate ids", b"id,path,op,rotation\na,img/good.jpg,rotate,90\nb,img/good.jpg,classify,\n"
                      b"a,img/good.jpg,rotate,180\n", ["line 4", "duplicate id 'a'", "line 2"]),
    ("non-UTF-8 manifest (Latin-1)", "path,op,rotation\nimg/caf\u00e9.jpg,rotate,90\n".encode("latin-1"),
     ["line 2", "not UTF-8"]),
    ("UTF-16 manifest", "path,op,rotation\nimg/good.jpg,rotate,90\n".encode("utf-16"), ["line 1", "not UTF-8"]),
    ("empty manifest", b"", ["empty"]),
    ("an image passed as the manifest", None, ["not UTF-8"]),
    ("unterminated quote", b'path,op,rotation\n"img/good.jpg,rotate,90\n', ["not valid CSV"]),
    ("header column twice", b"path,op,path\nimg/good.jpg,rotate,x\n", ["line 1", "'path' appears twice"]),
]


# Nothing listens here: a manifest-level problem must stop the run before it needs a worker at all.
NO_WORKER = "127.0.0.1:1"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("content, expected", [m[1:] for m in MANIFESTS], ids=[m[0] for m in MANIFESTS])
def test_manifest_problem_exits_2_before_any_call(tmp_path, record_property, content, expected):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "good.jpg").write_bytes(jpeg(32, 32))
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(png_bytes() if content is None else content)
    with pytest.raises(batch.ManifestError) as raised:
        batch.run(manifest, out=tmp_path / "out", workers=[NO_WORKER])
    record_property("expected", "ManifestError (batch run: exit 2) naming " + ", ".join(map(repr, expected)))
    record_property("observed", f"ManifestError: {raised.value}")
    for word in expected:
        assert word in str(raised.value)
    assert results(tmp_path / "out") == []
    assert not (tmp_path / "out" / "rotated").exists()


@pytest.mark.timeout(120)
def test_bom_crlf_and_blank_lines_work(tmp_path, record_property):
    """A UTF-8 BOM, Windows line endings and blank lines: every row runs"""
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(32, 32, seed=i))
    rows = [{"id": "a", "path": "img/0.jpg", "op": "rotate", "rotation": 90}, None,
            {"id": "b", "path": "img/1.jpg", "op": "classify"}, {"id": "c", "path": "img/2.jpg", "op": "rotate",
                                                                 "rotation": 270}, None]
    manifest = write_manifest(tmp_path / "manifest.csv", rows, ("id", "path", "op", "rotation"), newline="\r\n",
                              bom=True)
    with in_process_worker() as w:
        table = batch.run(manifest, out=tmp_path / "out", workers=[w.address])
    statuses = dict(zip(table["id"], table["status"], strict=True))
    record_property("expected", "rows a, b, c ok")
    record_property("observed", ", ".join(f"{k} {v}" for k, v in statuses.items()))
    assert statuses == {"a": "ok", "b": "ok", "c": "ok"}
    assert (tmp_path / "out" / "rotated" / "img" / "0.jpg").is_file()
