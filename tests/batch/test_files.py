"""The driver's writes of outputs (batch/files.py, batch/durable.py) on real files and links: the folder is
checked on what was opened, every row, so no link (set up before the run or swapped during it) takes an output
outside --out, and the file lands in the very folder that was checked. Seconds, no processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch.durable import TEMP_SUFFIX, atomic_file, open_within
from batch.files import forget_folders, output_folder, write_output
from batch.results import Reason, RowFailed


@pytest.fixture
def places(tmp_path: Path):
    """(--out, a folder outside it, --out resolved); what the run learnt of folders forgotten afterwards."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    yield out, elsewhere, os.path.realpath(out)
    forget_folders()


def _refused(output: Path, root: str) -> RowFailed:
    with pytest.raises(RowFailed) as caught:
        write_output(output, b"rotated", root)
    return caught.value


def test_an_output_is_written_whole_over_the_old_one_with_no_temporary_left(places):
    out, _elsewhere, root = places
    write_output(out / "a" / "b" / "x.jpg", b"first", root)  # folders made as needed
    write_output(out / "a" / "b" / "x.jpg", b"second", root)
    assert (out / "a" / "b" / "x.jpg").read_bytes() == b"second"
    assert os.listdir(out / "a" / "b") == ["x.jpg"]


def test_a_folder_linked_outside_out_is_refused_naming_where_it_leads(places):
    out, elsewhere, root = places
    (out / "rotated").symlink_to(elsewhere)
    failed = _refused(out / "rotated" / "x.jpg", root)
    assert failed.reason == Reason.OUTPUT_OUTSIDE_OUT
    assert str(failed) == (f"output {out / 'rotated' / 'x.jpg'} would be written outside --out: "
                           f"{out / 'rotated'} leads to {elsewhere}")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(RowFailed):  # the stream's check (batch/stream.py) is the same
        output_folder(out / "rotated" / "y.jpg", root)


def test_no_folder_is_made_outside_out_through_a_link(places):
    """An output a few folders below a link that leads out: refused before any folder is made there."""
    out, elsewhere, root = places
    (out / "rotated").symlink_to(elsewhere)
    failed = _refused(out / "rotated" / "a" / "b" / "x.jpg", root)
    assert failed.reason == Reason.OUTPUT_OUTSIDE_OUT
    assert str(failed).endswith(f"{out / 'rotated' / 'a' / 'b'} leads to {elsewhere / 'a' / 'b'}")
    assert list(elsewhere.iterdir()) == []


def test_a_dangling_link_on_the_way_is_never_made_into_a_folder(places):
    """A link to a folder that does not exist yet: the row fails, and no folder appears where it points."""
    out, elsewhere, root = places
    (out / "rotated").symlink_to(elsewhere / "later")
    failed = _refused(out / "rotated" / "x.jpg", root)
    assert failed.reason == Reason.OUTPUT_UNWRITABLE
    assert list(elsewhere.iterdir()) == []


def test_a_folder_swapped_for_a_link_between_rows_is_refused_at_the_next_row(places):
    """Nothing learnt at the first row lets the second through: the check is made on every row."""
    out, elsewhere, root = places
    write_output(out / "rotated" / "1.jpg", b"one", root)
    (out / "rotated").rename(out / "moved")
    (out / "rotated").symlink_to(elsewhere)
    assert _refused(out / "rotated" / "2.jpg", root).reason == Reason.OUTPUT_OUTSIDE_OUT
    assert list(elsewhere.iterdir()) == []


def test_a_folder_moved_outside_out_and_linked_back_is_refused(places):
    """The same folder (same inode) reached through a link once it has been moved outside: what counts is
    where it is now, not which folder it is."""
    out, elsewhere, root = places
    write_output(out / "rotated" / "1.jpg", b"one", root)
    (out / "rotated").rename(elsewhere / "rotated")
    (out / "rotated").symlink_to(elsewhere / "rotated")
    assert _refused(out / "rotated" / "2.jpg", root).reason == Reason.OUTPUT_OUTSIDE_OUT
    assert os.listdir(elsewhere / "rotated") == ["1.jpg"]


def test_a_file_lands_in_the_folder_that_was_checked_even_if_its_path_is_swapped_after(places):
    """The check and the write are on one open folder: a link swapped in between is never followed."""
    out, elsewhere, root = places
    (out / "rotated").mkdir()
    fd, outside = open_within(str(out / "rotated"), root)
    try:
        assert outside is None
        (out / "rotated").rename(out / "checked")
        (out / "rotated").symlink_to(elsewhere)
        with atomic_file("x.jpg", durable=True, dir_fd=fd) as f:
            f.write(b"rotated")
    finally:
        os.close(fd)
    assert (out / "checked" / "x.jpg").read_bytes() == b"rotated"
    assert list(elsewhere.iterdir()) == []
    assert os.listdir(out / "checked") == ["x.jpg"]  # no temporary left


def test_a_folder_removed_during_the_run_is_made_again(places):
    out, _elsewhere, root = places
    write_output(out / "rotated" / "1.jpg", b"one", root)
    (out / "rotated" / "1.jpg").unlink()
    (out / "rotated").rmdir()  # remembered as made: the write finds it gone, makes it and checks it again
    write_output(out / "rotated" / "2.jpg", b"two", root)
    assert (out / "rotated" / "2.jpg").read_bytes() == b"two"


def test_a_folder_that_cannot_be_made_is_the_rows_error(places):
    out, _elsewhere, root = places
    (out / "taken").write_bytes(b"a file, not a folder")
    failed = _refused(out / "taken" / "x.jpg", root)
    assert failed.reason == Reason.OUTPUT_UNWRITABLE
    assert str(failed).startswith(f"cannot write output {out / 'taken' / 'x.jpg'}: ")


def test_a_crash_leftover_temporary_in_the_folder_is_replaced(places):
    out, _elsewhere, root = places
    (out / "rotated").mkdir()
    (out / "rotated" / f".x.jpg{TEMP_SUFFIX}").write_bytes(b"left by a killed driver")
    write_output(out / "rotated" / "x.jpg", b"whole", root)
    assert os.listdir(out / "rotated") == ["x.jpg"]


def test_without_proc_the_folder_is_resolved_by_its_path(places, monkeypatch):
    """No /proc mounted (a bare container): the check falls back to the folder's path resolved, as exact as
    before this check was made on the open folder."""
    out, elsewhere, root = places
    (out / "rotated").symlink_to(elsewhere)
    (out / "kept").mkdir()

    readlink = os.readlink

    def no_proc(path, *args, **kwargs):  # os.path.realpath reads the links on the way itself
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", no_proc)
    assert _refused(out / "rotated" / "x.jpg", root).reason == Reason.OUTPUT_OUTSIDE_OUT
    write_output(out / "kept" / "x.jpg", b"rotated", root)
    assert (out / "kept" / "x.jpg").read_bytes() == b"rotated"
