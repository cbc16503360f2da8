"""The driver's real run loop, in-process: batch.run against the real servicers on 127.0.0.1:0
(tests/support/inprocess.py), no subprocess. Resume, --restart, duplicates, clashes, names, conversions,
the unary/stream boundary and each failure's reason, checked in the results table, the files and the
calls the worker answered."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import batch
from tests.support.hostile import truncated
from tests.support.images import jpeg
from tests.support.inprocess import in_process_worker


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder as the current one: a frame's relative paths are relative to it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(48, 32, seed=i))
    return tmp_path


def _rotations(n: int, rotation: int | str = 90) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "path": [f"img/{i}.jpg" for i in range(n)],
                         "op": "rotate", "rotation": rotation})


def test_every_failure_has_its_reason_and_the_report_groups_by_it(live, here: Path) -> None:
    (here / "img" / "folder.jpg").mkdir()
    (here / "img" / "junk.jpg").write_bytes(b"not an image at all")
    (here / "img" / "cut.jpg").write_bytes(truncated(jpeg(256, 256), 0.5))
    rows = [
        {"id": "ok", "path": "img/0.jpg", "op": "rotate", "rotation": 90},
        {"id": "missing", "path": "img/nope.jpg", "op": "rotate", "rotation": 90},
        {"id": "dir", "path": "img/folder.jpg", "op": "classify"},
        {"id": "junk", "path": "img/junk.jpg", "op": "rotate", "rotation": 90},
        {"id": "cut", "path": "img/cut.jpg", "op": "classify"},
        {"id": "turn", "path": "img/1.jpg", "op": "rotate", "rotation": 45},
        {"id": "a", "path": "img/2.jpg", "op": "rotate", "rotation": 90, "output": "same.jpg"},
        {"id": "b", "path": "img/3.jpg", "op": "rotate", "rotation": 90, "output": "same.jpg"},
    ]
    results = batch.run(rows, out=here / "out", workers=[live.address]).set_index("id")
    reasons = results["reason"].to_dict()
    assert reasons == {"ok": "", "missing": "INPUT_NOT_FOUND", "dir": "NOT_A_REGULAR_FILE",
                       "junk": "UNSUPPORTED_FORMAT", "cut": "CORRUPT_IMAGE", "turn": "INVALID_ROW",
                       "a": "", "b": "OUTPUT_CLASH"}
    assert results.loc["junk", "attempts"] == 1  # permanent: not retried
    assert all(results.loc[i, "error"] for i in reasons if reasons[i])  # the message stays, for people
    figures = batch.report(here / "out")
    grouped = {e["reason"]: e["count"] for e in figures["errors"]}
    assert grouped == {r: 1 for r in reasons.values() if r}


def worked(live) -> dict[str, int]:
    """Images the worker answered, per method: a batch call's items count as their single calls."""
    return {method: n for method, n in live.state.served.items() if not method.endswith("Batch")}


def test_restart_runs_everything_again_and_resume_nothing(live, here: Path) -> None:
    out = here / "out"
    batch.run(_rotations(4), out=out, workers=[live.address])
    assert worked(live) == {"Rotate": 4}
    batch.run(_rotations(4), out=out, workers=[live.address])
    assert worked(live) == {"Rotate": 4}
    os.remove(batch.read_results(out).loc[0, "output"])  # an output deleted: that row runs again
    batch.run(_rotations(4), out=out, workers=[live.address])
    assert worked(live) == {"Rotate": 5}
    again = batch.run(_rotations(4), out=out, workers=[live.address], restart=True)
    assert worked(live) == {"Rotate": 9} and (again["status"] == "ok").all()


def test_exact_duplicates_make_one_call(live, here: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b", "c"], "path": ["img/0.jpg"] * 3, "op": "rotate", "rotation": 90,
                          "output": "one.jpg"})
    results = batch.run(frame, out=here / "out", workers=[live.address])
    assert (results["status"] == "ok").all() and set(results["output"]) == {str(here / "out" / "one.jpg")}
    assert worked(live) == {"Rotate": 1}


def test_default_names_from_the_template_and_by_rotation(live, here: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "path": ["img/0.jpg"] * 2, "op": "rotate", "rotation": [90, 180]})
    named = batch.run(frame, out=here / "named", workers=[live.address], name="{stem}_{rotation}{ext}")
    assert [Path(p).relative_to(here / "named") for p in named["output"]] == [
        Path("rotated/0_90.jpg"), Path("rotated/0_180.jpg")]
    plain = batch.run(frame, out=here / "plain", workers=[live.address])  # one input, two ways: .r<turn>
    assert [Path(p).name for p in plain["output"]] == ["0.r90.jpg", "0.r180.jpg"]


def test_conversion_by_format_option_and_by_output_extension(live, here: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "path": ["img/0.jpg", "img/1.jpg"], "op": "rotate",
                          "rotation": ["auto", 90], "output": ["", "b.webp"]})
    results = batch.run(frame, out=here / "out", workers=[live.address], format="png").set_index("id")
    assert results.loc["a", "format"] == "PNG" and results.loc["a", "output"].endswith("0.png")
    assert results.loc["b", "format"] == "WEBP"
    # auto: no EXIF orientation, so the (stand-in) face model decides: its face is upright
    assert results.loc["a", "rotation"] == "auto" and results.loc["a", "decided_by"] == "faces"
    assert results.loc["a", "turned"] == 0
    with Image.open(results.loc["b", "output"]) as img:
        assert (img.format, img.size) == ("WEBP", (32, 48))


def test_big_files_go_by_stream_and_small_ones_in_one_call(live, here: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (900, 1000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(here / "img" / "big.bmp")
    assert os.path.getsize(here / "img" / "big.bmp") > 2 * 2**20  # over the driver's streaming threshold
    frame = pd.DataFrame({"id": ["big", "small"], "path": ["img/big.bmp", "img/0.jpg"], "op": "rotate",
                          "rotation": 90})
    results = batch.run(frame, out=here / "out", workers=[live.address]).set_index("id")
    assert (results["status"] == "ok").all()
    assert worked(live) == {"RotateStream": 1, "Rotate": 1}
    with Image.open(results.loc["big", "output"]) as img:
        assert np.array_equal(np.asarray(img), np.rot90(noise))


def test_classify_rows_carry_the_model_answer(live, here: Path) -> None:
    frame = pd.DataFrame({"path": ["img/0.jpg"], "op": "classify"})
    results = batch.run(frame, out=here / "out", workers=[live.address])
    assert results.loc[0, "label"] == "face" and results.loc[0, "faces"].startswith('[{"box":[12,8,36,24]')
    assert (results.loc[0, "width"], results.loc[0, "height"]) == (48, 32)


def test_busy_refusals_are_retried_within_the_busy_budget(here: Path) -> None:
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(
            here / "img" / f"big{i}.jpg", quality=95)
    frame = pd.DataFrame({"path": [f"img/big{i}.jpg" for i in range(8)], "op": "rotate", "rotation": 90})
    with in_process_worker(max_concurrent_rpcs=1, threads=1) as one_at_a_time:  # four calls at once, one slot
        results = batch.run(frame, out=here / "out", workers=[one_at_a_time.address], concurrency=4)
    assert (results["status"] == "ok").all()  # refused as busy (WORKER_BUSY), retried, answered
    assert results["attempts"].sum() > 8
