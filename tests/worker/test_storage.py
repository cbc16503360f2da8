"""Reference mode's file access (worker/storage.py): only under the roots, every escape refused, writes atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.errors import Reason, TooLarge
from worker.storage import NotFound, Roots, StorageError


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, out, elsewhere = tmp_path / "data", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (data, out, elsewhere):
        folder.mkdir()
    (data / "a.jpg").write_bytes(b"image a")
    (elsewhere / "secret.jpg").write_bytes(b"secret")
    return data, out, elsewhere


def test_reads_under_a_data_root_and_writes_under_an_output_root(tree) -> None:
    data, out, _ = tree
    roots = Roots.of([data], [out])
    assert roots.read_file(str(data / "a.jpg"), 1024) == b"image a"
    roots.write_file(str(out / "deep" / "er" / "a.jpg"), b"rotated")
    assert (out / "deep" / "er" / "a.jpg").read_bytes() == b"rotated"
    assert not [p for p in out.rglob("*") if p.name.endswith(".workertmp")]


@pytest.mark.parametrize("escape", ["dotdot", "symlink", "absolute", "relative", "symlinked-folder"])
def test_every_escape_is_refused(tree, escape: str) -> None:
    data, out, elsewhere = tree
    (data / "link.jpg").symlink_to(elsewhere / "secret.jpg")
    (data / "sub").symlink_to(elsewhere)
    path = {"dotdot": f"{data}/../elsewhere/secret.jpg", "symlink": str(data / "link.jpg"),
            "absolute": str(elsewhere / "secret.jpg"), "relative": "elsewhere/secret.jpg",
            "symlinked-folder": str(data / "sub" / "secret.jpg")}[escape]
    with pytest.raises(StorageError) as e:
        Roots.of([data], [out]).read_file(path, 1024)
    assert e.value.status == "PERMISSION_DENIED" and e.value.reason == Reason.OUTSIDE_ROOTS


@pytest.mark.parametrize("escape", ["dotdot", "symlinked-folder", "absolute"])
def test_no_write_escapes_the_output_root(tree, escape: str) -> None:
    data, out, elsewhere = tree
    (out / "sub").symlink_to(elsewhere)
    path = {"dotdot": f"{out}/../elsewhere/x.jpg", "symlinked-folder": str(out / "sub" / "x.jpg"),
            "absolute": str(elsewhere / "x.jpg")}[escape]
    with pytest.raises(StorageError) as e:
        Roots.of([data], [out]).write_file(path, b"x")
    assert e.value.reason == Reason.OUTSIDE_ROOTS
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.jpg"]


def test_a_folder_made_by_the_write_cannot_lead_outside(tree) -> None:
    data, out, elsewhere = tree
    (out / "a").symlink_to(elsewhere)
    with pytest.raises(StorageError):
        Roots.of([data], [out]).write_file(str(out / "a" / "b" / "x.jpg"), b"x")  # makedirs would go through a
    assert not (elsewhere / "b").exists()


def test_references_off_without_roots(tree) -> None:
    data, _, _ = tree
    with pytest.raises(StorageError) as e:
        Roots().read_file(str(data / "a.jpg"), 1024)
    assert e.value.reason == Reason.REFERENCES_OFF and not Roots().enabled


def test_a_root_given_as_a_file_is_refused(tree) -> None:
    data, _, _ = tree
    with pytest.raises(ValueError, match="is not a folder"):
        Roots.of([data / "a.jpg"], [])


def test_missing_non_regular_and_oversized_inputs(tree) -> None:
    data, out, _ = tree
    roots = Roots.of([data], [out])
    with pytest.raises(NotFound):
        roots.read_file(str(data / "nope.jpg"), 1024)
    os.mkfifo(data / "fifo.jpg")
    with pytest.raises(StorageError) as e:
        roots.read_file(str(data / "fifo.jpg"), 1024)
    assert e.value.reason == Reason.FILE_UNREADABLE
    with pytest.raises(TooLarge):
        roots.read_file(str(data / "a.jpg"), 3)
