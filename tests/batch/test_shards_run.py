"""Three `batch run --shard K/3` processes of one manifest at once, one of them SIGKILLed and run again, make
exactly the rows and outputs of one unsharded run: same names, same bytes, each row once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.results import COLUMNS, TableReader
from tests.support.manifests import make_entangled
from tests.support.processes import run_batch, start_batch, wait_for
from tests.support.results import files_under, results, stray_temporaries

pytestmark = pytest.mark.slow

# Columns that say when, where and how fast, not what: they differ between any two runs.
VOLATILE = ("attempts", "latency_ms", "worker", "finished_at")
PLAIN_ROWS = 1800


def comparable(rows: list[dict[str, str]], out: Path) -> dict[str, dict[str, str]]:
    """Rows by id, --out spelled <OUT> (outputs and errors name it) and the volatile columns left out."""
    return {r["id"]: {k: v.replace(str(out), "<OUT>") for k, v in r.items() if k not in VOLATILE} for r in rows}


def outputs(out: Path) -> dict[str, bytes]:
    """The images a run wrote in ``out``, by name relative to it."""
    return {name: data for name, data in files_under(out).items() if name.endswith(".jpg")}


def journaled(out: Path) -> int:
    path = out / "results.csv"
    return max(0, len(path.read_bytes().splitlines()) - 1) if path.exists() else 0


def test_three_shards_one_killed_make_one_run(tmp_path: Path) -> None:
    # Each share far above one group commit (batch/durable.py: at most 256 rows, or 0.1 s of them), so that the
    # kill below lands with rows of shard 1 left: with 200 a share, the whole share was once journaled at once.
    manifest = make_entangled(tmp_path, PLAIN_ROWS)
    whole = tmp_path / "whole"
    done = run_batch(manifest, "--out", whole, "--quiet", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the manifest's bad rows fail
    expected = comparable(results(whole), whole)
    assert len(expected) == PLAIN_ROWS + 14

    outs = [tmp_path / f"shard-{k}" for k in range(3)]
    procs = [start_batch(manifest, "--shard", f"{k}/3", "--out", out, "--quiet", log=tmp_path / f"s{k}.log")
             for k, out in enumerate(outs)]
    try:
        # Kill shard 1 as soon as it has journaled some rows: no chance to write its table or run.json.
        assert wait_for(lambda: journaled(outs[1]) > 0 or procs[1].poll() is not None, 120, interval=0.005)
        procs[1].send_signal(signal.SIGKILL)
        before = journaled(outs[1])
        for k in (0, 2):
            assert procs[k].wait(300) == 1, (tmp_path / f"s{k}.log").read_text()
        assert procs[1].wait(30) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not (outs[1] / "run.json").exists()  # killed mid-run, not after it
    ok_before = {r[0] for r in TableReader(outs[1]).rows() if r[COLUMNS.index("status")] == "ok"}
    assert ok_before
    time.sleep(0.5)  # its embedded worker's processes die with it (PR_SET_PDEATHSIG)

    rerun = run_batch(manifest, "--shard", "1/3", "--out", outs[1], "--quiet", timeout=300)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    infos = [json.loads((out / "run.json").read_text()) for out in outs]
    rows = infos[1]["shard_rows"]
    assert before < rows  # the kill cut the share short
    # The rerun redid only share 1's rows that the killed run had not journaled ok.
    assert infos[1]["counts"]["skipped_already_done"] == len(ok_before)
    assert infos[1]["counts"]["rows"] == rows

    got: dict[str, dict[str, str]] = {}
    for out, info in zip(outs, infos, strict=True):
        mine = comparable(results(out), out)
        assert len(mine) == info["shard_rows"] == len(results(out))  # one row per id
        assert not set(mine) & set(got), "a row in two shares"
        got.update(mine)
        assert info["manifest_rows"] == len(expected)
        assert info["manifest_sha256"] == infos[0]["manifest_sha256"]
        assert info["shard"]["count"] == 3
        # The killed shard's embedded worker, killed with it, may leave a reference write's temporary file
        # (worker/storage.py names them at random, so the rerun does not replace them): reported, not ours.
        assert not [name for name in stray_temporaries(out / "rotated")
                    if not (out == outs[1] and name.endswith(".workertmp"))]
    assert sorted(info["shard"]["index"] for info in infos) == [0, 1, 2]
    assert got == expected

    images = outputs(whole)
    sharded: dict[str, bytes] = {}
    for out in outs:
        mine = outputs(out)
        assert not set(mine) & set(sharded), "an output written by two shares"
        sharded.update(mine)
    assert sharded == images
    # `batch report` over the shards' folders: the totals of the one run, no share missing or unfinished.
    merged, one = (json.loads(CliRunner().invoke(main, ["report", "--json", "--html", str(tmp_path / f"{name}.html"),
                                                        *map(str, folders)], catch_exceptions=False).output)
                   for name, folders in (("merged", outs), ("one", [whole])))
    assert merged["rows"] == one["rows"] and merged["rows"]["total"] == len(expected)
    assert merged["shards"]["missing"] == merged["shards"]["unfinished"] == []
    assert {"rotated/many.r90.jpg", "rotated/many.r180.jpg", "rotated/many.r270.jpg", "rotated/dup.jpg",
            "clash.jpg"} <= set(images)
