"""Default output names never collide for a valid manifest: through the real run loop (``batch.run``) against
the real servicers in this process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch
from tests.support.images import photo
from tests.support.inprocess import in_process_worker
from tests.support.manifests import write_manifest
from tests.support.results import by_id, results

TURN = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def rotated(path: Path, degrees: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").transpose(TURN[degrees % 360]))


@pytest.fixture(scope="module")
def live():
    with in_process_worker() as w:
        yield w


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, live) -> tuple[Path, Path, dict[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("names")
    (folder / "pics").mkdir()
    photo(64, 48, seed=1).save(folder / "pics" / "photo.png")
    photo(40, 24, seed=2).save(folder / "once.png")
    photo(32, 16, seed=3).save(folder / "twice.png")
    buf = io.BytesIO()
    photo(48, 32, seed=4).save(buf, "PNG")
    (folder / "misnamed.jpg").write_bytes(buf.getvalue())  # PNG bytes under a JPEG name
    rows = [
        {"id": "p90", "path": "pics/photo.png", "op": "rotate", "rotation": "90"},
        {"id": "p180", "path": "pics/photo.png", "op": "rotate", "rotation": "180"},
        {"id": "p270", "path": "pics/photo.png", "op": "rotate", "rotation": "-90"},
        {"id": "once", "path": "once.png", "op": "rotate", "rotation": "90"},
        {"id": "twice-a", "path": "twice.png", "op": "rotate", "rotation": "90"},
        {"id": "twice-b", "path": "twice.png", "op": "rotate", "rotation": "450"},  # the same turn
        {"id": "misnamed", "path": "misnamed.jpg", "op": "rotate", "rotation": "180"},
    ]
    manifest = write_manifest(folder / "m.csv", rows)
    out = folder / "out"
    assert (batch.run(manifest, out=out, workers=[live.address])["status"] == "ok").all()
    return folder, out, by_id(results(out))


def test_one_input_rotated_three_ways_gives_three_files(run) -> None:
    folder, out, got = run
    for id_, degrees in (("p90", 90), ("p180", 180), ("p270", 270)):
        path = out / "rotated" / "pics" / f"photo.r{degrees}.png"
        assert got[id_]["status"] == "ok" and got[id_]["output"] == str(path)
        assert np.array_equal(pixels(path), rotated(folder / "pics" / "photo.png", degrees))


def test_an_input_in_one_row_keeps_its_name(run) -> None:
    folder, out, got = run
    assert got["once"]["output"] == str(out / "rotated" / "once.png")


def test_exact_duplicates_share_one_output_written_once(run) -> None:
    folder, out, got = run
    path = out / "rotated" / "twice.png"
    assert got["twice-a"]["status"] == got["twice-b"]["status"] == "ok"
    assert got["twice-a"]["output"] == got["twice-b"]["output"] == str(path)
    assert got["twice-b"]["attempts"] == "0"  # no call of its own
    assert np.array_equal(pixels(path), rotated(folder / "twice.png", 90))
    answered = json.loads((out / "run.json").read_text())["workers"]["answered"]
    assert sum(answered.values()) == 6  # seven rows, six calls


def test_a_misnamed_input_keeps_its_name_and_its_real_format(run) -> None:
    folder, out, got = run
    path = out / "rotated" / "misnamed.jpg"
    assert got["misnamed"]["status"] == "ok" and got["misnamed"]["format"] == "PNG"
    assert Image.open(path).format == "PNG"
    assert np.array_equal(pixels(path), rotated(folder / "misnamed.jpg", 180))


def test_a_rerun_does_nothing_again(run, live) -> None:
    folder, out, _got = run
    assert len(batch.run(folder / "m.csv", out=out, workers=[live.address])) == 7
    assert json.loads((out / "run.json").read_text())["counts"]["skipped_already_done"] == 7


def test_the_name_template(tmp_path: Path, live) -> None:
    (tmp_path / "pics").mkdir()
    photo(32, 16, seed=5).save(tmp_path / "pics" / "a.png")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "x", "path": "pics/a.png", "op": "rotate", "rotation": "90"},
        {"id": "y", "path": "pics/a.png", "op": "rotate", "rotation": "270", "output": "mine.png"}])
    out = tmp_path / "out"
    batch.run(manifest, out=out, workers=[live.address], name="{folder}/{stem}_{rotation}_{id}{ext}")
    got = by_id(results(out))
    assert got["x"]["output"] == str(out / "rotated" / "pics" / "a_90_x.png")
    assert got["y"]["output"] == str(out / "mine.png")  # an explicit output wins


@pytest.mark.parametrize(("template", "said"), [
    ("{stem}{colour}{ext}", "has unknown field {colour}"),
    ("{stem", "is not a valid template"),
    ("fixed.png", "names every output the same"),
])
def test_a_bad_template_is_a_usage_error(tmp_path: Path, template: str, said: str) -> None:
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.png", "op": "rotate", "rotation": "90"}])
    with pytest.raises(batch.UsageError) as raised:  # batch run: exit 2
        batch.run(manifest, out=tmp_path / "out", name=template)
    assert said in str(raised.value) and not (tmp_path / "out").exists()
