"""Retention: old resolved, discarded and dead jobs are deleted, in batches; nothing else ever is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask

from queueing import periodic, retention, schedule
from queueing.models import FailedJob

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status
DAY = timedelta(days=1)


@pytest.fixture
def make_job(make_failed_job: Callable[..., FailedJob], now: datetime) -> Callable[..., FailedJob]:
    """A job in ``status`` that got there ``days_ago`` days ago."""
    stamp = {Status.RESOLVED: "resolved_at", Status.DISCARDED: "discarded_at", Status.DEAD: "dead_at"}

    def make(status: str, days_ago: float) -> FailedJob:
        at = now - timedelta(days=days_ago)
        fields: dict[str, Any] = {"status": status, "last_failed_at": at, "first_failed_at": at}
        if status in stamp:
            fields[stamp[status]] = at
        if status != Status.FAILED:
            fields["next_retry_at"] = None
        return make_failed_job(**fields)

    return make


@pytest.fixture
def a_bit_of_everything(make_job: Callable[..., FailedJob]) -> dict[str, FailedJob]:
    """One job per state, old (400 days) and recent (1 day)."""
    return {
        f"{status}-{age}": make_job(status, days)
        for status in [Status.FAILED, Status.RETRYING, Status.RESOLVED, Status.DISCARDED, Status.DEAD]
        for age, days in [("old", 400), ("recent", 1)]
    }


def left(jobs: dict[str, FailedJob]) -> set[str]:
    kept = set(FailedJob.objects.values_list("pk", flat=True))
    return {name for name, job in jobs.items() if job.pk in kept}


def test_prunable_is_each_final_state_and_dead_older_than_before(
    a_bit_of_everything: dict[str, FailedJob], now: datetime
) -> None:
    prunable = FailedJob.objects.prunable(before=now - 30 * DAY)
    assert {job.pk for job in prunable} == {
        a_bit_of_everything[name].pk for name in ["resolved-old", "discarded-old", "dead-old"]
    }
    only_dead = FailedJob.objects.prunable(before=now, statuses=[Status.DEAD])
    assert {job.pk for job in only_dead} == {a_bit_of_everything[n].pk for n in ["dead-old", "dead-recent"]}


def test_failed_and_retrying_jobs_are_never_prunable(now: datetime) -> None:
    with pytest.raises(ValueError, match="only resolved, discarded, dead jobs can be pruned, not failed"):
        FailedJob.objects.prunable(before=now, statuses=[Status.FAILED])


def test_a_job_without_its_timestamp_is_aged_by_its_last_change(make_failed_job: Any, now: datetime) -> None:
    job = make_failed_job(status=Status.RESOLVED, resolved_at=None, next_retry_at=None)
    FailedJob.objects.filter(pk=job.pk).update(updated_at=now - 400 * DAY)
    assert list(FailedJob.objects.prunable(before=now - DAY)) == [job]


def test_prune_deletes_old_finished_jobs_and_older_dead_ones_only(
    a_bit_of_everything: dict[str, FailedJob], make_job: Any, now: datetime, configure: Any
) -> None:
    # Given finished jobs kept 7 days and dead ones 180, and a dead job of 30 days
    configure(RETAIN_FINISHED_DAYS=7, RETAIN_DEAD_DAYS=180)
    make_job(Status.DEAD, 30)

    result = retention.prune(now=now)

    assert {(s.status, s.count) for s in result.states} == {("resolved", 1), ("discarded", 1), ("dead", 1)}
    assert left(a_bit_of_everything) == set(a_bit_of_everything) - {"resolved-old", "discarded-old", "dead-old"}
    assert FailedJob.objects.filter(status=Status.DEAD).count() == 2  # the recent one and the 30-day one


def test_prune_deletes_in_batches_with_a_fixed_number_of_queries_each(
    make_job: Any, now: datetime, configure: Any
) -> None:
    configure(RETAIN_FINISHED_DAYS=7, PRUNE_BATCH_SIZE=10)
    for _ in range(25):
        make_job(Status.RESOLVED, 30)
    make_job(Status.RESOLVED, 1)

    with CaptureQueriesContext(connection) as queries:
        result = retention.prune(now=now)

    assert (result.total, result.batches, result.complete) == (25, 3, True)
    assert FailedJob.objects.count() == 1
    # Per batch: read the ids, delete them (+ begin and commit on SQLite); per state: at most one empty read
    assert len(queries) <= 3 * 4 + 3, [q["sql"] for q in queries.captured_queries]


def test_prune_stops_at_its_limit_and_says_the_rest_goes_next_time(make_job: Any, now: datetime) -> None:
    for _ in range(12):
        make_job(Status.DISCARDED, 30)

    result = retention.prune(now=now, batch_size=5, max_jobs=7)

    assert (result.total, result.complete) == (7, False)
    assert FailedJob.objects.count() == 5
    assert "the rest goes next time" in result.describe()[-1]


def test_a_dry_run_deletes_nothing_and_counts_per_state(
    a_bit_of_everything: dict[str, FailedJob], now: datetime
) -> None:
    result = retention.prune(now=now, dry_run=True)

    assert {(s.status, s.count) for s in result.states} == {("resolved", 1), ("discarded", 1), ("dead", 1)}
    assert FailedJob.objects.count() == len(a_bit_of_everything)
    assert result.describe()[0].startswith("resolved: would delete 1 job ")


def test_a_retention_of_0_keeps_that_state_for_ever(make_job: Any, now: datetime, configure: Any) -> None:
    configure(RETAIN_DEAD_DAYS=0)
    make_job(Status.DEAD, 4000)

    result = retention.prune(now=now)

    assert FailedJob.objects.count() == 1
    assert "dead: kept for ever (retention 0)" in result.describe()


# --- the command -----------------------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("prune_failed_jobs", *args, stdout=out)
    return out.getvalue()


def test_the_command_tells_what_it_deleted_per_state(a_bit_of_everything: dict[str, FailedJob]) -> None:
    output = run()

    assert "resolved: deleted 1 job (since before" in output
    assert "discarded: deleted 1 job" in output
    assert "dead: deleted 1 job" in output
    assert "deleted 3 job(s) in all" in output
    assert len(left(a_bit_of_everything)) == 7


def test_the_commands_dry_run_deletes_nothing(a_bit_of_everything: dict[str, FailedJob]) -> None:
    output = run("--dry-run")

    assert "resolved: would delete 1 job" in output
    assert "would delete 3 job(s) in all; dry run, nothing deleted" in output
    assert FailedJob.objects.count() == 10


def test_the_command_takes_its_own_ages(a_bit_of_everything: dict[str, FailedJob]) -> None:
    output = run("--older-than", "0.5", "--dead-older-than", "0")

    assert "resolved: deleted 2 jobs" in output
    assert "dead: kept for ever" in output
    assert left(a_bit_of_everything) == {
        "failed-old", "failed-recent", "retrying-old", "retrying-recent", "dead-old", "dead-recent"
    }  # fmt: skip


def test_the_command_refuses_a_negative_age() -> None:
    with pytest.raises(CommandError, match="a number of days >= 0"):
        run("--older-than", "-3")


# --- the periodic task -----------------------------------------------------------------------------------------


def test_the_prune_is_scheduled_in_beat_every_prune_interval(configure: Any) -> None:
    configure(PRUNE_INTERVAL=600)
    task = schedule.ensure_prune_schedule()

    assert (task.task, task.enabled, task.interval.every, task.interval.period) == (
        "queueing.prune_failed_jobs",
        True,
        600,
        "seconds",
    )
    configure(PRUNE_INTERVAL=1200)
    schedule.ensure_prune_schedule()
    assert PeriodicTask.objects.get(name=schedule.PRUNE_TASK_NAME).interval.every == 1200


def test_an_operators_switch_of_the_prune_is_kept(configure: Any) -> None:
    PeriodicTask.objects.filter(pk=schedule.ensure_prune_schedule().pk).update(enabled=False)
    assert schedule.ensure_prune_schedule().enabled is False


def test_the_periodic_prune_deletes_at_most_prune_max_jobs(make_job: Any, configure: Any) -> None:
    configure(PRUNE_MAX_JOBS=4, PRUNE_BATCH_SIZE=3)
    for _ in range(6):
        make_job(Status.RESOLVED, 30)

    assert periodic.prune_failed_jobs.apply().get() == {"resolved": 4, "discarded": 0, "dead": 0}
    assert FailedJob.objects.count() == 2
