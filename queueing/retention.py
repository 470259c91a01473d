"""Retention: delete finished jobs after a while, so that the failed-job table cannot grow without bound.

``resolved`` and ``discarded`` jobs are deleted ``RETAIN_FINISHED_DAYS`` after they got there, ``dead`` ones
``RETAIN_DEAD_DAYS`` after they died (longer: a dead job waits for a person); 0 keeps that state for ever.
``failed`` and ``retrying`` jobs are never deleted. ``prune`` deletes in batches of ``PRUNE_BATCH_SIZE`` rows,
each its own short ``DELETE`` that checks the state again (a dead job an operator retries meanwhile is kept),
and stops after ``max_jobs``. The periodic task ``queueing.prune_failed_jobs`` (every ``PRUNE_INTERVAL``, at
most ``PRUNE_MAX_JOBS`` per run) and ``manage.py prune_failed_jobs [--dry-run]`` both call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction

from queueing.conf import get_settings
from queueing.models import PRUNABLE_STATUSES, FailedJob

logger = logging.getLogger(__name__)

Status = FailedJob.Status


def cutoffs(
    *, now: datetime, finished_days: float | None = None, dead_days: float | None = None
) -> dict[str, datetime]:
    """Per prunable state, the moment before which its jobs are deleted (a state kept for ever is left out).

    ``finished_days`` and ``dead_days`` override ``RETAIN_FINISHED_DAYS`` and ``RETAIN_DEAD_DAYS``.
    """
    conf = get_settings()
    finished = conf.retain_finished_days if finished_days is None else finished_days
    dead = conf.retain_dead_days if dead_days is None else dead_days
    days = {Status.RESOLVED: finished, Status.DISCARDED: finished, Status.DEAD: dead}
    return {str(status): now - timedelta(days=age) for status, age in days.items() if age > 0}


@dataclass(frozen=True)
class StatePrune:
    """What a prune did (or would do) to the jobs of one state."""

    status: str
    before: datetime
    count: int  # deleted; in a dry run, how many would be


@dataclass(frozen=True)
class PruneResult:
    dry_run: bool
    states: tuple[StatePrune, ...] = ()
    batches: int = 0
    complete: bool = True  # False: max_jobs was reached with prunable jobs left
    kept: tuple[str, ...] = field(default=())  # states kept for ever (retention 0)

    @property
    def total(self) -> int:
        return sum(state.count for state in self.states)

    def describe(self) -> list[str]:
        """One line per state, for a person: what was (or would be) deleted."""
        verb = "would delete" if self.dry_run else "deleted"
        lines = [
            f"{state.status}: {verb} {state.count} job{'s' if state.count != 1 else ''} "
            f"(since before {state.before:%Y-%m-%d %H:%M} UTC)"
            for state in self.states
        ]
        lines += [f"{status}: kept for ever (retention 0)" for status in self.kept]
        if not self.complete:
            lines.append("stopped at the limit of this run; the rest goes next time")
        return lines


def prune(
    *,
    now: datetime,
    before: dict[str, datetime] | None = None,
    batch_size: int | None = None,
    max_jobs: int | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete the jobs of each prunable state older than its cutoff (``cutoffs()`` unless ``before`` is given).

    In batches of ``batch_size`` (``PRUNE_BATCH_SIZE``), at most ``max_jobs`` rows in all (None: no limit).
    ``dry_run`` counts instead of deleting.
    """
    before = cutoffs(now=now) if before is None else before
    batch = batch_size or get_settings().prune_batch_size
    kept = tuple(str(status) for status in PRUNABLE_STATUSES if status not in before)
    states: list[StatePrune] = []
    batches, left = 0, max_jobs
    for status, cutoff in before.items():
        prunable = FailedJob.objects.prunable(before=cutoff, statuses=[status])
        if dry_run:
            count = prunable.count()
            states.append(StatePrune(status=status, before=cutoff, count=count if left is None else min(count, left)))
            left = None if left is None else max(0, left - count)
            continue
        deleted = 0
        while left is None or left > 0:
            take = batch if left is None else min(batch, left)
            ids = list(prunable.order_by("id").values_list("id", flat=True)[:take])
            if not ids:
                break
            with transaction.atomic():
                # Filtered by state again: a row that left it since (an operator retried it) stays.
                count, _ = prunable.filter(pk__in=ids).delete()
            deleted, batches = deleted + count, batches + 1
            left = None if left is None else left - count
            if len(ids) < take:
                break
        states.append(StatePrune(status=status, before=cutoff, count=deleted))
    complete = left is None or left > 0 or not _any_left(before)
    result = PruneResult(dry_run=dry_run, states=tuple(states), batches=batches, complete=complete, kept=kept)
    if result.total and not dry_run:
        logger.info("prune: %s", "; ".join(result.describe()))
    return result


def _any_left(before: dict[str, datetime]) -> bool:
    return any(
        FailedJob.objects.prunable(before=cutoff, statuses=[status]).exists() for status, cutoff in before.items()
    )
