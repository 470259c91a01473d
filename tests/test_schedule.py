"""The sweep's Beat schedule: ``set_sweep_interval``, the one writer of the check interval."""

from __future__ import annotations

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from queueing import autoretry, schedule
from queueing.models import AutoRetryConfig
from queueing.retry import start_auto_retry
from queueing.schedule import SWEEP_TASK_NAME, ensure_sweep_schedule, set_sweep_interval

pytestmark = pytest.mark.django_db(transaction=True)


def _sweep() -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(name=SWEEP_TASK_NAME)


def test_set_sweep_interval_records_the_check_interval_and_moves_the_periodic_task() -> None:
    ensure_sweep_schedule()

    set_sweep_interval(90)

    assert AutoRetryConfig.objects.get(pk=1).check_interval_seconds == 90
    assert autoretry.current_policy().check_interval_seconds == 90
    assert (_sweep().interval.every, _sweep().interval.period) == (90, IntervalSchedule.SECONDS)


def test_set_sweep_interval_keeps_the_other_settings_of_the_running_system() -> None:
    start_auto_retry(max_retries=7, retry_delay=30)

    set_sweep_interval(45)

    policy = autoretry.current_policy()
    assert (policy.max_retries, policy.retry_delay_seconds, policy.check_interval_seconds) == (7, 30.0, 45)


def test_set_sweep_interval_writes_both_or_neither(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a schedule whose write fails
    ensure_sweep_schedule()

    def broken(**kwargs: object) -> PeriodicTask:
        raise RuntimeError("the scheduler's table is locked")

    monkeypatch.setattr(schedule, "ensure_sweep_schedule", broken)

    # When the interval is set, then the check interval is not recorded either
    with pytest.raises(RuntimeError):
        set_sweep_interval(90)
    assert AutoRetryConfig.objects.filter(check_interval_seconds=90).count() == 0
    assert _sweep().interval.every == 1


@pytest.mark.parametrize("seconds", [0, -5, 1.5, True])
def test_set_sweep_interval_refuses_what_is_not_a_whole_number_of_seconds(seconds: object) -> None:
    with pytest.raises(ValueError, match="whole number of seconds >= 1"):
        set_sweep_interval(seconds)  # type: ignore[arg-type]  # the wrong types are the point


def test_an_interval_as_long_in_other_units_is_kept_as_the_operator_chose_it() -> None:
    # Given the sweep put on "every 2 minutes" (as an operator can in django-celery-beat's admin)
    sweep = ensure_sweep_schedule()
    two_minutes = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.filter(pk=sweep.pk).update(interval=two_minutes)

    # When 120 s is recorded, and Beat restarts
    set_sweep_interval(120)
    ensure_sweep_schedule()

    # Then the sweep stays on "every 2 minutes"
    assert _sweep().interval_id == two_minutes.pk


def test_start_auto_retry_sets_the_interval_through_set_sweep_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, bool | None]] = []
    real = schedule.set_sweep_interval

    def spy(seconds: int, *, enable: bool | None = None) -> PeriodicTask:
        calls.append((seconds, enable))
        return real(seconds, enable=enable)

    monkeypatch.setattr("queueing.retry.set_sweep_interval", spy)

    start_auto_retry(check_interval=89.5)

    assert calls == [(90, True)]
    assert _sweep().interval.every == 90


# --- a Beat starting while another changes the schedule --------------------------------------------------------


def test_a_beat_that_starts_while_another_beat_moves_the_sweep_runs_the_sweep_on_the_new_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """django-celery-beat's DatabaseScheduler reads the schedule, then takes the time of the last change as the
    mark it compares with at each tick: a change made between the two was never seen (until its forced reload
    every 5 minutes). ``schedule.prepare_beat`` marks the schedule changed at beat_init, so that it is read again.
    """
    from django_celery_beat.schedulers import DatabaseScheduler

    from queueing import signals
    from queueing.registry import celery_app

    # Given the sweep every 60 s, and a second Beat that moves it to every 1 s just after this Beat read it
    ensure_sweep_schedule(check_interval_seconds=60)
    read_the_schedule = DatabaseScheduler.install_default_entries  # called right after the first read

    def another_beat_moves_the_sweep(self: DatabaseScheduler, data: object) -> None:
        ensure_sweep_schedule(check_interval_seconds=1)
        read_the_schedule(self, data)

    monkeypatch.setattr(DatabaseScheduler, "install_default_entries", another_beat_moves_the_sweep)

    # When this Beat starts: its scheduler is made, then beat_init's handlers run (celery.beat.Service.start)
    scheduler = DatabaseScheduler(app=celery_app())
    monkeypatch.setattr(DatabaseScheduler, "install_default_entries", read_the_schedule)
    signals._schedule_sweep_when_beat_starts()
    schedule.prepare_beat()

    # Then at its first tick (which asks for the schedule, and so whether it changed) it sends the sweep every
    # second, not every minute (not ticked here: a due sweep would be sent to the tests' broker)
    assert scheduler.schedule[SWEEP_TASK_NAME].schedule.run_every.total_seconds() == 1
