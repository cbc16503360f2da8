"""The driver's retry schedule (batch.runner): ordinary failures back off from 1 s, busy refusals from 50 ms,
and a row waits out busy refusals for no longer than --retries ordinary retries would take."""

from __future__ import annotations

from batch.runner import Settings, backoff


def test_ordinary_retries_double_from_one_second_up_to_the_cap_with_jitter():
    settings = Settings(timeout=1, retries=6)
    for retry, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 20), (9, 20)]:
        waits = [backoff(retry, settings) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (retry, min(waits), max(waits))


def test_busy_refusals_are_retried_within_milliseconds_at_first():
    settings = Settings(timeout=1, retries=6)
    first = [backoff(1, settings, settings.busy_backoff_base) for _ in range(200)]
    assert all(0.025 <= w <= 0.05 for w in first)


def test_busy_budget_is_what_the_ordinary_retries_would_wait_at_most():
    assert Settings(timeout=1, retries=6).busy_budget == 1 + 2 + 4 + 8 + 16 + 20
    assert Settings(timeout=1, retries=0).busy_budget == 0
