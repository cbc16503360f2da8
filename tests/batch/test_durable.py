"""Group commit and atomic files (batch/durable.py) on real files: seconds, no processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batch.durable import TEMP_SUFFIX, GroupCommit, atomic_file


def _entry(i: int) -> tuple:
    return (f"row {i}", "ok", {"id": str(i)})


def _output(folder: Path, i: int) -> str:
    path = folder / f"{i}.jpg"
    path.write_bytes(b"rotated")
    return str(path)


# --- atomic_file ---------------------------------------------------------------------------------------------


def test_atomic_file_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")
    with atomic_file(path, "w") as f:
        f.write("new")
        assert path.read_text() == "old"  # a reader sees the old file until the rename
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.jpg"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path, durable=False) as f:
        f.write(b"half")
        raise RuntimeError("the disk is full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


def test_a_crash_leftover_temporary_is_replaced_by_the_next_write(tmp_path):
    path = tmp_path / "out.jpg"
    (tmp_path / f".out.jpg{TEMP_SUFFIX}").write_bytes(b"left by a killed driver")
    with atomic_file(path, durable=False) as f:
        f.write(b"whole")
    assert path.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


# --- GroupCommit ---------------------------------------------------------------------------------------------


def test_flush_commits_every_row_once_in_order(tmp_path):
    groups: list[list] = []
    commit = GroupCommit(groups.append)
    try:
        for i in range(5):
            commit.add(_entry(i), _output(tmp_path, i) if i % 2 else None)  # classify rows write nothing
        assert groups == []  # nothing is journaled before its group is durable
        commit.flush()
        commit.flush()  # nothing new: no empty group
    finally:
        commit.close()
    assert groups == [[_entry(i) for i in range(5)]]


def _run_until(commit: GroupCommit, groups: list, rows: int, timeout: float) -> float:
    """Run ``commit`` until ``rows`` rows are committed; how long that took."""

    async def go() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.create_task(commit.run())
        try:
            async with asyncio.timeout(timeout):
                while sum(map(len, groups)) < rows:
                    await asyncio.sleep(0.005)
            return loop.time() - start
        finally:
            task.cancel()

    return asyncio.run(go())


def test_a_full_group_commits_without_waiting_for_the_interval(tmp_path):
    groups: list[list] = []
    commit = GroupCommit(groups.append, interval=60, max_rows=3)
    for i in range(3):
        commit.add(_entry(i), _output(tmp_path, i))
    try:
        assert _run_until(commit, groups, 3, timeout=10) < 5
    finally:
        commit.close()
    assert groups == [[_entry(0), _entry(1), _entry(2)]]


def test_a_partial_group_commits_after_the_interval_and_groups_keep_their_order(tmp_path):
    groups: list[list] = []
    commit = GroupCommit(groups.append, interval=0.05, max_rows=1000)
    try:
        commit.add(_entry(0), _output(tmp_path, 0))
        _run_until(commit, groups, 1, timeout=10)
        commit.add(_entry(1), None)
        commit.add(_entry(2), _output(tmp_path, 2))
        commit.flush()  # the end of a run: the rest now
    finally:
        commit.close()
    assert groups == [[_entry(0)], [_entry(1), _entry(2)]]
