"""Step 7 of the lifecycle (``models/__init__.py``): an operator discards a job, marks it dead, or asks for its
retry. Built on ``moves.py``'s checks and saves; only the operator verbs (``queueing/operations.py``) call them.
"""

from __future__ import annotations

from datetime import datetime

from queueing.lifecycle.moves import given_up, require, save_fields
from queueing.models import FailedJob

Status = FailedJob.Status
Reason = FailedJob.Reason


# ``actor`` names who acted, as the history shows it: ``user:<username>`` (admin, API session),
# ``token:<name>`` (API token), ``command:<name> (os user <name>)``, ``python-api``. Empty: not named.


def discard(job: FailedJob, *, now: datetime, text: str, actor: str = "") -> None:
    """Step 7: an operator gives up on a ``failed`` or ``dead`` job: ``discarded`` (final)."""
    require(job, "discard", (Status.FAILED, Status.DEAD))
    was_failed = job.status == Status.FAILED
    job.status, job.discarded_at = Status.DISCARDED, now
    _operator_reason(job, reason=Reason.OPERATOR_DISCARDED, text=text, now=now, actor=actor)
    save_fields(job, ["status", "discarded_at", "next_retry_at", "status_reason", "reason_code", "history"])
    if was_failed:  # a dead job's workflow was told when it died
        given_up(job)


def mark_dead(job: FailedJob, *, now: datetime, text: str, actor: str = "") -> None:
    """Step 7: an operator stops the automatic retries of a ``failed`` job: ``dead``."""
    require(job, "mark dead", (Status.FAILED,))
    job.status, job.dead_at = Status.DEAD, now
    _operator_reason(job, reason=Reason.OPERATOR_MARKED_DEAD, text=text, now=now, actor=actor)
    save_fields(job, ["status", "dead_at", "next_retry_at", "status_reason", "reason_code", "history"])
    given_up(job)


def note_retry_requested(jobs: list[FailedJob], *, now: datetime, actor: str) -> None:
    """Step 3: who asked for an operator's retry, in the history of each job just claimed for it (not yet sent)."""
    for job in jobs:
        require(job, "note the retry of", (Status.RETRYING,))
        job.add_event("retry_requested", now, by=actor)
    FailedJob.objects.bulk_update(jobs, ["history"])


def _operator_reason(job: FailedJob, *, reason: Reason, text: str, now: datetime, actor: str) -> None:
    job.next_retry_at = None
    job.status_reason = text
    job.reason_code = reason
    job.add_event(job.status, now, reason=text, by=actor)
