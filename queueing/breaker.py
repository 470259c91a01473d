"""The circuit breaker of a failure group: pure decisions (no Django here). ``queueing/groups.py`` writes them.

Probe before flooding. Jobs that fail with the same cause share a group (``queueing/fingerprint.py``); the
group, not each job, decides when the sweep may send them again:

1. ``closed``: jobs go out as usual. A failure recorded in a closed group **opens** it: ``open`` until
   ``now + RETRY_DELAY`` (or the server's ``Retry-After``, if longer). Nothing of the group goes out meanwhile.
2. ``open`` and its time has come: the sweep sends ``BREAKER_CANARIES`` due jobs (the canaries, those with the
   fewest automatic retries used first) and the group is ``probing`` until ``now + LEASE_SECONDS``. The
   others wait: they spend no automatic retry.
3. A canary fails: the group is ``open`` again, for twice as long as before (``RETRY_DELAY * 2**level``, at
   most ``BREAKER_MAX_DELAY``). A canary the server deferred (``Retry-After``) is not a failed probe: the group
   waits what the server asked, and its delay does not grow.
4. A canary succeeds: the group is ``closed`` and its jobs go out in growing waves, one wave per
   ``CHECK_INTERVAL``: ``BREAKER_FIRST_WAVE`` jobs, then ``BREAKER_WAVE_GROWTH`` times more each wave (10, 50,
   250 …; after ``MAX_WAVES`` waves, without a limit). A failure in a wave opens the
   group again (step 1).
5. A probe that never answers (its canaries lost) ends at ``open_until``: the sweep probes again.

``BREAKER_ENABLED = False`` lets every due job go, as if every group were closed for good.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class State(StrEnum):
    """A group's breaker state (``FailureGroup.State`` offers the same values to Django)."""

    CLOSED = "closed"
    """Jobs go out as usual (after a successful probe: in growing waves)."""
    OPEN = "open"
    """The cause is failing: nothing goes out until ``open_until``, then a probe."""
    PROBING = "probing"
    """A few canaries are out; the rest wait for their answer (until ``open_until`` at most)."""


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """The breaker's settings in force (``BREAKER_*``, ``RETRY_DELAY``, ``CHECK_INTERVAL``, ``LEASE_SECONDS``)."""

    enabled: bool = True
    canaries: int = 3
    base_delay_seconds: float = 300.0
    max_delay_seconds: float = 3600.0
    first_wave: int = 10
    wave_growth: int = 5
    wave_interval_seconds: float = 60.0
    probe_timeout_seconds: float = 1800.0


@dataclass(frozen=True, kw_only=True)
class Breaker:
    """What a group's breaker remembers (the fields of ``FailureGroup`` of the same names)."""

    state: State = State.CLOSED
    level: int = 0  # failed probes in a row
    wave: int = 0  # waves released since the group closed
    open_until: datetime | None = None
    wave_released_at: datetime | None = None


class ReleaseKind(StrEnum):
    NONE = "none"
    """Nothing of the group may go now."""
    PROBE = "probe"
    """Send ``count`` canaries; the group becomes ``probing``."""
    WAVE = "wave"
    """Send at most ``count`` jobs (one wave); the group moves to its next wave."""
    ALL = "all"
    """No limit from the breaker."""


@dataclass(frozen=True)
class Release:
    """How many of a group's due jobs may go now (``count`` is ``None`` for no limit)."""

    kind: ReleaseKind
    count: int | None

    @property
    def limit(self) -> int | None:
        return 0 if self.kind is ReleaseKind.NONE else self.count


NOTHING = Release(ReleaseKind.NONE, 0)
EVERYTHING = Release(ReleaseKind.ALL, None)


def backoff_seconds(level: int, *, base_seconds: float, max_seconds: float) -> float:
    """How long a group stays open after ``level`` failed probes in a row: doubling from the base, capped."""
    return min(max_seconds, base_seconds * float(2 ** min(level, 62)))


#: Past this many waves a closed group has no limit any more (10 * 5**6 is over 150,000 jobs).
MAX_WAVES = 6


def wave_size(wave: int, *, first: int, growth: int) -> int | None:
    """The size of wave number ``wave`` (from 0): ``first * growth**wave``; ``None`` past ``MAX_WAVES``: no limit."""
    return first * growth**wave if wave < MAX_WAVES else None


def release(breaker: Breaker, *, now: datetime, config: BreakerConfig) -> Release:
    """How many of the group's due jobs the sweep may send now (steps 1, 2, 4 and 5)."""
    if not config.enabled:
        return EVERYTHING
    if breaker.state in (State.OPEN, State.PROBING):
        if breaker.open_until is not None and breaker.open_until > now:
            return NOTHING
        return Release(ReleaseKind.PROBE, config.canaries)
    interval = timedelta(seconds=config.wave_interval_seconds)
    if breaker.wave_released_at is not None and breaker.wave_released_at + interval > now:
        return NOTHING  # the latest wave went out less than an interval ago
    size = wave_size(breaker.wave, first=config.first_wave, growth=config.wave_growth)
    return EVERYTHING if size is None else Release(ReleaseKind.WAVE, size)


def after_release(breaker: Breaker, kind: ReleaseKind, *, now: datetime, config: BreakerConfig) -> Breaker | None:
    """The breaker once the sweep took a release of ``kind`` (``None``: unchanged)."""
    if kind is ReleaseKind.PROBE:
        until = now + timedelta(seconds=config.probe_timeout_seconds)
        return replace(breaker, state=State.PROBING, open_until=until)
    if kind is ReleaseKind.WAVE:
        return replace(breaker, wave=breaker.wave + 1, wave_released_at=now)
    return None


def after_failure(
    breaker: Breaker, *, canary: bool, deferred_seconds: float | None, now: datetime, config: BreakerConfig
) -> Breaker | None:
    """A job of the group failed (steps 1 and 3). ``None``: the breaker does not change."""
    if canary and breaker.state is State.PROBING:
        if deferred_seconds is not None:  # the server asked for time: not a failed probe
            return replace(breaker, state=State.OPEN, open_until=now + timedelta(seconds=deferred_seconds))
        level = breaker.level + 1
        return _open(breaker, level=level, now=now, config=config, at_least_seconds=0.0)
    if breaker.state is State.CLOSED:
        return _open(breaker, level=0, now=now, config=config, at_least_seconds=deferred_seconds or 0.0)
    return None


def after_success(breaker: Breaker, *, canary: bool) -> Breaker | None:
    """A job of the group succeeded (step 4): a canary's success closes a probing group."""
    if canary and breaker.state is State.PROBING:
        return Breaker(state=State.CLOSED)
    return None


def _open(breaker: Breaker, *, level: int, now: datetime, config: BreakerConfig, at_least_seconds: float) -> Breaker:
    wait = backoff_seconds(level, base_seconds=config.base_delay_seconds, max_seconds=config.max_delay_seconds)
    until = now + timedelta(seconds=max(wait, at_least_seconds))
    return Breaker(state=State.OPEN, level=level, wave=0, open_until=until, wave_released_at=None)


def describe(breaker: Breaker) -> str:
    """The state in words: ``closed``, ``closed (wave 2)``, ``probing until …``, ``open until …``."""
    if breaker.state is State.CLOSED:
        return f"closed (wave {breaker.wave})" if breaker.wave else "closed"
    until = breaker.open_until.isoformat(timespec="seconds") if breaker.open_until else "now"
    return f"{breaker.state.value} until {until}"
