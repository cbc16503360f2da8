"""worker.admission on its own: the in-flight limit is exact and only ``workers`` calls work at once."""

from __future__ import annotations

import threading
import time

import pytest

from worker import admission
from worker.admission import Admission, bounded
from worker.errors import Busy, Cancelled, Expired


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


class _Call:
    """A call as a grpc.ServicerContext presents it: ``remaining`` seconds (None: no deadline) from now."""

    def __init__(self, remaining: float | None) -> None:
        self._end = None if remaining is None else time.monotonic() + remaining
        self.active = True

    def time_remaining(self) -> float | None:
        return None if self._end is None else self._end - time.monotonic()

    def is_active(self) -> bool:
        return self.active

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def add_callback(self, callback) -> bool:
        return True


class _Answered(_Call):
    """A call whose end (its answer sent) the test chooses: ``end()`` runs what was registered for it."""

    def __init__(self) -> None:
        super().__init__(None)
        self._callbacks: list = []

    def add_callback(self, callback) -> bool:
        self._callbacks.append(callback)
        return True

    def end(self) -> None:
        for callback in self._callbacks:
            callback()


def test_answers_held_for_one_client_are_released_in_any_order_an_empty_one_too():
    # A batch whose items all failed is counted as an answer of 0 bytes: when another call of the same client
    # ended first, releasing it raised KeyError on gRPC's thread (a traceback in a conformance run's log).
    gate = Admission(limit=8, workers=8, unsent_limit=100)
    empty, full = _Answered(), _Answered()
    gate.hold_answer(empty, 0)
    gate.hold_answer(full, 60)
    assert gate.unsent == 60
    full.end()
    empty.end()
    assert gate.unsent == 0
    gate.hold_answer(_Call(None), 100)  # the client's count started again from nothing: at the bound, refused
    with pytest.raises(Busy, match="answers not yet read"):
        gate.run(lambda: "ok", call=_Call(None))


@pytest.mark.parametrize("seconds, limit, wait", [
    (None, 0.1, 0.1), (float("inf"), 0.1, 0.1), (float("nan"), 0.1, 0.1), (1e300, 0.1, 0.1),
    (0.05, 0.1, 0.05), (-3.0, 0.1, 0.0), (0.0, 0.1, 0.0),
])
def test_a_time_remaining_is_bounded_whatever_the_deadline(seconds, limit, wait):
    assert bounded(seconds, limit) == wait


@pytest.fixture
def short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits sliced into polls of 10 ms instead of the worker's 100: the same slicing, sooner over."""
    monkeypatch.setattr(admission, "POLL", 0.01)


@pytest.mark.parametrize("remaining", [None, 1e9, 1e19, float("inf")])
def test_a_wait_without_a_finite_deadline_lasts_until_its_event(remaining, short_polls):
    # 1e19 s is what OverflowError'd threading.Event.wait when a client set no deadline.
    done = threading.Event()
    threading.Timer(1.5 * admission.POLL, done.set).start()  # past the first poll: the wait goes on
    admission.wait(done, _Call(remaining))
    assert done.is_set()
    gate = Admission(limit=2, workers=1)
    assert gate.run(lambda: "ok", call=_Call(remaining)) == "ok"


def test_a_wait_ends_with_its_calls_deadline_or_its_client(short_polls):
    with pytest.raises(Expired):
        admission.wait(threading.Event(), _Call(0.05))
    call = _Call(None)
    threading.Timer(0.05, lambda: setattr(call, "active", False)).start()
    with pytest.raises(Cancelled):
        admission.wait(threading.Event(), call)


def test_a_stream_holds_what_it_has_received_not_what_it_declares():
    gate = Admission(limit=8, workers=8, bytes_limit=100)
    with gate.held(size=90, streamed=True) as first, gate.held(size=90, streamed=True) as second:
        assert gate.image_bytes == 0  # two streams declared 90 each and sent nothing
        with gate.held(size=50):  # other calls still get in
            assert gate.image_bytes == 50
        first.add(60)
        with pytest.raises(Busy, match=r"this stream's next 0\.0 MiB would pass .*--max-inflight-mb"):
            second.add(41)
        second.add(40)
        assert (gate.image_bytes, first.bytes, second.bytes) == (100, 60, 40)
        with pytest.raises(Busy, match="MiB of images in flight"):
            with gate.held(size=1):
                pass
    assert gate.image_bytes == 0 and gate.admitted == 0
    with gate.held(size=500, streamed=True) as alone:
        alone.add(500)  # alone, an image over the bound is still taken: never busy for good
    assert gate.image_bytes == 0
