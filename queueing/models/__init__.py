"""Failed jobs and their lifecycle.

How a job moves between states (``FailedJob.Status``), and what each transition writes. Each move is
written once, as a verb in ``queueing/lifecycle/`` (named in brackets); the verb saves only the fields it
changes, sets the coded reason (``reason_code``, a ``FailedJob.Reason``) beside the human ``status_reason``,
and raises ``InvalidTransition`` for a move this story does not allow. Where a failing job goes (``failed`` or
``dead``, and why) is decided by the pure ``queueing/policy.py``.

What each kind of error gets (``policy.ErrorKind``: transient, deferred, permanent) is the task's error
policy (``retry_policy=``, the queue's default, the kind an exception class declares), read by the worker.

1. A task call raises. ``RetryableTask`` retries it at once, ``IMMEDIATE_RETRIES`` times, waiting
   ``BACKOFF_BASE * 2**n`` seconds (2, 4, 8). Nothing is written yet. A server's ``Retry-After`` hint
   (a deferral) sets the wait instead (capped by ``RETRY_AFTER_MAX``, jittered up by at most
   ``RETRY_AFTER_JITTER``); a hint longer than ``BACKOFF_MAX``, an error whose rule says no immediate
   retries, and a permanent error go to step 2 at once.
2. The last immediate retry fails: ``record_failure`` writes one row, ``failed``, keyed by the original
   call's task id (``origin_task_id``, unique), with the task name, queue, JSON args/kwargs, the error,
   ``first_failed_at``/``last_failed_at`` and ``next_retry_at = now + RETRY_DELAY``, or the rule's own
   delay (reason ``policy_delay``, e.g. a session not found). A deferral is due when the server said
   (hint capped and jittered as in step 1), reason ``server_deferred``. A permanent error (a
   ``PermanentError``, a rule with ``retry=False``; the reason names the error and its field) or
   ``MAX_RETRIES == 0`` writes it ``dead`` at once, with ``dead_at``. If the database cannot be
   written then, the failure is handed to the broker (``record_failed_job``) and written when it is back.
   [``fail``; reasons ``permanent_error``, ``retries_used_up``, ``policy_delay``, ``server_deferred``]
   Each failure also names its cause: the ``FailureGroup`` of its fingerprint (task, exception class,
   normalised message; ``queueing/groups.py``), whose circuit breaker opens (``queueing/breaker.py``).
3. The sweep (every ``CHECK_INTERVAL``) claims ``failed`` rows whose ``next_retry_at`` has passed and whose
   ``retry_count < MAX_RETRIES``, as far as their group's breaker allows (a few canaries while the cause
   fails, then growing waves) and not of a paused queue or group (``queueing/gate.py``); a job still failing
   ``MAX_AGE`` after its first failure is ``dead`` instead [``expire_age``, reason ``max_age_exceeded``]. A
   claim makes it ``retrying``, ``retry_count + 1``, a fresh ``claim_token`` (a probe's canaries share theirs),
   ``lease_expires_at = now + LEASE_SECONDS``, ``last_retried_at``. After the commit it sends each row as a
   fresh task call carrying the row id and the claim token in its headers. A row naming a task this
   project does not register is marked ``dead`` with a ``status_reason``, never sent. The clone is the same
   Celery call: the original task id and the rest of the call kept in ``options`` (``queueing/workflow.py``).
   A claimed row whose call's own ``expires`` has passed, whose stored call no longer fits its task, or whose
   sensitive arguments no key decrypts (``queueing/sensitive.py``) is ``dead``, never sent; one the broker
   refuses goes back to where it was; all of these give their retry back.
   An operator's retry (admin, API, ``retry_all_failed``) claims ``failed`` and ``dead`` rows the same way
   but counts ``manual_retry_count`` instead: manual retries never use up the automatic ones. [``claim``;
   ``mark_unregistered_dead``, reason ``unregistered_task``; ``expire``, reason ``expired``; ``give_up``,
   reason ``unsendable`` or ``undecryptable``; ``give_back``, reason ``publish_failed``]
4. The clone starts: if the row is still ``retrying`` under its claim token, the lease is renewed
   (``retry_started_at``, ``lease_expires_at = now + LEASE_SECONDS``) and the copy marks itself running
   (``running_on``: host, process id and immediate retry number); if not, the delivery is stale and the
   clone does nothing. A second copy of the same message (same claim, same retry number) is refused while
   the process that marked it is alive, or on another host (that one's lease takes it back, step 6); the
   clone's next immediate retry, or a copy whose marking process on this host died, takes the mark over.
   The clone has its own immediate retries (step 1). [``start_clone``, ``runners.held_by_another_copy``]
5. The clone succeeds: ``resolved``, ``resolved_at``. It fails for good: the same row (never a second one)
   goes back to ``failed`` with a new ``next_retry_at``, or to ``dead`` (``dead_at``) once
   ``retry_count >= MAX_RETRIES`` or when it had been ``dead`` before the operator's retry. A clone the
   server deferred gives its automatic retry back (``retry_count - 1``): a rate limit is an expected event,
   not a failure, so a job the server keeps deferring is never made dead for it.
   [``resolve``; ``fail``, reason ``retries_used_up``, ``failed_after_operator_retry`` or ``server_deferred``]
6. A lease runs out (the publish was lost, or the worker died): the sweep takes the row back. If the clone
   never started, the retry was never attempted: the row returns to the state it was claimed from and the
   retry is given back. If the clone started and vanished, the retry is used up and the row is ``failed``
   (due after ``RETRY_DELAY``) or ``dead`` as in step 5. [``expire_lease``: ``give_back`` with reason
   ``lease_expired_not_started``, or ``use_up``, reason ``lease_expired``]
7. An operator can discard a ``failed`` or ``dead`` job (``discarded``, ``discarded_at``) or mark a
   ``failed`` one dead; ``resolved`` and ``discarded`` are final. [``discard``, reason
   ``operator_discarded``; ``mark_dead``, reason ``operator_marked_dead``]

For the workflow the call belongs to (chain, callbacks, chord, ``AsyncResult``; ``docs/workflows.md``) a job
in ``failed`` or ``retrying`` is pending. A job that ends ``dead`` or ``discarded`` while no call of it is
running is given up by its verb, which tells the workflow after the commit (``workflow.fail_workflow``);
a clone that fails for the last time re-raises instead, and Celery tells the workflow in the worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import Q

from queueing import policy
from queueing.jsoncodec import NulSafeDecoder, NulSafeEncoder
from queueing.models.gating import FailureGroup, QueuePause
from queueing.models.operator_state import AlertState, AutoRetryConfig, BulkOperation

__all__ = [
    "HISTORY_MAX_EVENTS",
    "PRUNABLE_STATUSES",
    "AlertState",
    "AutoRetryConfig",
    "BulkOperation",
    "FailedJob",
    "FailedJobQuerySet",
    "FailureGroup",
    "QueuePause",
]

#: Most events kept in ``FailedJob.history``.
HISTORY_MAX_EVENTS = 50


class FailedJobQuerySet(models.QuerySet["FailedJob"]):
    def due(self, now: datetime, *, max_retries: int) -> FailedJobQuerySet:
        """Failed jobs the sweep may re-send now."""
        return self.filter(status=FailedJob.Status.FAILED, next_retry_at__lte=now, retry_count__lt=max_retries)

    def lease_expired(self, now: datetime) -> FailedJobQuerySet:
        """Jobs claimed for a retry whose clone has not reported back within its lease."""
        return self.filter(status=FailedJob.Status.RETRYING, lease_expires_at__lt=now)

    def retryable_by_hand(self) -> FailedJobQuerySet:
        """Jobs an operator may retry: failed and dead (not those being retried right now)."""
        return self.filter(status__in=[FailedJob.Status.FAILED, FailedJob.Status.DEAD])

    def prunable(self, *, before: datetime, statuses: Iterable[str] | None = None) -> FailedJobQuerySet:
        """Jobs that reached ``resolved``, ``discarded`` or ``dead`` (or those of ``statuses``) before ``before``.

        Each state is aged by its own timestamp (``resolved_at``, ``discarded_at``, ``dead_at``); retention
        (``queueing/retention.py``) deletes these. ``failed`` and ``retrying`` jobs are never prunable.
        """
        wanted = set(statuses if statuses is not None else PRUNABLE_STATUSES)
        if unknown := wanted - set(PRUNABLE_STATUSES):
            raise ValueError(
                f"only {', '.join(PRUNABLE_STATUSES)} jobs can be pruned, not {', '.join(sorted(unknown))}"
            )
        condition = Q(pk__in=[])
        for status in sorted(wanted):
            since = PRUNABLE_STATUSES[status]
            # A row without its timestamp (written before it existed) is aged by its last change.
            aged = Q(**{f"{since}__lt": before}) | Q(**{f"{since}__isnull": True}, updated_at__lt=before)
            condition |= Q(status=status) & aged
        return self.filter(condition)

    def in_queue(self, queue: str | None) -> FailedJobQuerySet:
        return self if queue is None else self.filter(queue=queue)

    def in_group(self, group: int | None) -> FailedJobQuerySet:
        return self if group is None else self.filter(group_id=group)

    def too_old(self, now: datetime, *, max_age_seconds: float) -> FailedJobQuerySet:
        """Failed jobs first seen failing ``max_age_seconds`` ago or more (none when it is 0: no limit)."""
        if max_age_seconds <= 0:
            return self.none()
        oldest = now - timedelta(seconds=max_age_seconds)
        return self.filter(status=FailedJob.Status.FAILED, first_failed_at__lte=oldest)


class FailedJob(models.Model):
    """One logical job (one original task call) that failed after its immediate retries."""

    class Status(models.TextChoices):
        FAILED = "failed", "Failed"
        """Failed for good this round; the sweep re-sends it once ``next_retry_at`` has passed."""
        RETRYING = "retrying", "Retrying"
        """Claimed and sent as a fresh task call; waiting for that clone to succeed or fail."""
        RESOLVED = "resolved", "Resolved"
        """A clone succeeded. Final."""
        DEAD = "dead", "Dead"
        """Permanently failed: automatic retries used up (or a permanent error). Waits for a person."""
        DISCARDED = "discarded", "Discarded"
        """An operator gave up on it. Final."""

    class Reason(models.TextChoices):
        """Why the system put a job in its state (``policy.Reason`` tells each); blank when there is none."""

        NONE = policy.Reason.NONE.value, "—"
        UNREGISTERED_TASK = policy.Reason.UNREGISTERED_TASK.value, "Unregistered task"
        PERMANENT_ERROR = policy.Reason.PERMANENT_ERROR.value, "Permanent error"
        RETRIES_USED_UP = policy.Reason.RETRIES_USED_UP.value, "Retries used up"
        LEASE_EXPIRED = policy.Reason.LEASE_EXPIRED.value, "Lease expired"
        LEASE_EXPIRED_NOT_STARTED = policy.Reason.LEASE_EXPIRED_NOT_STARTED.value, "Lease expired before the start"
        UNSENDABLE = policy.Reason.UNSENDABLE.value, "Cannot be sent"
        PUBLISH_FAILED = policy.Reason.PUBLISH_FAILED.value, "Publish failed"
        FAILED_AFTER_OPERATOR_RETRY = (
            policy.Reason.FAILED_AFTER_OPERATOR_RETRY.value,
            "Failed again after an operator's retry",
        )
        OPERATOR_DISCARDED = policy.Reason.OPERATOR_DISCARDED.value, "Discarded by an operator"
        OPERATOR_MARKED_DEAD = policy.Reason.OPERATOR_MARKED_DEAD.value, "Marked dead by an operator"
        EXPIRED = policy.Reason.EXPIRED.value, "Expired"
        MAX_AGE_EXCEEDED = policy.Reason.MAX_AGE_EXCEEDED.value, "Too old (MAX_AGE)"
        SERVER_DEFERRED = policy.Reason.SERVER_DEFERRED.value, "Deferred by the server"
        POLICY_DELAY = policy.Reason.POLICY_DELAY.value, "Waiting as the error policy says"
        UNDECRYPTABLE = policy.Reason.UNDECRYPTABLE.value, "Cannot be decrypted (key lost)"

    class ClaimedBy(models.TextChoices):
        SWEEP = "sweep", "Automatic sweep"
        OPERATOR = "operator", "Operator"

    origin_task_id = models.CharField(max_length=255, unique=True, help_text="Task id of the original call.")
    task_name = models.CharField(max_length=255)
    queue = models.CharField(max_length=200)
    # NulSafe*: a NUL in an argument survives PostgreSQL (queueing/jsoncodec.py).
    args = models.JSONField(default=list, blank=True, encoder=NulSafeEncoder, decoder=NulSafeDecoder)
    kwargs = models.JSONField(default=dict, blank=True, encoder=NulSafeEncoder, decoder=NulSafeDecoder)
    options = models.JSONField(
        default=dict,
        blank=True,
        encoder=NulSafeEncoder,
        decoder=NulSafeDecoder,
        help_text="The rest of the call, as JSON (workflow, ids, expiry, limits, routing, headers): "
        "sent again with it (queueing/workflow.py).",
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FAILED)
    status_reason = models.TextField(blank=True, help_text="Why the system put the job in its state.")
    reason_code = models.CharField(
        max_length=32, choices=Reason.choices, blank=True, default="", help_text="The reason, as a code."
    )
    exception_class = models.CharField(max_length=255, blank=True)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    attempts = models.PositiveIntegerField(default=0, help_text="Executions, immediate retries included.")
    retry_count = models.PositiveIntegerField(default=0, help_text="Automatic retries used.")
    manual_retry_count = models.PositiveIntegerField(default=0, help_text="Retries started by an operator.")

    claim_token = models.UUIDField(null=True, blank=True)
    claimed_by = models.CharField(max_length=16, choices=ClaimedBy.choices, blank=True)
    claimed_from = models.CharField(max_length=16, choices=Status.choices, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    latest_task_id = models.CharField(max_length=255, blank=True, help_text="Task id of the latest clone.")
    running_on = models.CharField(
        max_length=255,
        blank=True,
        help_text="The clone copy running under the claim: host:pid#immediate retry number.",
    )

    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_retried_at = models.DateTimeField(null=True, blank=True)
    retry_started_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = models.JSONField(default=list, blank=True, help_text="The latest lifecycle events, oldest first.")
    group = models.ForeignKey(
        "FailureGroup",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="The cause of its latest failure (its fingerprint's group).",
    )

    objects = FailedJobQuerySet.as_manager()

    class Meta:
        ordering = ["-last_failed_at", "-id"]
        # One permission per operator verb (queueing/permissions.py; docs/permissions.md). Django's own
        # view_failedjob is the read-only one; change, add and delete are never used.
        permissions = [
            ("retry_failedjob", "Can retry failed jobs now"),
            ("discard_failedjob", "Can discard failed jobs"),
            ("mark_dead_failedjob", "Can mark failed jobs dead"),
            ("pause_retries", "Can pause and resume automatic retries"),
        ]
        indexes = [
            models.Index(
                fields=["next_retry_at", "id"],
                condition=Q(status="failed"),
                name="queueing_failedjob_due_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="retrying"),
                name="queueing_failedjob_lease_idx",
            ),
            models.Index(fields=["queue", "status"], name="queueing_failedjob_queue_idx"),
            models.Index(fields=["status", "-last_failed_at"], name="queueing_failedjob_recent_idx"),
            # The default ordering (the admin's unfiltered list, newest first).
            models.Index(fields=["-last_failed_at", "-id"], name="queueing_failedjob_newest_idx"),
            models.Index(fields=["group", "status"], name="queueing_failedjob_group_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["failed", "retrying", "resolved", "dead", "discarded"]),
                name="queueing_failedjob_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.origin_task_id}] {self.status}"

    def add_event(self, event: str, at: datetime, **details: Any) -> None:
        """Append one lifecycle event to ``history`` (kept to the latest ``HISTORY_MAX_EVENTS``)."""
        entry = {
            "event": event,
            "at": at.isoformat(),
            **{k: v for k, v in details.items() if v not in (None, "")},
        }
        self.history = [*self.history, entry][-HISTORY_MAX_EVENTS:]

    def clone_task_id(self) -> str:
        """The task id a clone is sent under: the original call's, as Celery's own retries keep it.

        So the result, the chain, the chord and ``AsyncResult(origin_task_id)`` follow the job
        (``queueing/workflow.py``); clones are told apart by their claim headers, never by their id.
        """
        return self.origin_task_id


#: The states retention deletes, each with the timestamp that says since when a job is in it.
PRUNABLE_STATUSES: dict[str, str] = {
    FailedJob.Status.RESOLVED: "resolved_at",
    FailedJob.Status.DISCARDED: "discarded_at",
    FailedJob.Status.DEAD: "dead_at",
}
