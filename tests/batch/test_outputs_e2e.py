"""Outputs the way image tools work, through `batch run` (in this process, against the in-process worker; the
shipped face model through the embedded worker): formats by extension and --format, rotation auto (EXIF, then
faces), and faces found in turned photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.faces import BUSH, CLOCKWISE, held_out_photo, needs_lfw
from tests.support.images import photo
from tests.support.inprocess import run_cli
from tests.support.manifests import write_manifest
from tests.support.processes import run_batch
from tests.support.results import by_id, results

TURN = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_outputs_convert_by_extension_and_by_format(tmp_path: Path, live) -> None:
    base = photo(64, 48, seed=7)
    base.save(tmp_path / "in.jpg", quality=95)
    base.save(tmp_path / "in.png")
    base.save(tmp_path / "in.tiff")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", base.size, 128))
    rgba.save(tmp_path / "alpha.png")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "jpg-png", "path": "in.jpg", "op": "rotate", "rotation": "90", "output": "a.png"},
        {"id": "png-webp", "path": "in.png", "op": "rotate", "rotation": "90", "output": "b.webp"},
        {"id": "tiff-jpg", "path": "in.tiff", "op": "rotate", "rotation": "90", "output": "c.jpg"},
        {"id": "rgba-jpg", "path": "alpha.png", "op": "rotate", "rotation": "180", "output": "d.jpg"},
    ])
    out = tmp_path / "out"
    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", out, "--quiet")
    assert code == 0, stderr
    got = by_id(results(out))
    expected = {"jpg-png": ("a.png", "PNG"), "png-webp": ("b.webp", "WEBP"), "tiff-jpg": ("c.jpg", "JPEG"),
                "rgba-jpg": ("d.jpg", "JPEG")}
    for id_, (name, fmt) in expected.items():
        assert got[id_]["status"] == "ok" and got[id_]["format"] == fmt, got[id_]
        assert Image.open(out / name).format == fmt
    reference = rgb(tmp_path / "in.png")
    assert np.abs(rgb(out / "a.png") - np.asarray(Image.open(tmp_path / "in.jpg").convert("RGB")
                                                   .transpose(TURN[90]), dtype=np.int16)).max() <= 1
    assert np.abs(rgb(out / "b.webp") - reference.transpose(1, 0, 2)[::-1]).mean() < 4
    assert np.abs(rgb(out / "c.jpg") - reference.transpose(1, 0, 2)[::-1]).mean() < 4
    assert "alpha" in got["rgba-jpg"]["note"]

    code, _, stderr = run_cli("run", manifest, "--worker", live.address, "--out", tmp_path / "all", "--format", "webp",
                              "--quiet")
    assert code == 0, stderr
    plain = write_manifest(tmp_path / "p.csv", [{"id": "x", "path": "in.jpg", "op": "rotate", "rotation": "90"}])
    assert run_cli("run", plain, "--worker", live.address, "--out", tmp_path / "fmt", "--format", "png",
                   "--quiet")[0] == 0
    (row,) = results(tmp_path / "fmt")
    assert row["output"] == str(tmp_path / "fmt" / "rotated" / "in.png") and row["format"] == "PNG"


def test_auto_applies_every_exif_orientation(tmp_path: Path, live) -> None:
    base = photo(48, 32, seed=3)
    rows = []
    for orientation in range(1, 9):
        stored = base
        for op in {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
                   4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
                   6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
                   8: [Image.Transpose.ROTATE_270]}.get(orientation, []):
            stored = stored.transpose(op)  # what a camera stores for a scene that is `base` upright
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(tmp_path / f"o{orientation}.png", exif=exif)
        rows.append({"id": f"o{orientation}", "path": f"o{orientation}.png", "op": "rotate", "rotation": "auto"})
    out = tmp_path / "out"
    code, _, stderr = run_cli("run", write_manifest(tmp_path / "m.csv", rows), "--worker", live.address, "--out", out,
                              "--quiet")
    assert code == 0, stderr
    got = by_id(results(out))
    for orientation in range(1, 9):
        row = got[f"o{orientation}"]
        assert row["status"] == "ok" and row["rotation"] == "auto"
        # Orientation 1 (upright as stored) leaves it to the face model: the stand-in's one face is upright.
        assert row["decided_by"] == ("exif" if orientation != 1 else "faces"), row
        written = Image.open(row["output"])
        assert written.getexif().get(0x0112, 1) == 1
        assert np.array_equal(rgb(Path(row["output"])), np.asarray(base.convert("RGB"), dtype=np.int16))


@needs_lfw
@pytest.mark.slow  # the embedded worker with the shipped face model
def test_auto_and_classify_find_the_face_in_a_turned_photo(tmp_path: Path) -> None:
    upright = Image.open(held_out_photo(BUSH, 0)).convert("RGB")
    buf = io.BytesIO()
    upright.transpose(CLOCKWISE[90]).save(buf, "JPEG", quality=95)  # a scan with no orientation
    (tmp_path / "turned.jpg").write_bytes(buf.getvalue())
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "auto", "path": "turned.jpg", "op": "rotate", "rotation": "auto"},
        {"id": "who", "path": "turned.jpg", "op": "classify"}])
    out = tmp_path / "out"
    done = run_batch(manifest, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    got = by_id(results(out))
    assert got["auto"]["decided_by"] == "faces" and got["auto"]["turned"] == "90"
    assert Image.open(got["auto"]["output"]).size == upright.size
    assert got["who"]["label"] == BUSH and got["who"]["turned"] == "90"
