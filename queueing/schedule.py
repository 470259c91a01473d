"""The sweep's Beat schedule, kept in django-celery-beat's tables (DatabaseScheduler).

It is created when the database is migrated and again when Beat starts, idempotently: one periodic task
named ``SWEEP_TASK_NAME``, its interval the current ``CHECK_INTERVAL``.
"""

from __future__ import annotations

import logging
from typing import Any

from django_celery_beat.models import IntervalSchedule, PeriodicTask

logger = logging.getLogger(__name__)

SWEEP_TASK_NAME = "queueing: sweep failed jobs"
SWEEP_TASK = "queueing.sweep_failed_jobs"


def ensure_sweep_schedule(*, check_interval_seconds: int | None = None, enable: bool | None = None) -> PeriodicTask:
    """Create or update the sweep's periodic task. Changes reach a running Beat without a restart."""
    from queueing.autoretry import current_policy

    every = check_interval_seconds or current_policy().check_interval_seconds
    # Not get_or_create: django-celery-beat allows duplicate intervals, and its admin can make them.
    same = IntervalSchedule.objects.filter(every=every, period=IntervalSchedule.SECONDS).order_by("pk")
    interval = same.first() or IntervalSchedule.objects.create(every=every, period=IntervalSchedule.SECONDS)
    task, created = PeriodicTask.objects.get_or_create(
        name=SWEEP_TASK_NAME,
        defaults={"task": SWEEP_TASK, "interval": interval, "enabled": True if enable is None else enable},
    )
    changed = []
    if task.task != SWEEP_TASK:
        task.task, changed = SWEEP_TASK, [*changed, "task"]
    if task.interval_id != interval.pk or task.crontab_id or task.solar_id or task.clocked_id:
        task.interval, task.crontab, task.solar, task.clocked = interval, None, None, None
        changed += ["interval", "crontab", "solar", "clocked"]
    if enable is not None and task.enabled != enable:
        task.enabled, changed = enable, [*changed, "enabled"]
    if changed:
        task.save()  # save() (not update()) so that PeriodicTasks.changed() tells Beat to reload
    if created or changed:
        logger.info("sweep schedule: every %ss (%s)", every, "enabled" if task.enabled else "disabled")
    return task


def ensure_sweep_schedule_after_migrate(**kwargs: Any) -> None:
    ensure_sweep_schedule()
