"""batch's public API (batch/api.py) against the real servicers in this process: a DataFrame of paths in,
the typed results table out, from plain code, a running event loop and a task that is cancelled."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pandas as pd
import pytest

import batch
import worker
from tests.support.images import jpeg
from tests.support.inprocess import StandInClassifier, in_process_worker
from tests.support.manifests import write_manifest
from tests.support.processes import run_python


def _photos(folder: Path, n: int, size: tuple[int, int] = (48, 32)) -> pd.DataFrame:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / "img" / f"{i}.jpg").write_bytes(jpeg(*size, seed=i))
    return pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(n)], "op": "rotate", "rotation": 90})


def test_the_exported_names_are_pinned() -> None:
    assert batch.__all__ == [
        "BatchError", "ManifestError", "MissingExtra", "ResultsError", "RunStopped", "Tally", "UsageError",
        "WorkerStartError", "read_results", "report", "run", "run_async",
    ]
    assert worker.__all__ == ["Classification", "Reason", "Rotated", "WorkerError", "auto_rotate", "classify",
                              "rotate"]
    for module in (batch, worker):
        assert all(getattr(module, name) is not None for name in module.__all__)
    assert issubclass(batch.UsageError, batch.BatchError) and issubclass(batch.ManifestError, batch.BatchError)


def test_a_dataframe_runs_and_resumes_without_redoing_work(live, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a frame's relative paths are relative to the current folder
    frame = _photos(tmp_path, 6)
    out = tmp_path / "out"
    results = batch.run(frame, out=out, workers=[live.address])
    assert list(results["status"]) == ["ok"] * 6 and list(results["path"]) == list(frame["path"])
    assert results["width"].dtype == "Int64" and list(results["width"]) == [32] * 6  # typed: turned by 90
    assert list(results["rotation"]) == ["90"] * 6
    assert all(Path(p).is_file() for p in results["output"])
    assert (out / "results.csv").is_file() and not (out / ".lock").exists()
    served = dict(live.state.served)
    again = batch.run(frame, out=out, workers=live.address)
    assert live.state.served == served  # nothing called again
    assert list(again["status"]) == ["ok"] * 6
    pd.testing.assert_frame_equal(again.drop(columns="finished_at"), results.drop(columns="finished_at"))
    assert batch.read_results(out)["id"].tolist() == results["id"].tolist()


def test_runs_inside_a_running_event_loop_and_from_a_thread(live, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "path": "a.jpg", "op": "classify"}])
    (tmp_path / "a.jpg").write_bytes(jpeg(64, 48))

    async def notebook_cell() -> pd.DataFrame:  # Jupyter runs cells inside its own loop
        return batch.run(manifest, out=tmp_path / "out", workers=[live.address])

    results = asyncio.run(notebook_cell())
    assert results.loc[0, "label"] == "face" and results.loc[0, "confidence"] == pytest.approx(0.9)
    seen: list[int] = []
    asyncio.run(asyncio.to_thread(lambda: batch.run(manifest, out=tmp_path / "again", workers=[live.address],
                                                    progress=lambda tally: seen.append(tally.settled))))
    assert seen[-1] == 1


def test_run_async_is_cancelled_with_its_task_keeping_what_it_finished(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rotations = _photos(tmp_path, 3)
    held = pd.DataFrame({"id": [f"c{i}" for i in range(20)], "path": "img/0.jpg", "op": "classify"})
    frame = pd.concat([rotations, held], ignore_index=True)  # 3 rotations, then classify calls held in flight
    out = tmp_path / "out"
    gate = threading.Event()

    async def cancel_once_some_are_in() -> None:
        def cancel(tally: batch.Tally) -> None:
            if tally.settled >= 3:
                task.cancel()

        task = asyncio.create_task(batch.run_async(frame, out=out, workers=[live.address], concurrency=2,
                                                   progress=cancel))
        with pytest.raises(asyncio.CancelledError):
            await task

    with in_process_worker(StandInClassifier(gate)) as live:
        try:
            asyncio.run(cancel_once_some_are_in())
        finally:
            gate.set()  # the worker's held calls finish (their answers go nowhere)
        kept = batch.read_results(out)
        assert list(kept["id"]) == ["2", "3", "4"] and (kept["status"] == "ok").all()  # ids: line numbers
        assert not (out / ".lock").exists()
        finished = batch.run(frame, out=out, workers=[live.address])  # the same call finishes the rest
    assert len(finished) == 23 and (finished["status"] == "ok").all()


def test_problems_of_the_run_raise_batch_errors(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,operation\na.jpg,rotate\n")
    with pytest.raises(batch.ManifestError, match="missing required columns path and op"):
        batch.run(bad, out=tmp_path / "out", workers=["127.0.0.1:9"])
    with pytest.raises(batch.UsageError, match="out is required"):
        batch.run([{"path": "a.jpg", "op": "classify"}])
    with pytest.raises(batch.UsageError, match="--concurrency must be between 1 and 100000"):
        batch.run(bad, concurrency=0)
    with pytest.raises(batch.UsageError, match=r"--retries must be between 0 and 1000 \(got 1000000000\)"):
        batch.run(bad, retries=10**9)
    with pytest.raises(batch.UsageError, match="--connections must be between 1 and 1024"):
        batch.run(bad, connections=1 << 40)
    with pytest.raises(batch.UsageError, match="--batch-rows must be between 1 and 4096"):
        batch.run(bad, batch_rows=5000)
    with pytest.raises(batch.UsageError, match="unknown option colour"):
        batch.run(bad, colour="red")
    with pytest.raises(batch.UsageError, match="--format 'jpeg2000'"):
        batch.run(bad, format="jpeg2000")
    assert not (tmp_path / "out" / ".lock").exists()


def test_worker_functions_in_process() -> None:
    rotated = worker.rotate(jpeg(48, 32), 90)
    assert (rotated.width, rotated.height, rotated.format) == (32, 48, "JPEG")
    with pytest.raises(worker.WorkerError) as refused:
        worker.rotate(b"not an image", 90)
    assert refused.value.reason == worker.Reason.UNSUPPORTED_FORMAT


@pytest.mark.slow
def test_a_dataframe_runs_on_the_embedded_worker_by_reference(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    frame = _photos(tmp_path, 3)
    results = batch.run(frame, out=tmp_path / "out")  # no workers: the embedded one, rooted at the cwd and out
    assert list(results["status"]) == ["ok"] * 3 and list(results["width"]) == [32] * 3
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["workers"]["embedded"] and run["workers"]["rows_by_reference"] == 3
    assert run["base"] == str(tmp_path) and not (tmp_path / "out" / ".lock").exists()


@pytest.mark.slow
def test_tls_files_refused_raise_a_usage_error_and_leave_no_task_behind(tmp_path) -> None:
    # The pool is made before the run's background commits start: asyncio warned "Task was destroyed but it is
    # pending!" (the group commit's) after this error.
    (tmp_path / "a.jpg").write_bytes(jpeg(48, 32))
    script = ("import batch\n"
              "try:\n"
              "    batch.run([{'path': 'a.jpg', 'op': 'rotate', 'rotation': 90}], out='out', workers=['127.0.0.1:9'],\n"
              "              tls_ca='missing-ca.pem')\n"
              "except batch.UsageError as e:\n"
              "    print(e)\n")
    done = run_python(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cannot read --tls-ca missing-ca.pem: No such file or directory"
    assert done.stderr == ""
    assert not (tmp_path / "out" / ".lock").exists()

@pytest.mark.slow
def test_a_plain_script_prints_nothing_and_leaves_no_lock(tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(48, 32))
    script = ("import pandas as pd, batch\n"
              "frame = pd.DataFrame({'path': ['a.jpg', 'missing.jpg'], 'op': 'rotate', 'rotation': 90})\n"
              "results = batch.run(frame, out='out')\n"
              "assert list(results['status']) == ['ok', 'error'], results\n")
    done = run_python(script, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")  # a library prints nothing unless asked
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []
