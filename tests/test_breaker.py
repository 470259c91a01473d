"""The circuit breaker's decisions (``queueing/breaker.py``): pure, no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from queueing.breaker import (
    NOTHING,
    Breaker,
    BreakerConfig,
    ReleaseKind,
    State,
    after_failure,
    after_release,
    after_success,
    backoff_seconds,
    describe,
    release,
    wave_size,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = BreakerConfig(
    canaries=3,
    base_delay_seconds=60,
    max_delay_seconds=600,
    first_wave=10,
    wave_growth=5,
    wave_interval_seconds=30,
    probe_timeout_seconds=1800,
)


def test_the_delay_between_probes_doubles_from_the_retry_delay_up_to_the_cap() -> None:
    delays = [backoff_seconds(level, base_seconds=60, max_seconds=600) for level in range(6)]
    assert delays == [60, 120, 240, 480, 600, 600]
    assert backoff_seconds(10_000, base_seconds=60, max_seconds=600) == 600


def test_waves_grow_then_end_without_a_limit() -> None:
    assert [wave_size(n, first=10, growth=5) for n in range(7)] == [10, 50, 250, 1250, 6250, 31250, None]


def test_a_failure_in_a_closed_group_opens_it_for_the_retry_delay() -> None:
    opened = after_failure(Breaker(), canary=False, deferred_seconds=None, now=NOW, config=CONFIG)
    assert opened == Breaker(state=State.OPEN, level=0, open_until=NOW + timedelta(seconds=60))


def test_a_server_deferral_longer_than_the_retry_delay_keeps_the_group_open_that_long() -> None:
    opened = after_failure(Breaker(), canary=False, deferred_seconds=120, now=NOW, config=CONFIG)
    assert opened is not None and opened.open_until == NOW + timedelta(seconds=120)


def test_an_open_group_sends_nothing_until_its_time_then_a_few_canaries() -> None:
    group = Breaker(state=State.OPEN, open_until=NOW + timedelta(seconds=1))
    assert release(group, now=NOW, config=CONFIG) == NOTHING
    later = release(group, now=NOW + timedelta(seconds=1), config=CONFIG)
    assert (later.kind, later.count) == (ReleaseKind.PROBE, 3)


def test_a_probe_leaves_the_group_probing_until_the_canaries_lease_runs_out() -> None:
    group = Breaker(state=State.OPEN, open_until=NOW)
    probing = after_release(group, ReleaseKind.PROBE, now=NOW, config=CONFIG)
    assert probing == Breaker(state=State.PROBING, open_until=NOW + timedelta(seconds=1800))
    assert release(probing, now=NOW + timedelta(seconds=10), config=CONFIG) == NOTHING
    # A probe that never answers ends at its deadline: the sweep probes again.
    assert release(probing, now=NOW + timedelta(seconds=1800), config=CONFIG).kind is ReleaseKind.PROBE


def test_a_failed_canary_pushes_the_group_back_for_longer_each_time() -> None:
    group = Breaker(state=State.PROBING, level=0, open_until=NOW + timedelta(seconds=1800))
    waits = []
    for _ in range(5):
        group = after_failure(group, canary=True, deferred_seconds=None, now=NOW, config=CONFIG) or group
        assert group.state is State.OPEN
        assert group.open_until is not None
        waits.append((group.open_until - NOW).total_seconds())
        group = replace(group, state=State.PROBING)
    assert waits == [120, 240, 480, 600, 600]


def test_a_canary_the_server_deferred_is_not_a_failed_probe() -> None:
    group = Breaker(state=State.PROBING, level=2, open_until=NOW + timedelta(seconds=1800))
    after = after_failure(group, canary=True, deferred_seconds=30, now=NOW, config=CONFIG)
    assert after == Breaker(state=State.OPEN, level=2, open_until=NOW + timedelta(seconds=30))


def test_a_failure_that_is_not_a_canary_leaves_an_open_or_probing_group_alone() -> None:
    for state in (State.OPEN, State.PROBING):
        group = Breaker(state=state, level=1, open_until=NOW)
        assert after_failure(group, canary=False, deferred_seconds=None, now=NOW, config=CONFIG) is None


def test_a_successful_canary_closes_the_group_and_waves_follow_one_per_interval() -> None:
    probing = Breaker(state=State.PROBING, level=3, open_until=NOW + timedelta(seconds=1800))
    assert after_success(Breaker(state=State.OPEN), canary=True) is None
    assert after_success(probing, canary=False) is None
    group = after_success(probing, canary=True)
    assert group == Breaker(state=State.CLOSED)

    sizes = []
    now = NOW
    for _ in range(7):
        wave = release(group, now=now, config=CONFIG)
        assert release(group, now=now, config=CONFIG) == wave  # asking takes nothing
        sizes.append(wave.count)
        group = after_release(group, wave.kind, now=now, config=CONFIG) or group
        if wave.kind is ReleaseKind.WAVE:  # the next wave waits one interval
            assert release(group, now=now + timedelta(seconds=29), config=CONFIG) == NOTHING
        now += timedelta(seconds=30)
    assert sizes == [10, 50, 250, 1250, 6250, 31250, None]


def test_a_failure_during_the_waves_opens_the_group_again() -> None:
    waving = Breaker(state=State.CLOSED, wave=2, wave_released_at=NOW)
    after = after_failure(waving, canary=False, deferred_seconds=None, now=NOW, config=CONFIG)
    assert after == Breaker(state=State.OPEN, open_until=NOW + timedelta(seconds=60))


def test_with_the_breaker_off_everything_may_go() -> None:
    off = replace(CONFIG, enabled=False)
    group = Breaker(state=State.OPEN, open_until=NOW + timedelta(hours=1))
    assert release(group, now=NOW, config=off).limit is None


def test_the_state_in_words() -> None:
    assert describe(Breaker()) == "closed"
    assert describe(Breaker(wave=2)) == "closed (wave 2)"
    assert describe(Breaker(state=State.OPEN, open_until=NOW)) == "open until 2026-01-01T12:00:00+00:00"
