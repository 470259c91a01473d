"""Operators' verbs: retry now, discard, mark dead. Admin, API, ``retry_all_failed`` and the Python API call these."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from django.db import transaction
from django.utils import timezone

from queueing import lifecycle
from queueing.claims import ClaimedBy, claim, mark_unknown_tasks_dead, publish, require_autocommit
from queueing.conf import get_settings
from queueing.models import FailedJob
from queueing.registry import validate_queue

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
    retried_ids: tuple[int, ...] = ()  # the ids of the jobs sent (``retried`` of them), in the order sent

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "retried": self.retried}


def retry_now(
    *,
    queue: str | None = None,
    ids: Iterable[int] | None = None,
    group: int | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int | None = None,
    actor: str = "",
) -> RetryOutcome:
    """Re-send failed and dead jobs now (of one queue, one failure group, or the given ids), each at most once.

    ``total`` counts the failed and dead jobs found; ``retried`` those sent. Jobs being retried at this moment
    are left alone. Manual retries do not use up automatic ones (``manual_retry_count`` counts them).
    ``actor`` (who asked: ``lifecycle`` tells the forms) goes into each claimed job's history.
    """
    require_autocommit()
    validate_queue(queue)
    now = now or timezone.now()
    limit = batch_size or get_settings().batch_size
    # Each job at most once per call: one that fails again while this runs has last_failed_at > now, and one
    # this run had to give up on (its stored call no longer fits its task) has dead_at == now.
    candidates = (
        FailedJob.objects.retryable_by_hand()
        .in_queue(queue)
        .in_group(group)
        .filter(last_failed_at__lte=now)
        .exclude(dead_at__gte=now)
    )
    if ids is not None:
        candidates = candidates.filter(pk__in=list(ids))
    total = candidates.count()
    if dry_run:
        return RetryOutcome(total=total, retried=0)
    unknown = 0
    while marked := mark_unknown_tasks_dead(candidates, now=now, limit=limit):
        unknown += marked
    retried_ids: list[int] = []
    unsendable = refused = 0
    while claimed := claim(candidates, now=now, claimed_by=ClaimedBy.OPERATOR, limit=limit):
        if actor:
            lifecycle.note_retry_requested(claimed, now=now, actor=actor)
        result = publish(claimed, now=now)
        retried_ids += result.sent_ids
        unsendable += result.unsendable
        if result.refused:
            refused = result.refused
            break  # the broker refuses: stop rather than spin on the released rows
    return RetryOutcome(
        total=total,
        retried=len(retried_ids),
        unknown=unknown,
        unsendable=unsendable,
        refused=refused,
        retried_ids=tuple(retried_ids),
    )


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
