"""The tasks Beat sends (``queueing/schedule.py``): the sweep (``queueing.sweep_failed_jobs``, every
``CHECK_INTERVAL``) and the prune (``queueing.prune_failed_jobs``, every ``PRUNE_INTERVAL``). Registered in every
worker by ``tasks.py``, which imports this module.
"""

from __future__ import annotations

import logging

from celery import shared_task

from queueing import spool, sweep
from queueing.conf import get_settings
from queueing.tasks import RetryableTask

logger = logging.getLogger(__name__)


@shared_task(
    base=RetryableTask,
    name="queueing.sweep_failed_jobs",
    autoretry_for=(),
    record_failures=False,
    ignore_result=True,
)
def sweep_failed_jobs() -> dict[str, int]:
    """Beat sends this every ``CHECK_INTERVAL``; a worker runs it. Re-sends due failed jobs, then alerts."""
    import time

    from queueing import alerts, status

    started = time.monotonic()
    try:
        spool.replay()  # this host's spool, if the database and the broker were down a moment ago
    except OSError:
        logger.exception("spool: could not replay %s", spool.spool_dir())
    result = sweep.sweep()
    status.record_sweep_duration(time.monotonic() - started)
    alerts.evaluate_safely()  # fires on a threshold crossing; never raises
    return {
        "recovered": result.recovered,
        "claimed": result.claimed,
        "sent": result.sent,
        "unknown": result.unknown,
    }


@shared_task(
    base=RetryableTask,
    name="queueing.prune_failed_jobs",
    autoretry_for=(),
    record_failures=False,
    ignore_result=True,
)
def prune_failed_jobs() -> dict[str, int]:
    """Beat sends this every ``PRUNE_INTERVAL``: deletes old finished and dead jobs, at most ``PRUNE_MAX_JOBS``."""
    from django.utils import timezone

    from queueing import retention

    result = retention.prune(now=timezone.now(), max_jobs=get_settings().prune_max_jobs)
    return {state.status: state.count for state in result.states}
