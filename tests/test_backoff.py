"""Backoff is a pure function, and the base task waits what it says: no database, no broker."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from queueing.backoff import delay_seconds
from tests import tasks


def test_delays_double_from_the_base() -> None:
    assert [delay_seconds(retries_done=n, base_seconds=2, max_seconds=600) for n in range(4)] == [2, 4, 8, 16]


@pytest.mark.parametrize("base_seconds", [0.05, 0.3, 1, 2, 7.5])
def test_each_delay_is_twice_the_one_before_until_the_cap(base_seconds: float) -> None:
    delays = [delay_seconds(retries_done=n, base_seconds=base_seconds, max_seconds=10_000) for n in range(8)]

    assert delays[0] == base_seconds
    assert [later / earlier for earlier, later in itertools.pairwise(delays)] == [2.0] * 7


def test_the_task_waits_twice_as_long_before_each_next_immediate_retry(configure: Any) -> None:
    # Given the backoff Celery reads from RetryableTask (``default_retry_delay``) for a task's immediate retries
    configure(BACKOFF_BASE=0.3)
    task = tasks.always_fail

    # When it has failed 0, 1, 2 and 3 times
    delays = []
    for retries in range(4):
        task.push_request(retries=retries)
        try:
            delays.append(task.default_retry_delay)
        finally:
            task.pop_request()

    # Then it waits 0.3, 0.6, 1.2 and 2.4 seconds: doubling, never a constant delay
    assert delays == pytest.approx([0.3, 0.6, 1.2, 2.4])
    assert [later / earlier for earlier, later in itertools.pairwise(delays)] == pytest.approx([2.0] * 3)


def test_fractional_bases_are_kept_as_they_are() -> None:
    assert [delay_seconds(retries_done=n, base_seconds=0.05, max_seconds=600) for n in range(3)] == [0.05, 0.1, 0.2]


def test_delays_are_capped() -> None:
    assert delay_seconds(retries_done=20, base_seconds=2, max_seconds=60) == 60


def test_jitter_stays_in_the_upper_half_and_never_reaches_zero() -> None:
    rng = random.Random(7)
    delays = [delay_seconds(retries_done=2, base_seconds=2, max_seconds=600, jitter=True, rng=rng) for _ in range(500)]
    assert min(delays) >= 4 and max(delays) <= 8
    assert len(set(delays)) > 100


def test_a_negative_retry_number_is_refused() -> None:
    with pytest.raises(ValueError, match="retries_done"):
        delay_seconds(retries_done=-1, base_seconds=2, max_seconds=10)
