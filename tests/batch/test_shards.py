"""`batch run --shard K/N`: which rows a share runs, decided from the whole manifest (fast layer: no worker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.errors import UsageError
from batch.index import RunIndex
from batch.manifest import read_rows
from batch.shard import Shard, parse_shard, share_of, sharer
from tests.support.manifests import make_entangled, write_manifest


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("0/1", {}, Shard(0, 1)),
    ("2/3", {"JOB_COMPLETION_INDEX": "0"}, Shard(2, 3)),  # K/N wins over the environment
    ("4", {"JOB_COMPLETION_INDEX": "3"}, Shard(3, 4)),
    ("4", {"SLURM_ARRAY_TASK_ID": "2"}, Shard(2, 4)),
    ("4", {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10"}, Shard(1, 4)),
    ("4", {"JOB_COMPLETION_INDEX": "1", "SLURM_ARRAY_TASK_ID": "3"}, Shard(1, 4)),
    (" 1/2 ", {}, Shard(1, 2)),
])
def test_shard_forms(text: str, env: dict[str, str], expected: Shard) -> None:
    assert parse_shard(text, env) == expected


@pytest.mark.parametrize(("text", "env", "says"), [
    ("3/3", {}, "not in 0..2"),
    ("0/0", {}, "at least 1"),
    ("-1/2", {}, "K (this share's index) is not a whole number"),
    ("a/2", {}, "K (this share's index) is not a whole number"),
    ("1/x", {}, "N (the number of shares) is not a whole number"),
    ("", {}, "N (the number of shares)"),
    ("4", {}, "gives no index"),
    ("4", {"JOB_COMPLETION_INDEX": "4"}, "not in 0..3"),
    ("4", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "2"}, "not in 0..3"),
    ("4", {"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x'"),
])
def test_shard_mistakes_are_named(text: str, env: dict[str, str], says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_shard(text, env)


def test_a_key_has_one_share_on_every_machine() -> None:
    # blake2b, not Python's salted hash(): these values may never change, or resumed shards would run other rows.
    assert share_of("id:r0", 1) == 0
    assert [share_of(f"id:r{i}", 4) for i in range(8)] == [0, 0, 3, 3, 3, 2, 0, 2]
    spread = [share_of(f"id:{i}", 4) for i in range(4000)]
    assert all(800 < spread.count(k) < 1200 for k in range(4))  # about even


def _scan(manifest: Path, out: Path, shard: Shard | None) -> dict[str, tuple]:
    """What the run of ``shard`` decides for each of its rows without a call, with --out spelled as <OUT>."""
    out.mkdir(parents=True)
    index = RunIndex(out / ".index", shard.index if shard else 0)
    try:
        index.add_rows(read_rows(manifest, out), manifest, sharer(shard, out) if shard else None)
        index.name_rotations()
        decided = {}
        for s in index.scan():
            error = s.outcome.error.replace(str(out), "<OUT>") if s.outcome else None
            output = str(s.row.output_path).replace(str(out), "<OUT>") if s.row.output_path else None
            decided[s.row.id] = (output, error, s.leader, s.followed)
        assert len(decided) == index.count_share()
        return decided
    finally:
        index.close()


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shares_decide_every_row_as_one_run_does(tmp_path: Path, count: int) -> None:
    manifest = make_entangled(tmp_path, 40)
    whole = _scan(manifest, tmp_path / "whole", None)
    shares = [_scan(manifest, tmp_path / f"s{k}", Shard(k, count)) for k in range(count)]
    assert sum(len(s) for s in shares) == len(whole)  # each row in one share only
    merged = {id_: decided for s in shares for id_, decided in s.items()}
    assert merged == whole
    # The rows that depend on each other are in one share, and the dependence was really there.
    for group in (("many90", "many180", "many270"), ("dup0", "dup1", "dup2"), ("gone0", "gone1"),
                  ("clash-a", "clash-b"), ("r0", "over-default")):
        assert len({k for k, s in enumerate(shares) if set(group) & set(s)}) == 1, group
    assert whole["dup1"][2] == "dup0" and whole["dup0"][3]
    assert whole["many90"][0].endswith("many.r90.jpg")
    assert "also the output of row 'clash-a'" in whole["clash-b"][1]
    assert "also the output of row 'r0'" in whole["over-default"][1]
    assert "not a multiple of 90" in whole["bad-rotation"][1]


def test_a_share_is_the_same_rows_whatever_the_out(tmp_path: Path) -> None:
    manifest = make_entangled(tmp_path, 30)
    assert (_scan(manifest, tmp_path / "here", Shard(1, 3)).keys()
            == _scan(manifest, tmp_path / "elsewhere" / "deeper", Shard(1, 3)).keys())


def test_shard_on_the_command_line_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows that need no call: no worker starts, so the run is in-process and quick.
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": f"x{i}", "path": f"missing{i}.jpg", "op": "blur"} for i in range(12)])
    monkeypatch.chdir(tmp_path)
    for var in ("BATCH_SHARD", "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "BATCH_WORKER"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    refused = runner.invoke(main, ["run", str(manifest), "--shard", "3", "--quiet"])
    assert refused.exit_code == 2 and "gives no index" in refused.output
    assert not (tmp_path / "results").exists()

    seen: dict[str, set[str]] = {}
    for k in range(3):
        monkeypatch.setenv("BATCH_SHARD", "3")
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(k))
        done = runner.invoke(main, ["run", str(manifest), "--quiet"])
        assert done.exit_code == 1, done.output  # every row fails (unknown op)
        out = tmp_path / "results" / "m" / f"shard-{k}-of-3"
        info = json.loads((out / "run.json").read_text())
        assert info["shard"] == {"index": k, "count": 3}
        assert info["manifest_rows"] == 12
        assert info["manifest_sha256"] == __import__("hashlib").sha256(manifest.read_bytes()).hexdigest()
        ids = {line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]}
        assert info["shard_rows"] == info["counts"]["rows"] == len(ids)
        seen[str(k)] = ids
    assert set().union(*seen.values()) == {f"x{i}" for i in range(12)}
    assert sum(map(len, seen.values())) == 12

    monkeypatch.setenv("BATCH_SHARD", "1/2")
    flag = runner.invoke(main, ["run", str(manifest), "--shard", "0/2", "--out", "flag", "--quiet"])
    info = json.loads((tmp_path / "flag" / "run.json").read_text())
    assert flag.exit_code == 1 and info["shard"] == {"index": 0, "count": 2}  # the option wins over $BATCH_SHARD

    monkeypatch.delenv("BATCH_SHARD")
    whole = runner.invoke(main, ["run", str(manifest), "--out", "whole", "--quiet"])
    info = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert whole.exit_code == 1
    assert info["shard"] is None and info["manifest_rows"] == info["shard_rows"] == 12
