"""The Python API: start_auto_retry and get_retry_manager, as the seed uses them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from queueing import autoretry, sweep
from queueing.models import FailedJob
from queueing.retry import get_retry_manager, start_auto_retry, stop_auto_retry
from queueing.schedule import SWEEP_TASK, SWEEP_TASK_NAME

pytestmark = pytest.mark.django_db(transaction=True)


def sweep_task() -> PeriodicTask:
    return PeriodicTask.objects.get(name=SWEEP_TASK_NAME)


def test_migrating_schedules_the_sweep_once() -> None:
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)

    [task] = PeriodicTask.objects.filter(task=SWEEP_TASK)
    assert task.enabled
    assert task.interval.every == 1  # QUEUEING_CHECK_INTERVAL of the tests


def test_start_auto_retry_changes_the_running_policy_and_the_beat_interval() -> None:
    policy = start_auto_retry(max_retries=5, retry_delay=timedelta(minutes=10), check_interval=120)

    assert policy.as_dict() == {"max_retries": 5, "retry_delay_seconds": 600.0, "check_interval_seconds": 120}
    assert autoretry.current_policy() == policy
    assert sweep_task().interval.every == 120
    assert sweep_task().enabled


def test_start_auto_retry_keeps_what_it_is_not_given() -> None:
    start_auto_retry(max_retries=5)
    policy = start_auto_retry(retry_delay=30)
    assert (policy.max_retries, policy.retry_delay_seconds) == (5, 30.0)


def test_a_new_max_retries_decides_when_jobs_die(make_failed_job: Any, broker: redis.Redis, now: Any) -> None:
    job = make_failed_job(queue="default", retry_count=3)
    assert sweep.sweep(now=now).sent == 0

    start_auto_retry(max_retries=4)

    assert sweep.sweep(now=now).sent == 1
    job.refresh_from_db()
    assert job.retry_count == 4


def test_stop_auto_retry_disables_the_sweep_and_start_enables_it_again() -> None:
    stop_auto_retry()
    assert not sweep_task().enabled
    start_auto_retry()
    assert sweep_task().enabled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries must be a whole number"),
        ({"retry_delay": -5}, "retry_delay must not be negative"),
        ({"check_interval": 0.5}, "check_interval must be at least 1 second"),
    ],
)
def test_start_auto_retry_refuses_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        start_auto_retry(**kwargs)


def test_get_stats_counts_jobs_per_queue_and_state(make_failed_job: Any) -> None:
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send", status=FailedJob.Status.DEAD)
    make_failed_job(queue="reports", status=FailedJob.Status.RESOLVED)

    stats = get_retry_manager().get_stats()

    assert stats["whatsapp-send"] == {"failed": 1, "retrying": 0, "resolved": 0, "dead": 1, "discarded": 0}
    assert stats["reports"]["resolved"] == 1
    assert stats["default"] == dict.fromkeys(FailedJob.Status.values, 0)


def test_retry_all_failed_answers_total_and_retried(make_failed_job: Any, broker: redis.Redis) -> None:
    send = {"task_name": "messaging.tasks.send_whatsapp_message", "args": ["default", "+15550001", "hi"]}
    make_failed_job(queue="whatsapp-send", **send)
    make_failed_job(queue="whatsapp-send", status=FailedJob.Status.DEAD, **send)
    make_failed_job(queue="default")

    assert get_retry_manager().retry_all_failed("whatsapp-send") == {"total": 2, "retried": 2}
    assert broker.llen("whatsapp-send") == 2
    assert broker.llen("default") == 0


def test_the_sweep_schedule_survives_duplicate_intervals_made_in_the_admin() -> None:
    from django_celery_beat.models import IntervalSchedule

    # Given two identical intervals (django-celery-beat allows them)
    IntervalSchedule.objects.create(every=45, period=IntervalSchedule.SECONDS)
    IntervalSchedule.objects.create(every=45, period=IntervalSchedule.SECONDS)

    start_auto_retry(check_interval=45)
    call_command("migrate", verbosity=0)

    assert sweep_task().interval.every == 45
