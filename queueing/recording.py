"""Recording what workers report: a call that failed for good, a clone that starts, a clone that succeeds.

``models/__init__.py`` steps 2, 4 and 5.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from queueing import groups, lifecycle, sensitive
from queueing.autoretry import current_policy
from queueing.conf import get_settings
from queueing.lifecycle import runners
from queueing.models import FailedJob, FailureGroup
from queueing.policy import ClassifiedError, ErrorKind

logger = logging.getLogger(__name__)

Status = FailedJob.Status


@dataclass(frozen=True, kw_only=True)
class Failure:
    """What a worker knows about a call that failed for good (after its immediate retries)."""

    task_name: str
    task_id: str
    origin_task_id: str
    queue: str
    #: As stored: sensitive values encrypted (``sensitive.protect``; ``tasks.failure_of`` does it).
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    exception_class: str
    exception_message: str
    traceback: str
    attempts: int
    permanent: bool = False
    #: ``policy.ErrorKind`` of the error, its words, the sweep's wait and the server's hint (``policy.classify``).
    error_kind: str = ErrorKind.TRANSIENT.value
    error_text: str = ""
    delay_seconds: float | None = None
    retry_after_seconds: float | None = None
    job_id: int | None = None
    claim_token: str | None = None
    #: The failing call left its workflow pending (``RetryableTask.__call__`` ended it with ``Ignore``).
    pending: bool = False

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, traceback: str, secrets: tuple[str, ...] = (), **fields: Any
    ) -> Failure:
        """``secrets``: the call's sensitive values (``sensitive.protect``), masked in the message and traceback."""
        conf = get_settings()
        return cls(
            exception_class=_text(f"{type(exc).__module__}.{type(exc).__qualname__}"),
            exception_message=_text(sensitive.redact(str(exc), secrets)[: conf.message_max_chars]),
            traceback=_text(sensitive.redact(traceback or "", secrets)[-conf.traceback_max_chars :]),
            **fields,
        )

    def classified(self) -> ClassifiedError:
        """The worker's classification of the error, as the lifecycle verbs take it."""
        kind = ErrorKind.PERMANENT if self.permanent else ErrorKind(self.error_kind)
        return ClassifiedError(
            kind=kind,
            retry_now=False,
            retry_after_seconds=self.retry_after_seconds,
            delay_seconds=self.delay_seconds,
            text=self.error_text,
        )


def _text(value: str) -> str:
    """Text any database can store: a NUL (which PostgreSQL refuses, losing the whole record) shown as U+FFFD."""
    return value.replace("\x00", "\ufffd")


def record_failure(failure: Failure, *, now: datetime | None = None) -> FailedJob | None:
    """Write a final failure: a new row for an original call, the same row for a clone.

    Returns the row, or ``None`` when a clone's row is no longer under its claim (a stale delivery).

    An original call's first failure, the usual case, is inserted without looking for its row first: a row
    already there (its message delivered again after it was recorded) makes the ``INSERT`` fail, and the whole
    transaction is done again the locked way. Its statements, when this process knows the cause: ``INSERT``
    the row, ``UPDATE … RETURNING`` its group (``groups.count_failure``), and a breaker's move if it makes one.
    """
    now = now or timezone.now()
    try:
        return _record_failure(failure, now=now, insert_first=failure.job_id is None)
    except (IntegrityError, groups.StaleGroup) as exc:
        # The row was there, or another process recorded the same original call a moment ago: update that row
        # instead. Or the group this process knew is gone: look it up again.
        stale_group = isinstance(exc, groups.StaleGroup)
        if stale_group or (
            failure.job_id is None and FailedJob.objects.filter(origin_task_id=failure.origin_task_id).exists()
        ):
            return record_failure_locked(failure, now=now)
        raise


def record_failure_locked(failure: Failure, *, now: datetime) -> FailedJob | None:
    """``record_failure`` that first locks the row it updates (an original call's, if it is there)."""
    try:
        return _record_failure(failure, now=now, insert_first=False)
    except IntegrityError:
        if failure.job_id is None and FailedJob.objects.filter(origin_task_id=failure.origin_task_id).exists():
            return record_failure_locked(failure, now=now)
        raise


def _record_failure(failure: Failure, *, now: datetime, insert_first: bool) -> FailedJob | None:
    policy = current_policy()
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
        elif insert_first:
            job = _new_job(failure, now=now)
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
        previous_group_id = job.group_id
        cause = groups.group_for(
            task_name=job.task_name,
            queue=job.queue,
            exception_class=failure.exception_class,
            message=failure.exception_message,
            now=now,
        )
        error = failure.classified()
        lifecycle.fail(
            job,
            task_id=failure.task_id,
            attempts=failure.attempts,
            exception_class=failure.exception_class,
            exception_message=failure.exception_message,
            traceback=failure.traceback,
            error=error,
            policy=policy,
            now=now,
            group=FailureGroup(pk=cause.group_id),  # the id is all the row needs; the group read comes next
        )
        job.group = group = groups.count_failure(cause, now=now)
        groups.note_failure(
            job,
            previous_group_id=previous_group_id,
            claim_token=failure.claim_token,
            now=now,
            # The server asked for time: its group waits that long, and a canary's deferral is no failed probe.
            deferred_seconds=error.delay_seconds if error.kind is ErrorKind.DEFERRED else None,
            group=group,
        )
    _log_recorded(job)
    return job


def _log_recorded(job: FailedJob) -> None:
    logger.info(
        "job %s (%s) recorded %s after %s attempts: %s%s",
        job.pk,
        job.task_name,
        job.status,
        job.attempts,
        job.exception_class,
        f" ({job.status_reason})" if job.status_reason else "",
    )


def given_up_now(job: FailedJob | None) -> bool:
    """Whether a failure just recorded gave the job up, so that its workflow must now be told.

    Not for a stale clone (``None``: whoever holds the row decides), a job still to be retried, or a dead
    job an operator retried (its workflow was told when it first died).
    """
    return (
        job is not None
        and job.status == Status.DEAD
        and job.reason_code != FailedJob.Reason.FAILED_AFTER_OPERATOR_RETRY
    )


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


def _claimed_job(job_id: int, claim_token: str | None) -> FailedJob | None:
    """The row still ``retrying`` under this claim, locked (call inside ``transaction.atomic``)."""
    if claim_token is None:
        return None
    return (
        FailedJob.objects.select_for_update().filter(pk=job_id, claim_token=claim_token, status=Status.RETRYING).first()
    )


def start_clone(*, job_id: int, claim_token: str, task_id: str, attempt: int = 0, now: datetime | None = None) -> bool:
    """A clone starts running: renew its lease, mark this copy running (``attempt``: its immediate retry number).

    ``False`` means the delivery is stale, or another copy of the same message runs now: it must do nothing.
    """
    now = now or timezone.now()
    runner = runners.runner_mark(host=socket.gethostname(), pid=os.getpid(), attempt=attempt)
    with transaction.atomic():
        job = _claimed_job(job_id, claim_token)
        if job is None:
            return False
        if runners.held_by_another_copy(job, runner=runner, alive=_process_alive):
            logger.warning("job %s: clone %s already runs as %s; this copy is not run", job_id, task_id, job.running_on)
            return False
        lifecycle.start_clone(job, task_id=task_id, now=now, lease_seconds=get_settings().lease_seconds, runner=runner)
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_success(*, job_id: int, claim_token: str, task_id: str, now: datetime | None = None) -> bool:
    """A clone succeeded: its row is ``resolved``. ``False`` if the row was no longer under its claim."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _claimed_job(job_id, claim_token)
        if job is None:
            logger.warning("job %s: clone %s succeeded after its claim was gone", job_id, task_id)
            return False
        lifecycle.resolve(job, task_id=task_id, now=now)
        groups.note_success(job, claim_token=claim_token, now=now)
    logger.info("job %s (%s) resolved by clone %s", job.pk, job.task_name, task_id)
    return True
