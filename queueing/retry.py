"""The Python API, as the seed offers it.

from queueing.retry import start_auto_retry, get_retry_manager

start_auto_retry(max_retries=5, retry_delay=600, check_interval=120)   # seconds or timedelta
get_retry_manager().get_stats()                    # {"whatsapp-send": {"failed": 2, "dead": 0, ...}}
get_retry_manager().retry_all_failed("whatsapp-send")   # {"total": 2, "retried": 2}
get_retry_manager().retry_all_failed("whatsapp-send", dry_run=True, report=True)  # and per failure group
pause_auto_retry("whatsapp-send")                  # the sweep leaves that queue alone; the rest goes on
resume_auto_retry("whatsapp-send")
pause_auto_retry(group=7)                          # or one failure group (admin: "Failure groups")
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from queueing import autoretry, operations, pauses, status
from queueing.models import AutoRetryConfig
from queueing.schedule import ensure_sweep_schedule, set_sweep_interval

logger = logging.getLogger(__name__)


def _seconds(value: float | timedelta | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return seconds


def start_auto_retry(
    max_retries: int | None = None,
    retry_delay: float | timedelta | None = None,
    check_interval: float | timedelta | None = None,
) -> autoretry.RetryPolicy:
    """Turn the automatic sweep on, changing the policy of the running system (no restart needed).

    Arguments left out keep their current values. The change is stored in the database: the sweep reads it
    at its next run and Beat picks up the new interval within a few seconds. Returns the policy now in force.
    """
    if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
        raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
    delay = _seconds(retry_delay, "retry_delay")
    interval = _seconds(check_interval, "check_interval")
    if interval is not None and interval < 1:
        raise ValueError(f"check_interval must be at least 1 second, got {check_interval!r}")
    changes = {
        name: value
        for name, value in (("max_retries", max_retries), ("retry_delay_seconds", delay))
        if value is not None
    }
    with transaction.atomic():
        AutoRetryConfig.objects.get_or_create(pk=1)
        if changes:  # only these fields: a change made elsewhere at the same moment is kept
            AutoRetryConfig.objects.filter(pk=1).update(**changes, updated_at=timezone.now())
        if interval is None:
            ensure_sweep_schedule(enable=True)
        else:
            set_sweep_interval(math.ceil(interval), enable=True)
    policy = autoretry.current_policy()
    logger.info("auto-retry started: %s", autoretry.describe(policy))
    return policy


def stop_auto_retry() -> None:
    """Pause the automatic sweep (failed jobs stay failed until it is started again or retried by hand)."""
    ensure_sweep_schedule(enable=False)
    logger.info("auto-retry stopped")


def pause_auto_retry(queue: str | None = None, *, group: int | None = None, reason: str = "") -> bool:
    """Pause the automatic retries of one queue (or one failure group); normal processing goes on.

    The sweep leaves its failed jobs where they are; new calls run, fail and are recorded as usual, and an
    operator can still retry them. ``False`` if it was paused already.
    """
    return pauses.pause(queue=queue, group=group, reason=reason)


def resume_auto_retry(queue: str | None = None, *, group: int | None = None) -> bool:
    """Undo ``pause_auto_retry``: the sweep takes the queue's (or the group's) due jobs again."""
    return pauses.resume(queue=queue, group=group)


class RetryManager:
    """Operator verbs over the failed-job table."""

    def get_stats(self) -> dict[str, dict[str, int]]:
        """Per known queue, how many jobs are in each state."""
        return status.job_counts()

    def retry_all_failed(
        self,
        queue_name: str | None = None,
        *,
        group: int | None = None,
        task_name: str | None = None,
        exception_class: str | None = None,
        dry_run: bool = False,
        rate_per_second: float | None = None,
        report: bool = False,
    ) -> dict[str, Any]:
        """Re-send every failed and dead job of ``queue_name`` (all queues if None), narrowed to one failure
        ``group``, ``task_name`` or ``exception_class``, now; at most ``rate_per_second``. ``{"total", "retried"}``;
        ``report=True``: also what was not sent and why (``notSent``), and a ``dry_run``'s selection per failure
        group (``groups``: what would be sent, what would not and why; ``operations.RetryOutcome.report``)."""
        selection = operations.Selection(
            queue=queue_name, group=group, task_name=task_name, exception_class=exception_class
        )
        outcome = operations.retry_now(
            selection=selection, dry_run=dry_run, rate_per_second=rate_per_second, actor="python-api"
        )
        return outcome.report() if report else outcome.as_dict()


def get_retry_manager() -> RetryManager:
    return RetryManager()
