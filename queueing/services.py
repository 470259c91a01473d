"""The retry system's operations. Admin, API, management commands, Beat and the workers all call these.

Each function that claims rows and publishes does so in two steps: claim in one short transaction (a
conditional ``UPDATE``; ``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it), then publish after
the commit. A publish that is lost anyway is recovered by the lease (``models.py``, step 6).
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, Task, current_app
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F
from django.utils import timezone
from kombu.exceptions import EncodeError

from queueing.conf import get_settings
from queueing.exceptions import UnknownQueue
from queueing.models import AutoRetryConfig, FailedJob, FailedJobQuerySet

logger = logging.getLogger(__name__)

#: Message headers that tie a clone to its row. The claim token fences it: a clone whose row was taken back
#: (lease expired) or re-claimed finds no row under its token and does nothing.
HEADER_JOB_ID = "queueing_job_id"
HEADER_CLAIM = "queueing_claim"
HEADER_ORIGIN = "queueing_origin"

Status = FailedJob.Status
ClaimedBy = FailedJob.ClaimedBy


# --- policy ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """The automatic retry policy in force: settings, changed by ``start_auto_retry`` at run time."""

    max_retries: int
    retry_delay_seconds: float
    check_interval_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "check_interval_seconds": self.check_interval_seconds,
        }


def current_policy() -> RetryPolicy:
    conf = get_settings()
    row = AutoRetryConfig.objects.filter(pk=1).first()

    def pick(override: Any, default: Any) -> Any:
        return default if override is None else override

    return RetryPolicy(
        max_retries=pick(row and row.max_retries, conf.max_retries),
        retry_delay_seconds=pick(row and row.retry_delay_seconds, conf.retry_delay_seconds),
        check_interval_seconds=pick(row and row.check_interval_seconds, conf.check_interval_seconds),
    )


# --- the task registry ----------------------------------------------------------------------------------


@functools.cache
def _load_task_modules(app: Celery) -> None:
    # Celery's autodiscovery is lazy outside the worker: a web process or a management command would
    # otherwise see only the tasks of the modules it happened to import.
    app.loader.import_default_modules()


def celery_app() -> Celery:
    app = current_app._get_current_object()
    _load_task_modules(app)
    return app


def registered_task(name: str) -> Task | None:
    """The task registered under ``name`` in this project, or ``None``. Only these are ever re-sent."""
    return celery_app().tasks.get(name)


def declared_queues() -> set[str]:
    """The queues the Celery app declares (``task_queues`` and the default queue), without a query."""
    app = celery_app()
    return {q.name for q in (app.conf.task_queues or ())} | {app.conf.task_default_queue}


def known_queues() -> list[str]:
    """Queues the Celery app declares plus those of recorded jobs."""
    recorded = set(FailedJob.objects.order_by().values_list("queue", flat=True).distinct())
    return sorted(declared_queues() | recorded)


def check_queue(name: str | None) -> None:
    """Raise ``UnknownQueue`` (listing the known ones) unless ``name`` is None or a known queue.

    A known name costs at most one indexed ``EXISTS``; only an unknown one pays for the full list.
    """
    if name is None or name in declared_queues():
        return
    # A NUL cannot be in a queue name, and PostgreSQL refuses it in a query: it is simply not a known queue.
    if "\x00" not in name and FailedJob.objects.filter(queue=name).exists():
        return
    raise UnknownQueue(name, known_queues())


# --- what a worker reports ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Failure:
    """What a worker knows about a call that failed for good (after its immediate retries)."""

    task_name: str
    task_id: str
    origin_task_id: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    exception_class: str
    exception_message: str
    traceback: str
    attempts: int
    permanent: bool = False
    job_id: int | None = None
    claim_token: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, *, traceback: str, **fields: Any) -> Failure:
        conf = get_settings()
        return cls(
            exception_class=f"{type(exc).__module__}.{type(exc).__qualname__}",
            exception_message=str(exc)[: conf.message_max_chars],
            traceback=(traceback or "")[-conf.traceback_max_chars :],
            **fields,
        )


def record_failure(failure: Failure, *, now: datetime | None = None) -> FailedJob | None:
    """Write a final failure: a new row for an original call, the same row for a clone.

    Returns the row, or ``None`` when a clone's row is no longer under its claim (a stale delivery).
    """
    now = now or timezone.now()
    policy = current_policy()
    try:
        with transaction.atomic():
            if failure.job_id is not None:
                job = _claimed_job(failure.job_id, failure.claim_token)
                if job is None:
                    logger.warning(
                        "job %s: clone %s failed but its claim is gone; nothing recorded",
                        failure.job_id,
                        failure.task_id,
                    )
                    return None
            else:
                job = FailedJob.objects.select_for_update().filter(origin_task_id=failure.origin_task_id).first()
                if job is None:
                    job = _new_job(failure, now=now)
                elif job.status not in (Status.FAILED, Status.DEAD):
                    logger.warning(
                        "job %s: original call %s failed again while %s; left as it is",
                        job.pk,
                        failure.task_id,
                        job.status,
                    )
                    return job
            _apply_failure(job, failure, policy=policy, now=now)
            job.save()
    except IntegrityError:
        # Another process recorded the same original call a moment ago: update that row instead.
        if failure.job_id is None and FailedJob.objects.filter(origin_task_id=failure.origin_task_id).exists():
            return record_failure(failure, now=now)
        raise
    logger.info(
        "job %s (%s) recorded %s after %s attempts: %s",
        job.pk,
        job.task_name,
        job.status,
        job.attempts,
        job.exception_class,
    )
    return job


def _new_job(failure: Failure, *, now: datetime) -> FailedJob:
    return FailedJob(
        origin_task_id=failure.origin_task_id,
        task_name=failure.task_name,
        queue=failure.queue,
        args=list(failure.args),
        kwargs=dict(failure.kwargs),
        options=failure.options,
        first_failed_at=now,
        last_failed_at=now,
    )


def _apply_failure(job: FailedJob, failure: Failure, *, policy: RetryPolicy, now: datetime) -> None:
    job.exception_class = failure.exception_class
    job.exception_message = failure.exception_message
    job.traceback = failure.traceback
    job.attempts += failure.attempts
    job.last_failed_at = now
    job.latest_task_id = failure.task_id
    job.add_event(
        "failed",
        now,
        task_id=failure.task_id,
        attempts=failure.attempts,
        error=f"{failure.exception_class}: {failure.exception_message}"[:500],
    )
    if job.claimed_from == Status.DEAD:
        reason = "failed again after an operator's retry of a dead job"
    elif failure.permanent:
        reason = "permanent error: not retried automatically"
    elif job.retry_count >= policy.max_retries:
        reason = f"automatic retries used up ({job.retry_count} of {policy.max_retries})"
    else:
        reason = ""
    _settle(job, dead_reason=reason, policy=policy, now=now)


#: The claim fields of a job that no claim holds.
NO_CLAIM: dict[str, Any] = {"claim_token": None, "claimed_by": "", "claimed_from": "", "lease_expires_at": None}


def _clear_claim(job: FailedJob) -> None:
    for name, value in NO_CLAIM.items():
        setattr(job, name, value)


def _settle(job: FailedJob, *, dead_reason: str, policy: RetryPolicy, now: datetime) -> None:
    """Leave a job ``dead`` (when there is a reason) or ``failed`` and due after the retry delay."""
    _clear_claim(job)
    job.status_reason = dead_reason
    if dead_reason:
        job.status = Status.DEAD
        job.dead_at = now
        job.next_retry_at = None
    else:
        job.status = Status.FAILED
        job.next_retry_at = now + timedelta(seconds=policy.retry_delay_seconds)


def _claimed_job(job_id: int, claim_token: str | None) -> FailedJob | None:
    """The row still ``retrying`` under this claim, locked (call inside ``transaction.atomic``)."""
    if claim_token is None:
        return None
    return (
        FailedJob.objects.select_for_update().filter(pk=job_id, claim_token=claim_token, status=Status.RETRYING).first()
    )


def start_clone(*, job_id: int, claim_token: str, task_id: str, now: datetime | None = None) -> bool:
    """A clone starts running: renew its lease. ``False`` means the delivery is stale and must do nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _claimed_job(job_id, claim_token)
        if job is None:
            return False
        if job.retry_started_at is None:
            job.add_event("retry_started", now, task_id=task_id, by=job.claimed_by)
        job.retry_started_at = now
        job.lease_expires_at = now + timedelta(seconds=get_settings().lease_seconds)
        job.latest_task_id = task_id
        job.save(update_fields=["retry_started_at", "lease_expires_at", "latest_task_id", "history", "updated_at"])
    return True


def record_success(*, job_id: int, claim_token: str, task_id: str, now: datetime | None = None) -> bool:
    """A clone succeeded: its row is ``resolved``. ``False`` if the row was no longer under its claim."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _claimed_job(job_id, claim_token)
        if job is None:
            logger.warning("job %s: clone %s succeeded after its claim was gone", job_id, task_id)
            return False
        job.status = Status.RESOLVED
        job.resolved_at = now
        job.status_reason = ""
        _clear_claim(job)
        job.latest_task_id = task_id
        job.add_event("resolved", now, task_id=task_id)
        job.save()
    logger.info("job %s (%s) resolved by clone %s", job.pk, job.task_name, task_id)
    return True


# --- claiming and sending -------------------------------------------------------------------------------


UNKNOWN_TASK_PREFIX = "unregistered task: "
UNKNOWN_TASK_REASON = (
    UNKNOWN_TASK_PREFIX + "{name!r} is not registered in this project: deploy the task (or fix its name), "
    "then retry the job"
)


def _require_autocommit() -> None:
    if not transaction.get_autocommit():
        raise RuntimeError("claiming failed jobs publishes after its own commit; call it outside transaction.atomic()")


def _mark_unknown_tasks_dead(candidates: FailedJobQuerySet, *, now: datetime, limit: int) -> int:
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


def _claim(candidates: FailedJobQuerySet, *, now: datetime, claimed_by: str, limit: int) -> list[FailedJob]:
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


def _publish(jobs: Iterable[FailedJob], *, now: datetime) -> PublishResult:
    """Send each claimed job as a fresh task call, over one broker connection."""
    sent = unsendable = refused = 0
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
            logger.info("job %s (%s) sent again as %s by %s", job.pk, job.task_name, task_id, job.claimed_by)
    return PublishResult(sent=sent, unsendable=unsendable, refused=refused)


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
    _require_autocommit()
    now = now or timezone.now()
    limit = batch_size or get_settings().batch_size
    policy = current_policy()
    recovered = _recover_expired_leases(now=now, policy=policy, limit=limit)
    due = FailedJob.objects.due(now, max_retries=policy.max_retries)
    unknown = _mark_unknown_tasks_dead(due, now=now, limit=limit)
    claimed = _claim(due, now=now, claimed_by=ClaimedBy.SWEEP, limit=limit)
    sent = _publish(claimed, now=now).sent
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
                _clear_claim(job)
            else:
                # The clone started and never reported back (worker killed?): that retry is used up.
                started = job.retry_started_at.isoformat()
                reason = f"lease expired: the retry started at {started} and never finished"
                dead = job.claimed_from == Status.DEAD or job.retry_count >= policy.max_retries
                _settle(job, dead_reason=reason if dead else "", policy=policy, now=now)
                if not dead:
                    job.status_reason = reason
            job.add_event("lease_expired", now, reason=reason)
            job.save()
            logger.warning("job %s: %s; now %s", job.pk, reason, job.status)
    return len(jobs)


# --- operators' verbs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryOutcome:
    total: int  # failed and dead jobs found
    retried: int  # sent
    unknown: int = 0  # not sent: the task is not registered (marked dead with the reason)
    unsendable: int = 0  # not sent: the stored call no longer fits the task (now dead)
    refused: int = 0  # not sent: the broker refused; the run stopped there

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "retried": self.retried}


def retry_now(
    *,
    queue: str | None = None,
    ids: Iterable[int] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int | None = None,
) -> RetryOutcome:
    """Re-send failed and dead jobs now (of one queue, or the given ids), each at most once per call.

    ``total`` counts the failed and dead jobs found; ``retried`` those sent. Jobs being retried at this moment
    are left alone. Manual retries do not use up automatic ones (``manual_retry_count`` counts them).
    """
    _require_autocommit()
    check_queue(queue)
    now = now or timezone.now()
    limit = batch_size or get_settings().batch_size
    # Each job at most once per call: one that fails again while this runs has last_failed_at > now, and one
    # this run had to give up on (its stored call no longer fits its task) has dead_at == now.
    candidates = (
        FailedJob.objects.retryable_by_hand().in_queue(queue).filter(last_failed_at__lte=now).exclude(dead_at__gte=now)
    )
    if ids is not None:
        candidates = candidates.filter(pk__in=list(ids))
    total = candidates.count()
    if dry_run:
        return RetryOutcome(total=total, retried=0)
    unknown = 0
    while marked := _mark_unknown_tasks_dead(candidates, now=now, limit=limit):
        unknown += marked
    retried = unsendable = refused = 0
    while claimed := _claim(candidates, now=now, claimed_by=ClaimedBy.OPERATOR, limit=limit):
        result = _publish(claimed, now=now)
        retried, unsendable = retried + result.sent, unsendable + result.unsendable
        if result.refused:
            refused = result.refused
            break  # the broker refuses: stop rather than spin on the released rows
    return RetryOutcome(total=total, retried=retried, unknown=unknown, unsendable=unsendable, refused=refused)


def discard(*, ids: Iterable[int], now: datetime | None = None, reason: str = "discarded by an operator") -> int:
    """Give up on failed or dead jobs (final). Returns how many were discarded."""
    now = now or timezone.now()

    def apply(job: FailedJob) -> None:
        job.status, job.discarded_at = Status.DISCARDED, now

    return _operator_transition(ids, allowed=[Status.FAILED, Status.DEAD], apply=apply, now=now, reason=reason)


def mark_dead(*, ids: Iterable[int], now: datetime | None = None, reason: str = "marked dead by an operator") -> int:
    """Stop automatic retries of failed jobs. Returns how many became dead."""
    now = now or timezone.now()

    def apply(job: FailedJob) -> None:
        job.status, job.dead_at = Status.DEAD, now

    return _operator_transition(ids, allowed=[Status.FAILED], apply=apply, now=now, reason=reason)


def _operator_transition(
    ids: Iterable[int], *, allowed: list[str], apply: Callable[[FailedJob], None], now: datetime, reason: str
) -> int:
    """Move the given jobs that are in an ``allowed`` state, each with a history event. Others are left alone."""
    with transaction.atomic():
        jobs = list(FailedJob.objects.select_for_update().filter(pk__in=list(ids), status__in=allowed).order_by("pk"))
        for job in jobs:
            apply(job)
            job.next_retry_at = None
            job.status_reason = reason
            job.add_event(job.status, now, reason=reason)
            job.save()
    return len(jobs)


# --- numbers --------------------------------------------------------------------------------------------


def stats_by_queue() -> dict[str, dict[str, int]]:
    """``{queue: {status: count}}`` for every known queue, zeros included."""
    counts: dict[str, dict[str, int]] = {q: dict.fromkeys(Status.values, 0) for q in known_queues()}
    rows = FailedJob.objects.order_by().values("queue", "status").annotate(n=Count("id"))
    for row in rows:
        counts.setdefault(row["queue"], dict.fromkeys(Status.values, 0))[row["status"]] = row["n"]
    return counts


def describe(policy: RetryPolicy) -> str:
    conf = get_settings()
    return json.dumps(
        {
            **policy.as_dict(),
            "immediate_retries": conf.immediate_retries,
            "backoff_base_seconds": conf.backoff_base_seconds,
            "backoff_jitter": conf.backoff_jitter,
            "lease_seconds": conf.lease_seconds,
            "batch_size": conf.batch_size,
        }
    )
