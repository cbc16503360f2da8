"""One row's way to a worker (batch.transport.choose) and the plan's exact duplicates (batch.index.Plan), in
this process: which transport each kind of row gets, and how followers are settled with their leader."""

from __future__ import annotations

from pathlib import Path

from batch.index import Call, Follows, Plan, Settled
from batch.manifest import Row
from batch.results import ERROR, OK, Outcome
from batch.settings import Settings
from batch.store import parse
from batch.stream import STREAM_MIN
from batch.transport import BytesTransport, ReferenceTransport, StreamTransport, choose
from tests.support.manifests import indexed


def _row(op: str, source: Path | str, output: Path | str | None) -> Row:
    return Row(line=2, id="r", path=str(source), op=op, rotation="90" if op == "rotate" else "", output="",
               input_path=source, degrees=90 if op == "rotate" else None, output_path=output)


def test_each_row_gets_the_one_transport_for_its_files(tmp_path: Path) -> None:
    small, big = tmp_path / "small.jpg", tmp_path / "big.tif"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * STREAM_MIN)
    out = tmp_path / "out"
    out.mkdir()
    plain = Settings(timeout=1, retries=0, out_root=str(out))
    assert type(choose(_row("rotate", small, out / "a.jpg"), plain)) is BytesTransport
    assert type(choose(_row("rotate", big, out / "b.tif"), plain)) is StreamTransport
    assert type(choose(_row("classify", big, None), plain)) is StreamTransport
    # A row on an object store never streams, however large its input: no local file to stat.
    assert type(choose(_row("rotate", big, parse("s3://bucket/b.tif")), plain)) is BytesTransport
    missing = choose(_row("rotate", tmp_path / "missing.jpg", out / "m.jpg"), plain)
    assert type(missing) is BytesTransport  # the unary read names what is wrong with it

    served = Settings(timeout=1, retries=0, out_root=str(out), read_roots=(str(tmp_path.resolve()),),
                      write_roots=(str(out.resolve()),))
    by_reference = choose(_row("rotate", big, out / "b.tif"), served)
    assert type(by_reference) is ReferenceTransport and by_reference.by_reference
    assert type(choose(_row("classify", small, None), served)) is ReferenceTransport
    # An output outside the worker's output roots: the bytes travel instead.
    assert type(choose(_row("rotate", small, tmp_path / "a.jpg"), served)) is BytesTransport


def test_the_plan_settles_exact_duplicates_with_their_leader(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,op,rotation,output\n"
                        "lead,a.jpg,rotate,90,same.jpg\n"
                        "bad,a.jpg,rotate,45,\n"
                        "twin,a.jpg,rotate,90,same.jpg\n"
                        "other,b.jpg,classify,,\n"
                        "late,a.jpg,rotate,90,same.jpg\n", encoding="utf-8")
    with indexed(manifest, tmp_path) as index:
        plan = Plan(index)
        steps = iter(plan)
        lead, bad, twin, other = (next(steps) for _ in range(4))
        assert type(lead) is Call and lead.followed and lead.outcome is None
        assert type(bad) is Settled and bad.outcome.status == ERROR and bad.leader is None
        assert type(twin) is Follows and twin.leader == "lead" and twin.outcome is None
        assert type(other) is Call and not other.followed
        assert plan.finished(other.row, Outcome(OK)) == []  # nobody follows it

        done = Outcome(OK, output=str(tmp_path / "same.jpg"), format="JPEG", turned=90, width=4, height=2)
        (shared,) = plan.finished(lead.row, done)
        assert shared.row.id == "twin" and shared.leader == "lead"
        assert (shared.outcome.status, shared.outcome.output, shared.outcome.width) == (OK, done.output, 4)
        assert shared.outcome.attempts == 0 and not shared.outcome.worker  # no call of its own
        assert plan.finished(lead.row, done) == []  # each follower settled once

        # A follower met after its leader is settled comes settled.
        (late,) = list(steps)
        assert type(late) is Settled and late.leader == "lead" and late.outcome.output == done.output
