"""The Beat schedules of the sweep and of the prune, kept in django-celery-beat's tables (DatabaseScheduler).

It is created when the database is migrated and again when Beat starts, idempotently: one periodic task
named ``SWEEP_TASK_NAME``, its interval the current check interval (``CHECK_INTERVAL``, or the override
recorded in ``AutoRetryConfig``). ``set_sweep_interval`` is the one function that changes that interval while
the system runs; ``retry.start_auto_retry`` and the admin's schedule pages both call it.

The prune (``queueing/retention.py``) is one more periodic task, ``PRUNE_TASK_NAME``, every ``PRUNE_INTERVAL``
seconds, created at the same moments. An operator may change or disable it in the admin; that is kept until
``PRUNE_INTERVAL`` itself changes.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery.signals import beat_init
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from queueing.conf import get_settings
from queueing.models import AutoRetryConfig

logger = logging.getLogger(__name__)

SWEEP_TASK_NAME = "queueing: sweep failed jobs"
SWEEP_TASK = "queueing.sweep_failed_jobs"
PRUNE_TASK_NAME = "queueing: prune old failed jobs"
PRUNE_TASK = "queueing.prune_failed_jobs"


def ensure_sweep_schedule(*, check_interval_seconds: int | None = None, enable: bool | None = None) -> PeriodicTask:
    """Create or update the sweep's periodic task. Changes reach a running Beat without a restart."""
    from queueing.autoretry import current_policy

    every = check_interval_seconds or current_policy().check_interval_seconds
    task = PeriodicTask.objects.select_related("interval").filter(name=SWEEP_TASK_NAME).first()
    if task is not None and task.interval is not None and interval_seconds(task.interval) == every:
        interval = task.interval  # as long as asked (e.g. "2 minutes" for 120 s): keep the operator's choice
    else:
        # Not get_or_create: django-celery-beat allows duplicate intervals, and its admin can make them.
        same = IntervalSchedule.objects.filter(every=every, period=IntervalSchedule.SECONDS).order_by("pk")
        interval = same.first() or IntervalSchedule.objects.create(every=every, period=IntervalSchedule.SECONDS)
    task, created = PeriodicTask.objects.get_or_create(
        name=SWEEP_TASK_NAME,
        defaults={"task": SWEEP_TASK, "interval": interval, "enabled": True if enable is None else enable},
    )
    changed: list[str] = []
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


def set_sweep_interval(seconds: int, *, enable: bool | None = None) -> PeriodicTask:
    """Make the sweep run every ``seconds``, for good, in one transaction.

    Records ``seconds`` as the running system's check interval (``AutoRetryConfig.check_interval_seconds``, so
    that migrations and Beat restarts keep it) and puts the sweep's periodic task on that interval (a running
    Beat picks it up within a few seconds). ``enable`` also switches the sweep on or off; None leaves it.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise ValueError(f"the sweep interval must be a whole number of seconds >= 1, got {seconds!r}")
    with transaction.atomic():
        AutoRetryConfig.objects.get_or_create(pk=1)
        # Only this field: a change of the other settings made at the same moment is kept.
        AutoRetryConfig.objects.filter(pk=1).update(check_interval_seconds=seconds, updated_at=timezone.now())
        task = ensure_sweep_schedule(check_interval_seconds=seconds, enable=enable)
    logger.info("sweep interval set to %ss", seconds)
    return task


def interval_seconds(interval: IntervalSchedule) -> float:
    """How long ``interval`` is, in seconds (it may be given in minutes, hours, days or microseconds)."""
    return timedelta(**{interval.period: interval.every}).total_seconds()


def ensure_prune_schedule() -> PeriodicTask:
    """Create the prune's periodic task, every ``PRUNE_INTERVAL`` seconds; put it back on that interval when
    the setting changed. Enabled when created; an operator's switch in the admin is kept."""
    every = get_settings().prune_interval_seconds
    same = IntervalSchedule.objects.filter(every=every, period=IntervalSchedule.SECONDS).order_by("pk")
    task = PeriodicTask.objects.select_related("interval").filter(name=PRUNE_TASK_NAME).first()
    if task is None:
        interval = same.first() or IntervalSchedule.objects.create(every=every, period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.create(name=PRUNE_TASK_NAME, task=PRUNE_TASK, interval=interval, enabled=True)
        logger.info("prune schedule: every %ss", every)
    elif task.task != PRUNE_TASK or task.interval is None or interval_seconds(task.interval) != every:
        task.task = PRUNE_TASK
        task.interval = same.first() or IntervalSchedule.objects.create(every=every, period=IntervalSchedule.SECONDS)
        task.crontab, task.solar, task.clocked = None, None, None
        task.save()  # save() so that Beat reloads
        logger.info("prune schedule: every %ss", every)
    return task


def ensure_sweep_schedule_after_migrate(**kwargs: Any) -> None:
    ensure_sweep_schedule()
    ensure_prune_schedule()


def prepare_beat() -> None:
    """At a Beat's start (``beat_init``; ``signals.py`` ensures the sweep's schedule there too): ensure the
    prune's, then mark the schedule changed, so that this Beat reads it all again at its first tick, which comes
    after every ``beat_init`` handler, whatever their order.

    django-celery-beat's ``DatabaseScheduler`` reads the schedule, and only then takes the time of the last
    change (``PeriodicTasks``) as the mark it compares with at each tick; Celery makes the scheduler before it
    sends ``beat_init``. A change made between that read and that mark is never seen, until the scheduler's
    forced reload every 5 minutes: another Beat, or an operator, that moved the sweep from 60 s to 1 s in that
    moment left this Beat sending it every 60 s (docs/reliability.md, F16). Every Beat that runs reloads once
    (each writes its own pending ``last_run_at`` first); the sweep's claims keep a sweep sent early harmless.
    """
    ensure_prune_schedule()
    PeriodicTasks.update_changed()


@beat_init.connect(weak=False)
def _prepare_beat(sender: Any = None, **_: Any) -> None:
    prepare_beat()
