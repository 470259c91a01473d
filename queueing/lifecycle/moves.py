"""The moves the system makes (a task fails, the sweep claims, a clone starts and ends, a lease runs out), and the
checks and saves every verb of this package is built on (``require``, ``save_fields``, ``given_up``: shared with
``operator.py``, not exported from the package).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F

from queueing.exceptions import InvalidTransition
from queueing.models import FailedJob, FailedJobQuerySet, FailureGroup
from queueing.policy import ClassifiedError, ErrorKind, RetryPolicy, Verdict, after_failure, after_lost_clone

Status = FailedJob.Status
Reason = FailedJob.Reason
ClaimedBy = FailedJob.ClaimedBy

#: The claim fields of a job that no claim holds.
NO_CLAIM: dict[str, Any] = {
    "claim_token": None,
    "claimed_by": "",
    "claimed_from": "",
    "lease_expires_at": None,
    "running_on": "",
}

#: The ``status_reason`` of a job whose task this project does not register (thing, reason, fix).
UNREGISTERED_TASK_REASON = (
    "unregistered task: {name!r} is not registered in this project: deploy the task (or fix its name), "
    "then retry the job"
)


def require(job: FailedJob, move: str, allowed: tuple[str, ...]) -> None:
    if job.status not in allowed:
        raise InvalidTransition(job.pk, job.status, move, allowed)


def save_fields(job: FailedJob, fields: Iterable[str]) -> None:
    job.save(update_fields=[*dict.fromkeys(fields), "updated_at"])


def _clear_claim(job: FailedJob) -> list[str]:
    for name, value in NO_CLAIM.items():
        setattr(job, name, value)
    return list(NO_CLAIM)


def given_up(job: FailedJob) -> None:
    """The job ends ``dead`` or ``discarded`` with no call of it running: tell its workflow, after the commit.

    (``models/__init__.py``, last paragraph.) A clone that fails for the last time re-raises instead, so ``fail``
    never calls this.
    """
    from queueing import workflow

    transaction.on_commit(lambda: workflow.fail_workflow(job))


def retry_counter(claimed_by: str) -> str:
    """The counter a claim adds to: automatic retries for the sweep's, manual ones for an operator's."""
    return "retry_count" if claimed_by == ClaimedBy.SWEEP else "manual_retry_count"


# --- steps 2 and 5: a call fails for good ------------------------------------------------------------------


def fail(
    job: FailedJob,
    *,
    task_id: str,
    attempts: int,
    exception_class: str,
    exception_message: str,
    traceback: str,
    permanent: bool = False,
    error: ClassifiedError | None = None,
    policy: RetryPolicy,
    now: datetime,
    group: FailureGroup | None = None,
) -> None:
    """Steps 2 and 5: write a final failure on a new row (inserted whole) or on the same row, then settle it.

    An existing row must be ``failed`` or ``dead`` (its original call failed again) or ``retrying`` (a clone
    under its claim, which the caller checked). ``group``: the failure's group (its cause), if known.
    ``error`` is the worker's ``policy.classify`` of the exception.
    A deferral (the server asked to be called later) gives a sweep's retry back: ``retry_count`` goes down again.
    """
    if job.pk is not None:
        require(job, "record a failure of", (Status.FAILED, Status.DEAD, Status.RETRYING))
    if group is not None:
        job.group = group
    job.exception_class = exception_class
    job.exception_message = exception_message
    job.traceback = traceback
    job.attempts += attempts
    job.last_failed_at = now
    job.latest_task_id = task_id
    written = ["exception_class", "exception_message", "traceback", "attempts", "last_failed_at", "latest_task_id"]
    deferred = error is not None and error.kind is ErrorKind.DEFERRED
    given_back = deferred and job.status == Status.RETRYING and job.claimed_by == ClaimedBy.SWEEP
    if given_back:
        job.retry_count -= 1  # a deferral the server asked for uses up no automatic retry
        written.append("retry_count")
    job.add_event(
        "deferred" if deferred else "failed",
        now,
        task_id=task_id,
        attempts=attempts,
        error=f"{exception_class}: {exception_message}"[:500],
        retry_after_seconds=error.retry_after_seconds if error is not None else None,
        retry_given_back=True if given_back else None,
    )
    verdict = after_failure(
        permanent=permanent,
        error=error,
        retry_count=job.retry_count,
        from_dead=job.claimed_from == Status.DEAD,
        policy=policy,
    )
    settled = _settle(job, verdict, now=now)
    if job.pk is None:
        job.save()
        return
    save_fields(job, [*written, "history", "group", *settled])


def _settle(job: FailedJob, verdict: Verdict, *, now: datetime) -> list[str]:
    """Steps 5 and 6: leave a job ``dead`` or ``failed`` and due after the retry delay, as the policy says.

    Changes the job in memory; returns the fields it changed (the calling verb saves them).
    """
    fields = [*_clear_claim(job), "status", "status_reason", "reason_code", "next_retry_at"]
    job.status_reason = verdict.text
    job.reason_code = verdict.reason.value
    if verdict.dead:
        job.status = Status.DEAD
        job.dead_at = now
        job.next_retry_at = None
        return [*fields, "dead_at"]
    job.status = Status.FAILED
    job.next_retry_at = now + timedelta(seconds=verdict.retry_in_seconds or 0)
    return fields


# --- step 3: claim; a claim whose clone never ran ends --------------------------------------------------------


def claim(
    candidates: FailedJobQuerySet,
    *,
    ids: list[int],
    token: UUID,
    claimed_by: str,
    now: datetime,
    lease_seconds: float,
) -> int:
    """Step 3: claim the ``failed`` or ``dead`` rows among ``ids`` in one conditional ``UPDATE``.

    A row that another claim took in the meantime no longer matches. Returns how many rows were claimed.
    """
    counter = retry_counter(claimed_by)
    return candidates.filter(pk__in=ids, status__in=[Status.FAILED, Status.DEAD]).update(
        claimed_from=F("status"),
        status=Status.RETRYING,
        claim_token=token,
        claimed_by=claimed_by,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        last_retried_at=now,
        retry_started_at=None,
        running_on="",
        next_retry_at=None,
        updated_at=now,
        **{counter: F(counter) + 1},
    )


def give_back(job: FailedJob, *, now: datetime, reason: Reason | None, text: str, event: str = "") -> bool:
    """Steps 3 and 6: undo a claim whose clone never ran: back to the state it came from, the retry given back.

    ``reason=None`` keeps the job's reason (a dead job stays dead for the reason it had). ``event`` adds a
    history event. ``False``: the claim had already moved on, nothing changed.
    """
    back_to = job.claimed_from or Status.FAILED
    due_at = now if back_to == Status.FAILED else None
    return _unclaim(job, now=now, status=back_to, reason=reason, text=text, event=event, next_retry_at=due_at)


def give_up(job: FailedJob, *, now: datetime, text: str, reason: Reason = Reason.UNSENDABLE) -> bool:
    """Step 3: a claimed job whose stored call can never be sent: ``dead`` (``unsendable``), the retry given back."""
    was_dead = job.claimed_from == Status.DEAD  # then its workflow was told when it died
    changed = _unclaim(job, now=now, status=Status.DEAD, reason=reason, text=text, dead_at=now, next_retry_at=None)
    if changed and not was_dead:
        given_up(job)
    return changed


def expire(job: FailedJob, *, now: datetime) -> bool:
    """Step 3: a claimed job whose call's own deadline (Celery's ``expires``) has passed: ``dead`` (``expired``).

    Never sent: Celery would only revoke it on arrival. The retry is given back (it was never attempted).
    """
    deadline = (job.options or {}).get("expires", "?")
    text = f"expired: the call's deadline ({deadline}) passed before it could be sent again; not re-sent"
    return give_up(job, now=now, text=text, reason=Reason.EXPIRED)


def _unclaim(
    job: FailedJob, *, now: datetime, status: str, reason: Reason | None, text: str, event: str = "", **fields: Any
) -> bool:
    """End a claim whose clone never ran, if it is still ours, giving its retry back (the one place that does)."""
    require(job, "end the claim of", (Status.RETRYING,))
    counter = retry_counter(job.claimed_by)
    values: dict[str, Any] = {"status": status, **NO_CLAIM, **fields}
    if reason is not None:
        values.update(status_reason=text, reason_code=reason.value)
    if event:
        job.add_event(event, now, reason=text)
        values["history"] = job.history
    changed = FailedJob.objects.filter(pk=job.pk, claim_token=job.claim_token, status=Status.RETRYING).update(
        **values, updated_at=now, **{counter: F(counter) - 1}
    )
    for name, value in values.items():
        setattr(job, name, value)
    setattr(job, counter, getattr(job, counter) - 1)
    return bool(changed)


def mark_unregistered_dead(job: FailedJob, *, now: datetime) -> None:
    """Step 3: a ``failed`` or ``dead`` job whose task this project does not register: ``dead``, never sent."""
    require(job, "mark unregistered", (Status.FAILED, Status.DEAD))
    fields = ["next_retry_at", "status_reason", "reason_code", "history"]
    if job.status == Status.FAILED:
        job.status, job.dead_at = Status.DEAD, now
        fields += ["status", "dead_at"]
    job.next_retry_at = None
    job.status_reason = UNREGISTERED_TASK_REASON.format(name=job.task_name)
    job.reason_code = Reason.UNREGISTERED_TASK
    job.add_event("dead", now, reason=job.status_reason)
    save_fields(job, fields)
    if "dead_at" in fields:
        given_up(job)


# --- steps 4, 5 and 6: the clone reports, or its lease runs out -----------------------------------------------


def start_clone(job: FailedJob, *, task_id: str, now: datetime, lease_seconds: float, runner: str = "") -> None:
    """Step 4: a clone starts under its claim: renew its lease, mark the copy running (``runner_mark``)."""
    require(job, "start a retry of", (Status.RETRYING,))
    if job.retry_started_at is None:
        job.add_event("retry_started", now, task_id=task_id, by=job.claimed_by)
    job.retry_started_at = now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.latest_task_id = task_id
    job.running_on = runner
    save_fields(job, ["retry_started_at", "lease_expires_at", "latest_task_id", "running_on", "history"])


def resolve(job: FailedJob, *, task_id: str, now: datetime) -> None:
    """Step 5: a clone succeeded: ``resolved`` (final)."""
    require(job, "resolve", (Status.RETRYING,))
    job.status = Status.RESOLVED
    job.resolved_at = now
    job.status_reason = ""
    job.reason_code = Reason.NONE
    job.latest_task_id = task_id
    job.add_event("resolved", now, task_id=task_id)
    fields = ["status", "resolved_at", "status_reason", "reason_code", "latest_task_id", "history"]
    save_fields(job, [*_clear_claim(job), *fields])


def expire_lease(job: FailedJob, *, now: datetime, policy: RetryPolicy) -> str:
    """Step 6: take back a job whose lease ran out. Returns the reason, as a sentence.

    The clone never started (the publish was lost): the retry was never attempted and is given back. It
    started and vanished (its worker died): that retry is used up (``use_up``).
    """
    require(job, "expire the lease of", (Status.RETRYING,))
    if job.retry_started_at is not None:
        return use_up(job, now=now, policy=policy)
    text = "lease expired before the retry started (publish lost?); the retry was given back"
    # A dead job an operator retried goes back to dead for the reason it had.
    reason = None if job.claimed_from == Status.DEAD else Reason.LEASE_EXPIRED_NOT_STARTED
    give_back(job, now=now, reason=reason, text=text, event="lease_expired")
    return text


def use_up(job: FailedJob, *, now: datetime, policy: RetryPolicy) -> str:
    """Step 6: a clone started and never reported back: its retry is used up; settle as in step 5."""
    require(job, "use up the retry of", (Status.RETRYING,))
    started = job.retry_started_at.isoformat() if job.retry_started_at else "?"
    verdict = after_lost_clone(
        started_at=started, retry_count=job.retry_count, from_dead=job.claimed_from == Status.DEAD, policy=policy
    )
    was_dead = job.claimed_from == Status.DEAD
    job.add_event("lease_expired", now, reason=verdict.text)
    save_fields(job, [*_settle(job, verdict, now=now), "history"])
    if verdict.dead and not was_dead:
        given_up(job)
    return verdict.text


def expire_age(job: FailedJob, *, now: datetime, max_age_seconds: float) -> None:
    """Step 3: a ``failed`` job still failing ``MAX_AGE`` after its first failure: ``dead`` (``max_age_exceeded``).

    Its group may have kept it waiting (``queueing/breaker.py``): a job still does not wait forever.
    """
    require(job, "expire the age of", (Status.FAILED,))
    hours = max_age_seconds / 3600
    text = f"still failing {hours:g} h after its first failure ({job.first_failed_at.isoformat()}): MAX_AGE reached"
    job.status, job.dead_at, job.next_retry_at = Status.DEAD, now, None
    job.status_reason, job.reason_code = text, Reason.MAX_AGE_EXCEEDED
    job.add_event("dead", now, reason=text)
    save_fields(job, ["status", "dead_at", "next_retry_at", "status_reason", "reason_code", "history"])
