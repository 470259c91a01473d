"""Claiming failed jobs, sending them again, and taking back expired leases: the sweep.

Each function that claims rows and publishes does so in two steps: claim in one short transaction (a
conditional ``UPDATE``; ``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it), then publish after
the commit. A publish that is lost anyway is recovered by the lease (``models.py``, step 6).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import EncodeError

from queueing.autoretry import current_policy
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet
from queueing.policy import RetryPolicy
from queueing.recording import NO_CLAIM, clear_claim, settle
from queueing.registry import HEADER_CLAIM, HEADER_JOB_ID, HEADER_ORIGIN, celery_app, registered_task

logger = logging.getLogger(__name__)

Status = FailedJob.Status
ClaimedBy = FailedJob.ClaimedBy


UNKNOWN_TASK_PREFIX = "unregistered task: "
UNKNOWN_TASK_REASON = (
    UNKNOWN_TASK_PREFIX + "{name!r} is not registered in this project: deploy the task (or fix its name), "
    "then retry the job"
)


def require_autocommit() -> None:
    if not transaction.get_autocommit():
        raise RuntimeError("claiming failed jobs publishes after its own commit; call it outside transaction.atomic()")


def mark_unknown_tasks_dead(candidates: FailedJobQuerySet, *, now: datetime, limit: int) -> int:
    """Mark up to ``limit`` candidates whose task this project does not register dead, with the reason.

    Rows already marked so are not counted again, so a caller can repeat this until it returns 0.
    """
    registered = set(celery_app().tasks.keys())
    with transaction.atomic():
        jobs = list(
            candidates.select_for_update()
            .filter(status__in=[Status.FAILED, Status.DEAD])
            .exclude(task_name__in=registered)
            .exclude(status=Status.DEAD, status_reason__startswith=UNKNOWN_TASK_PREFIX)
            .order_by("id")[:limit]
        )
        for job in jobs:
            if job.status == Status.FAILED:
                job.status, job.dead_at = Status.DEAD, now
            job.next_retry_at = None
            job.status_reason = UNKNOWN_TASK_REASON.format(name=job.task_name)
            job.add_event("dead", now, reason=job.status_reason)
            job.save(update_fields=["status", "dead_at", "next_retry_at", "status_reason", "history", "updated_at"])
            logger.error("job %s: %s", job.pk, job.status_reason)
    return len(jobs)


def claim(candidates: FailedJobQuerySet, *, now: datetime, claimed_by: str, limit: int) -> list[FailedJob]:
    """Claim up to ``limit`` of ``candidates`` whose task is registered, exclusively. Returns the claimed rows."""
    token = uuid.uuid4()
    counter = _retry_counter(claimed_by)
    with transaction.atomic():
        ids_query = (
            candidates.filter(task_name__in=set(celery_app().tasks.keys()))
            .order_by("next_retry_at", "id")
            .values_list("id", flat=True)
        )
        if connection.features.has_select_for_update_skip_locked:
            ids_query = ids_query.select_for_update(skip_locked=True)
        ids = list(ids_query[:limit])
        if not ids:
            return []
        # One conditional UPDATE: a row another sweep claimed in the meantime no longer matches.
        candidates.filter(pk__in=ids).update(
            claimed_from=F("status"),
            status=Status.RETRYING,
            claim_token=token,
            claimed_by=claimed_by,
            lease_expires_at=now + timedelta(seconds=get_settings().lease_seconds),
            last_retried_at=now,
            retry_started_at=None,
            next_retry_at=None,
            updated_at=now,
            **{counter: F(counter) + 1},
        )
        return list(FailedJob.objects.filter(claim_token=token).order_by("id"))


@dataclass(frozen=True)
class PublishResult:
    sent: int = 0
    unsendable: int = 0  # the stored call no longer fits its task: now dead
    refused: int = 0  # the broker refused: claim released, retry given back
    sent_ids: tuple[int, ...] = ()


def publish(jobs: Iterable[FailedJob], *, now: datetime) -> PublishResult:
    """Send each claimed job as a fresh task call, over one broker connection."""
    sent = unsendable = refused = 0
    sent_ids: list[int] = []
    with celery_app().producer_or_acquire() as producer:
        for job in jobs:
            task = registered_task(job.task_name)
            assert task is not None  # _claim only claims registered tasks
            try:
                task.apply_async(
                    args=job.args,
                    kwargs=job.kwargs,
                    task_id=(task_id := job.clone_task_id()),
                    queue=job.queue,
                    priority=job.options.get("priority"),
                    headers={
                        HEADER_JOB_ID: job.pk,
                        HEADER_CLAIM: str(job.claim_token),
                        HEADER_ORIGIN: job.origin_task_id,
                    },
                    producer=producer,
                )
            except (TypeError, EncodeError) as exc:
                # The stored call no longer fits the task (its signature changed) or cannot be encoded:
                # sending it again cannot help until a person looks at it.
                _give_up(job, now=now, reason=f"the stored call cannot be sent to {job.task_name}: {exc}"[:500])
                unsendable += 1
                continue
            except Exception as exc:  # noqa: BLE001  (a broker error: give the claim back, keep going)
                logger.error("job %s: could not send the retry (%r); claim released", job.pk, exc)
                _release(job, now=now, reason=f"retry could not be sent: {exc!r}"[:500])
                refused += 1
                continue
            sent += 1
            sent_ids.append(job.pk)
            logger.info("job %s (%s) sent again as %s by %s", job.pk, job.task_name, task_id, job.claimed_by)
    return PublishResult(sent=sent, unsendable=unsendable, refused=refused, sent_ids=tuple(sent_ids))


def _give_up(job: FailedJob, *, now: datetime, reason: str) -> None:
    """A claimed job that can never be sent as stored: dead, with the reason (the retry is given back)."""
    logger.error("job %s: %s; marked dead", job.pk, reason)
    _unclaim(job, now=now, status=Status.DEAD, reason=reason, dead_at=now, next_retry_at=None)


def _release(job: FailedJob, *, now: datetime, reason: str) -> None:
    """Undo a claim whose clone never ran: back to the state it came from, the retry given back."""
    back_to = job.claimed_from or Status.FAILED
    _unclaim(job, now=now, status=back_to, reason=reason, next_retry_at=now if back_to == Status.FAILED else None)


def _unclaim(job: FailedJob, *, now: datetime, status: str, reason: str, **fields: Any) -> None:
    """End a claim whose clone never ran, if it is still ours, giving its retry back."""
    counter = _retry_counter(job.claimed_by)
    FailedJob.objects.filter(pk=job.pk, claim_token=job.claim_token, status=Status.RETRYING).update(
        status=status,
        status_reason=reason,
        updated_at=now,
        **NO_CLAIM,
        **fields,
        **{counter: F(counter) - 1},
    )


def _retry_counter(claimed_by: str) -> str:
    """The counter a claim adds to: automatic retries for the sweep's, manual ones for an operator's."""
    return "retry_count" if claimed_by == ClaimedBy.SWEEP else "manual_retry_count"


# --- the sweep ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    recovered: int
    claimed: int
    sent: int
    unknown: int


def sweep(*, now: datetime | None = None, batch_size: int | None = None) -> SweepResult:
    """Take back expired leases, then claim the due failed jobs and send them again. Bounded by batch size."""
    require_autocommit()
    now = now or timezone.now()
    limit = batch_size or get_settings().batch_size
    policy = current_policy()
    recovered = _recover_expired_leases(now=now, policy=policy, limit=limit)
    due = FailedJob.objects.due(now, max_retries=policy.max_retries)
    unknown = mark_unknown_tasks_dead(due, now=now, limit=limit)
    claimed = claim(due, now=now, claimed_by=ClaimedBy.SWEEP, limit=limit)
    sent = publish(claimed, now=now).sent
    result = SweepResult(recovered=recovered, claimed=len(claimed), sent=sent, unknown=unknown)
    if recovered or claimed or unknown:
        logger.info("sweep: %s", result)
    return result


def _recover_expired_leases(*, now: datetime, policy: RetryPolicy, limit: int) -> int:
    with transaction.atomic():
        expired = FailedJob.objects.lease_expired(now).order_by("lease_expires_at")
        if connection.features.has_select_for_update_skip_locked:
            expired = expired.select_for_update(skip_locked=True)
        jobs = list(expired[:limit])
        for job in jobs:
            if job.retry_started_at is None:
                # The clone never started: the publish was lost. The retry was never attempted.
                counter = _retry_counter(job.claimed_by)
                setattr(job, counter, getattr(job, counter) - 1)
                reason = "lease expired before the retry started (publish lost?); the retry was given back"
                back_to = job.claimed_from or Status.FAILED
                job.status = back_to
                job.status_reason = reason if back_to == Status.FAILED else job.status_reason
                job.next_retry_at = now if back_to == Status.FAILED else None
                clear_claim(job)
            else:
                # The clone started and never reported back (worker killed?): that retry is used up.
                started = job.retry_started_at.isoformat()
                reason = f"lease expired: the retry started at {started} and never finished"
                dead = job.claimed_from == Status.DEAD or job.retry_count >= policy.max_retries
                settle(job, dead_reason=reason if dead else "", policy=policy, now=now)
                if not dead:
                    job.status_reason = reason
            job.add_event("lease_expired", now, reason=reason)
            job.save()
            logger.warning("job %s: %s; now %s", job.pk, reason, job.status)
    return len(jobs)
