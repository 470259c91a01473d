"""Backoff is a pure function: no database, no broker."""

from __future__ import annotations

import random

import pytest

from queueing.backoff import delay_seconds


def test_delays_double_from_the_base() -> None:
    assert [delay_seconds(retries_done=n, base_seconds=2, max_seconds=600) for n in range(4)] == [2, 4, 8, 16]


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
