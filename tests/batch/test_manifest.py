"""The manifest reader on real files: encodings, line numbers, file-level and row-level problems."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch.manifest import ManifestError, parse_rotation, read_rows
from tests.support.manifests import indexed


def write(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def rows(path: Path, out: Path | None = None):
    return list(read_rows(path, out or path.parent / "out"))


def test_bom_crlf_blank_lines_and_default_ids_by_line(tmp_path):
    m = write(tmp_path, b"\xef\xbb\xbfPath,OP,rotation\r\n\r\na.jpg,rotate,90\r\n,,\r\nb.png,Classify,\r\n")
    got = rows(m)
    assert [(r.line, r.id, r.path, r.op, r.degrees, r.error) for r in got] == [
        (3, "3", "a.jpg", "rotate", 90, None),
        (5, "5", "b.png", "classify", None, None),
    ]
    assert got[0].input_path == tmp_path / "a.jpg"
    assert got[0].output_path == tmp_path / "out" / "rotated" / "a.jpg"


def test_quoted_newline_keeps_the_start_line_of_the_record(tmp_path):
    m = write(tmp_path, 'path,op,id\n"we\nird.jpg",classify,x\nc.jpg,classify,\n')
    assert [(r.line, r.id, r.path) for r in rows(m)] == [(2, "x", "we\nird.jpg"), (4, "4", "c.jpg")]


@pytest.mark.parametrize(("text", "line", "words"), [
    (b"path,op\na.jpg,rotate\n\xff\xfeb.jpg,classify\n", 3, "not UTF-8"),
    ("path,rotation\na.jpg,90\n", 1, "missing required column op"),
    ("\n\nfile,operation\n", 3, "missing required columns path and op"),
    ("path,op,path\n", 1, "appears twice"),
    ('path,op\n"a.jpg,rotate\n', 2, "not valid CSV"),
    ("", None, "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, "not UTF-8"),
])
def test_file_level_problems_name_the_line(tmp_path, text, line, words):
    m = write(tmp_path, text)
    with pytest.raises(ManifestError) as e:
        rows(m)
    assert e.value.line == line
    assert words in str(e.value)
    if line:
        assert f"line {line}" in str(e.value)


@pytest.mark.parametrize(("text", "value", "problem"), [
    ("90", 90, None), ("-90", 270, None), ("+450", 90, None), ("0", 0, None), ("-360", 0, None),
    ("45", None, "rotation 45 is not a multiple of 90 degrees"),
    ("abc", None, "rotation 'abc' is not a whole number of degrees"),
    ("1e9", None, "rotation '1e9' is not a whole number of degrees"),
    ("90.0", None, "not a whole number"),
    ("", None, "rotation is required for rotate"),
    ("9" * 30, None, "out of range"),
])
def test_rotation_values(text, value, problem):
    got, message = parse_rotation(text)
    assert got == value
    assert (message is None) if problem is None else (problem in message)


def test_row_level_problems_are_attached_and_the_rest_goes_on(tmp_path):
    m = write(tmp_path, "\n".join([
        "path,op,rotation,output",
        "a.jpg,resize,90,",
        ",rotate,90,",
        "a.jpg,rotate,45,",
        "a.jpg,rotate,90,../../evil.jpg",
        "a.jpg,rotate,90,/etc/evil.jpg",
        "a.jpg,rotate,90,sub/ok.jpg",
        "a.jpg,rotate,90,x,extra",
        "a.jpg,classify,,",
    ]) + "\n")
    out = tmp_path / "out"
    got = rows(m, out)
    assert [r.error for r in got] == [
        "unknown op 'resize' (expected rotate or classify)",
        "path is empty",
        "rotation 45 is not a multiple of 90 degrees",
        f"output '../../evil.jpg' escapes --out {out} (outputs must stay inside it)",
        f"output '/etc/evil.jpg' escapes --out {out} (outputs must stay inside it)",
        None,
        "line has 5 fields but the header has 4 (unquoted comma?)",
        None,
    ]
    assert got[5].output_path == out / "sub" / "ok.jpg"


def test_default_output_of_an_input_outside_the_manifest_folder_stays_under_rotated(tmp_path):
    (tmp_path / "manifests").mkdir()
    m = write(tmp_path / "manifests", "path,op,rotation\n../pics/a.jpg,rotate,90\n/abs/b.png,rotate,180\n")
    out = tmp_path / "out"
    a, b = rows(m, out)
    assert a.output_path == out / "rotated" / str(tmp_path / "pics" / "a.jpg").lstrip("/")
    assert b.output_path == out / "rotated" / "abs" / "b.png"
    for r in (a, b):
        assert os.path.commonpath([r.output_path, out / "rotated"]) == str(out / "rotated")


def test_duplicate_ids_name_both_lines(tmp_path):
    m = write(tmp_path, "id,path,op\nx,a.jpg,classify\ny,b.jpg,classify\n\nx,c.jpg,classify\n")
    with pytest.raises(ManifestError) as e, indexed(m, tmp_path / "out"):
        pass
    assert e.value.line == 5
    assert "duplicate id 'x' (first used on line 2)" in str(e.value)


def test_default_id_colliding_with_an_explicit_one_is_a_duplicate(tmp_path):
    m = write(tmp_path, "id,path,op\n3,a.jpg,classify\n,b.jpg,classify\n")
    with pytest.raises(ManifestError, match="duplicate id '3'") as e, indexed(m, tmp_path / "out"):
        pass
    assert "a row without an id takes its line number as its id" in str(e.value)


def test_outputs_clashing_with_inputs_or_each_other(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    out = tmp_path  # outputs may land beside the inputs when --out is the manifest's folder
    m = write(tmp_path, "id,path,op,rotation,output\n"
                        "1,a.jpg,rotate,90,link.jpg\n2,b.jpg,rotate,90,a.jpg\n"
                        "3,c.jpg,rotate,90,same.jpg\n4,d.jpg,rotate,90,same.jpg\n")
    with indexed(m, out) as index:
        problems = {s.row.id: s.outcome and s.outcome.error for s in index.scan()}
    assert problems["1"] == f"output {tmp_path / 'link.jpg'} is the input itself: refusing to overwrite an input"
    assert problems["2"] == (f"output {tmp_path / 'a.jpg'} is the input of row '1' (line 2): "
                             "refusing to overwrite an input")
    assert problems["3"] is None
    assert problems["4"] == f"output {tmp_path / 'same.jpg'} is also the output of row '3' (line 4)"
