"""worker.admission on its own: the in-flight limit is exact and only ``workers`` calls work at once."""

from __future__ import annotations

import threading
import time

import pytest

from worker.admission import Admission
from worker.errors import Busy


def test_past_the_limit_a_call_is_refused_at_once_and_the_admitted_calls_take_turns():
    gate = Admission(limit=3, workers=1)
    release = threading.Event()
    lock = threading.Lock()
    inside: list[int] = []
    seen: dict[str, int] = {}

    def work(i: int) -> int:
        with lock:
            inside.append(i)
            seen["most"] = max(seen.get("most", 0), len(inside))
        release.wait(10)
        with lock:
            inside.pop()
        return i * 10

    answers: list[int] = []
    callers = [threading.Thread(target=lambda i=i: answers.append(gate.run(work, i))) for i in range(3)]
    for t in callers:
        t.start()
    deadline = time.monotonic() + 10
    while gate.admitted < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.admitted == 3
    with pytest.raises(Busy, match=r"worker busy: 3 image calls in flight already .*--max-concurrent-rpcs"):
        gate.run(work, 99)
    release.set()
    for t in callers:
        t.join(10)
    assert sorted(answers) == [0, 10, 20]
    assert seen["most"] == 1, "one worker: the admitted calls took turns"
    assert gate.admitted == 0
    assert gate.run(lambda: gate.admitted) == 1  # room again once they finished


def test_a_failing_call_gives_its_place_back_and_its_error_reaches_the_caller():
    gate = Admission(limit=1, workers=1)

    def bad() -> None:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        gate.run(bad)
    assert gate.admitted == 0
    assert gate.run(lambda: "ok") == "ok"


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError):
        Admission(limit=0, workers=1)
