"""Operators' verbs: retry now, discard, mark dead. Admin, API, ``retry_all_failed`` and the Python API call these."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from queueing import bulkplan, lifecycle
from queueing.claims import ClaimedBy, claim, mark_unknown_tasks_dead, publish, require_autocommit
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet
from queueing.registry import validate_queue

logger = logging.getLogger(__name__)

Status = FailedJob.Status


class OperatorVerb(Protocol):
    def __call__(self, job: FailedJob, /, *, now: datetime, text: str, actor: str = "") -> None: ...


@dataclass(frozen=True)
class RetryOutcome:
    total: int  # failed and dead jobs found
    retried: int  # sent
    unknown: int = 0  # not sent: the task is not registered (marked dead with the reason)
    unsendable: int = 0  # not sent: the stored call no longer fits the task (now dead)
    refused: int = 0  # not sent: the broker refused; the run stopped there
    expired: int = 0  # not sent: the call's own ``expires`` had passed (now dead)
    retried_ids: tuple[int, ...] = ()  # the ids of the jobs sent (``retried`` of them), in the order sent
    groups: tuple[bulkplan.GroupPlan, ...] = ()  # a dry run's selection per failure group (``bulkplan``)
    dry_run: bool = False  # nothing sent: ``unknown``, ``unsendable`` and ``expired`` say what would not be

    @property
    def left_alone(self) -> int:
        """Found but neither sent nor refused for a known reason: changed state meanwhile, or the run stopped."""
        return max(0, self.total - self.retried - self.unknown - self.unsendable - self.refused - self.expired)

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "retried": self.retried}

    def report(self) -> dict[str, Any]:
        """``as_dict()`` and what was not sent and why, per reason (a dry run: what would not be, and what would
        be: ``wouldSend``), and a dry run's selection per failure group."""
        return {
            **self.as_dict(),
            "dryRun": self.dry_run,
            **({"wouldSend": self.total - self.unknown - self.unsendable - self.expired} if self.dry_run else {}),
            "notSent": {
                "unknownTask": self.unknown,
                "unsendable": self.unsendable,
                "refused": self.refused,
                "expired": self.expired,
                "leftAlone": 0 if self.dry_run else self.left_alone,
            },
            "groups": [group.as_dict() for group in self.groups],
        }


def combined(outcomes: Iterable[RetryOutcome]) -> RetryOutcome:
    """The outcome of several runs of one bulk retry (each on part of its selection), as one."""
    outcomes = list(outcomes)
    return RetryOutcome(
        total=sum(o.total for o in outcomes),
        retried=sum(o.retried for o in outcomes),
        unknown=sum(o.unknown for o in outcomes),
        unsendable=sum(o.unsendable for o in outcomes),
        refused=sum(o.refused for o in outcomes),
        expired=sum(o.expired for o in outcomes),
        retried_ids=tuple(pk for o in outcomes for pk in o.retried_ids),
    )


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which failed and dead jobs a bulk retry takes: every filter an operator can set, ANDed; None: any."""

    queue: str | None = None
    ids: Iterable[int] | None = None
    task_name: str | None = None
    exception_class: str | None = None
    group: int | None = None  # one failure group (``groups``)
    where: QuerySet[FailedJob] | None = None  # e.g. the admin's filtered changelist

    def candidates(self, now: datetime) -> FailedJobQuerySet:
        # Each job at most once per call: one that fails again while this runs has last_failed_at > now, and one
        # this run had to give up on (its stored call no longer fits its task) has dead_at == now.
        jobs = FailedJob.objects.retryable_by_hand().in_queue(self.queue).in_group(self.group)
        jobs = jobs.filter(last_failed_at__lte=now).exclude(dead_at__gte=now)
        if self.ids is not None:
            jobs = jobs.filter(pk__in=list(self.ids))
        if self.task_name is not None:
            jobs = jobs.filter(task_name=self.task_name)
        if self.exception_class is not None:
            jobs = jobs.filter(exception_class=self.exception_class)
        if self.where is not None:
            jobs = jobs.filter(pk__in=self.where.order_by().values("pk"))
        return jobs


def retry_now(
    *,
    queue: str | None = None,
    ids: Iterable[int] | None = None,
    group: int | None = None,
    selection: Selection | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int | None = None,
    rate_per_second: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    actor: str = "",
) -> RetryOutcome:
    """Re-send failed and dead jobs now (of one queue, one failure group, the given ids, or a ``Selection``), each
    at most once per call.

    ``total`` counts the failed and dead jobs found; ``retried`` those sent; the outcome says what was not sent
    and why. Jobs being retried at this moment are left alone. Manual retries do not use up automatic ones
    (``manual_retry_count`` counts them), and go whatever the breakers and pauses (those hold back the sweep).
    ``dry_run``: send nothing; list the selection per failure group, with what would be sent and what would not
    and why (``bulkplan``). ``rate_per_second``: at
    most that many jobs sent per second (a recovering service). ``on_progress(sent, total)`` after each batch.
    The jobs are read in batches of ``batch_size`` in id order (keyset), so memory and each query stay bounded
    whatever the number of jobs.
    ``actor`` (who asked: ``lifecycle`` tells the forms) goes into each claimed job's history.
    """
    require_autocommit()
    selection = selection or Selection(queue=queue, ids=ids, group=group)
    validate_queue(selection.queue)
    now = now or timezone.now()
    limit = batch_size or get_settings().batch_size
    if rate_per_second:
        limit = max(1, min(limit, int(rate_per_second)))
    candidates = selection.candidates(now)
    total = candidates.count()
    if dry_run:
        plans = bulkplan.plan(candidates, now=now, batch_size=get_settings().batch_size)
        would_not = bulkplan.not_sent_total(plans)
        return RetryOutcome(
            total=total,
            retried=0,
            unknown=would_not["unknownTask"],
            unsendable=would_not["unsendable"],
            expired=would_not["expired"],
            groups=plans,
            dry_run=True,
        )
    unknown = 0
    while marked := mark_unknown_tasks_dead(candidates, now=now, limit=limit):
        unknown += marked
    retried_ids: list[int] = []
    unsendable = refused = expired = 0
    started = time.monotonic()
    after_id = 0
    while batch := list(candidates.filter(pk__gt=after_id).order_by("pk").values_list("pk", flat=True)[:limit]):
        after_id = batch[-1]
        claimed = claim(candidates.filter(pk__in=batch), now=now, claimed_by=ClaimedBy.OPERATOR, limit=limit)
        if actor and claimed:
            lifecycle.note_retry_requested(claimed, now=now, actor=actor)
        result = publish(claimed, now=now)
        retried_ids += result.sent_ids
        unsendable += result.unsendable
        expired += result.expired
        if on_progress is not None:
            on_progress(len(retried_ids), total)
        if result.refused:
            refused = result.refused
            break  # the broker refuses: stop rather than spin on the released rows
        if rate_per_second and (wait := len(retried_ids) / rate_per_second - (time.monotonic() - started)) > 0:
            time.sleep(wait)
    outcome = RetryOutcome(
        total=total,
        retried=len(retried_ids),
        unknown=unknown,
        unsendable=unsendable,
        refused=refused,
        expired=expired,
        retried_ids=tuple(retried_ids),
    )
    logger.info("bulk retry: %s", outcome.report())
    return outcome


def discard(
    *, ids: Iterable[int], now: datetime | None = None, reason: str = "discarded by an operator", actor: str = ""
) -> list[int]:
    """Give up on failed or dead jobs (final). Returns the ids of the jobs discarded; others are left alone."""
    now = now or timezone.now()
    allowed: list[str] = [Status.FAILED, Status.DEAD]
    return _each_allowed(ids, allowed=allowed, verb=lifecycle.discard, now=now, text=reason, actor=actor)


def discard_group(*, group: int, now: datetime | None = None, reason: str = "") -> list[int]:
    """Give up on every failed and dead job of failure group ``group``. Returns the ids discarded."""
    ids = FailedJob.objects.retryable_by_hand().in_group(group).values_list("pk", flat=True)
    return discard(ids=list(ids), now=now, reason=reason or f"discarded with its failure group {group} by an operator")


def mark_dead(
    *, ids: Iterable[int], now: datetime | None = None, reason: str = "marked dead by an operator", actor: str = ""
) -> list[int]:
    """Stop automatic retries of failed jobs. Returns the ids of the jobs that became dead; others are left alone."""
    now = now or timezone.now()
    return _each_allowed(ids, allowed=[Status.FAILED], verb=lifecycle.mark_dead, now=now, text=reason, actor=actor)


def _each_allowed(
    ids: Iterable[int], *, allowed: list[str], verb: OperatorVerb, now: datetime, text: str, actor: str
) -> list[int]:
    """Apply ``verb`` to those of the given jobs that are in an ``allowed`` state (locked). Returns their ids."""
    with transaction.atomic():
        jobs = list(FailedJob.objects.select_for_update().filter(pk__in=list(ids), status__in=allowed).order_by("pk"))
        for job in jobs:
            verb(job, now=now, text=text, actor=actor)
    return [job.pk for job in jobs]
