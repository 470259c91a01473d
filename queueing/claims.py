"""Claiming failed jobs, sending them again, and taking back expired leases: the sweep.

Each function that claims rows and publishes does so in two steps: claim in one short transaction (a
conditional ``UPDATE``; ``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it), then publish after
the commit. A publish that is lost anyway is recovered by the lease (``models.py``, step 6).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import EncodeError

from queueing import lifecycle, workflow
from queueing.autoretry import current_policy
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet
from queueing.policy import RetryPolicy
from queueing.registry import (
    HEADER_CANARY,
    HEADER_CLAIM,
    HEADER_JOB_ID,
    HEADER_ORIGIN,
    celery_app,
    registered_task,
    resendable_task_names,
    stored_call_problem,
)
from queueing.retry_queues import send_to
from queueing.throttle import ANY_QUEUE, Pacer, parse_rates

logger = logging.getLogger(__name__)

Status = FailedJob.Status
ClaimedBy = FailedJob.ClaimedBy

# The sweep's clock (tests replace them).
_monotonic = time.monotonic
_sleep = time.sleep


def require_autocommit() -> None:
    if not transaction.get_autocommit():
        raise RuntimeError("claiming failed jobs publishes after its own commit; call it outside transaction.atomic()")


def mark_unknown_tasks_dead(candidates: FailedJobQuerySet, *, now: datetime, limit: int) -> int:
    """Mark up to ``limit`` candidates whose task this project does not register dead, with the reason.

    Rows already marked so are not counted again, so a caller can repeat this until it returns 0.
    """
    registered = resendable_task_names()
    with transaction.atomic():
        jobs = list(
            candidates.select_for_update()
            .filter(status__in=[Status.FAILED, Status.DEAD])
            .exclude(task_name__in=registered)
            .exclude(status=Status.DEAD, reason_code=FailedJob.Reason.UNREGISTERED_TASK)
            .order_by("id")[:limit]
        )
        for job in jobs:
            lifecycle.mark_unregistered_dead(job, now=now)
            logger.error("job %s: %s", job.pk, job.status_reason)
    return len(jobs)


#: The order jobs are claimed in: the longest due first.
DUE_ORDER = ("next_retry_at", "id")


def claim(
    candidates: FailedJobQuerySet,
    *,
    now: datetime,
    claimed_by: str,
    limit: int,
    token: uuid.UUID | None = None,
    order: tuple[str, ...] = DUE_ORDER,
) -> list[FailedJob]:
    """Claim up to ``limit`` of ``candidates`` whose task is registered, exclusively. Returns the claimed rows.

    ``token``: the claim token to use (a probe's canaries share their group's); a fresh one by default.
    """
    token = token or uuid.uuid4()
    with transaction.atomic():
        ids_query = (
            candidates.filter(task_name__in=resendable_task_names()).order_by(*order).values_list("id", flat=True)
        )
        if connection.features.has_select_for_update_skip_locked:
            ids_query = ids_query.select_for_update(skip_locked=True)
        ids = list(ids_query[:limit])
        if not ids:
            return []
        lifecycle.claim(
            candidates,
            ids=ids,
            token=token,
            claimed_by=claimed_by,
            now=now,
            lease_seconds=get_settings().lease_seconds,
        )
        return list(FailedJob.objects.filter(claim_token=token).order_by("id"))


#: Most jobs of one publish logged one line each at INFO; a larger batch logs them at DEBUG and one summary line.
PER_JOB_INFO_MAX = 10


@dataclass(frozen=True)
class PublishResult:
    sent_ids: tuple[int, ...] = ()  # the jobs sent
    unsendable: int = 0  # the stored call no longer fits its task: now dead
    refused: int = 0  # the broker refused: claim released, retry given back
    expired: int = 0  # the call's own ``expires`` had passed: now dead, never sent

    @property
    def sent(self) -> int:
        return len(self.sent_ids)


def publish(
    jobs: Iterable[FailedJob],
    *,
    now: datetime,
    canary_tokens: frozenset[str] = frozenset(),
    before_send: Callable[[FailedJob], None] | None = None,
) -> PublishResult:
    """Send each claimed job as a fresh task call, over one broker connection.

    A job claimed under one of ``canary_tokens`` is a canary: its call carries ``HEADER_CANARY`` and makes one
    attempt, without immediate retries (a probe asks once). ``before_send(job)`` runs before each send (the
    sweep's throttle waits there). A job of a queue named in ``RETRY_QUEUES`` goes to that queue's retry queue
    (``queueing/retry_queues.py``).
    """
    sent_ids: list[int] = []
    unsendable = refused = expired = 0
    jobs = list(jobs)
    # A few jobs: one line each at INFO, as any state change. A bulk: each at DEBUG, one summary line at INFO.
    per_job_level = logging.INFO if len(jobs) <= PER_JOB_INFO_MAX else logging.DEBUG
    with celery_app().producer_or_acquire() as producer:
        for job in jobs:
            task = registered_task(job.task_name)
            assert task is not None  # claim() only claims registered tasks
            if (problem := stored_call_problem(job)) is not None:
                unsendable += _give_up(job, problem, now=now)  # a tampered or corrupted row
                continue
            if workflow.expired(job.options, now=now):
                lifecycle.expire(job, now=now)
                logger.warning("job %s: %s", job.pk, job.status_reason)
                expired += 1
                continue
            # The same Celery call again (queueing/workflow.py): the original id and the rest of the call,
            # plus the claim headers that fence this clone.
            headers: dict[str, Any] = {
                **workflow.user_headers(job.options),
                HEADER_JOB_ID: job.pk,
                HEADER_CLAIM: str(job.claim_token),
                HEADER_ORIGIN: job.origin_task_id,
            }
            if str(job.claim_token) in canary_tokens:
                headers[HEADER_CANARY] = True
            if before_send is not None:
                before_send(job)
            try:
                task.apply_async(
                    args=job.args,
                    kwargs=job.kwargs,
                    **workflow.send_options(job.options),
                    task_id=(task_id := job.clone_task_id()),
                    queue=send_to(job.queue),
                    headers=headers,
                    producer=producer,
                )
            except (TypeError, ValueError, EncodeError) as exc:
                # The stored call no longer fits the task (its signature changed) or cannot be encoded:
                # sending it again cannot help until a person looks at it.
                unsendable += _give_up(job, str(exc), now=now)
                continue
            except Exception as exc:  # noqa: BLE001  (a broker error: give the claim back, keep going)
                logger.error("job %s: could not send the retry (%r); claim released", job.pk, exc)
                text = f"retry could not be sent: {exc!r}"[:500]
                lifecycle.give_back(job, now=now, reason=FailedJob.Reason.PUBLISH_FAILED, text=text)
                refused += 1
                continue
            sent_ids.append(job.pk)
            logger.log(
                per_job_level, "job %s (%s) sent again as %s by %s", job.pk, job.task_name, task_id, job.claimed_by
            )
    result = PublishResult(sent_ids=tuple(sent_ids), unsendable=unsendable, refused=refused, expired=expired)
    if len(jobs) > PER_JOB_INFO_MAX:
        # One line per batch at INFO (each job's line is at DEBUG): a bulk retry of 100,000 jobs logs 200 lines.
        logger.info(
            "sent again: %s jobs (ids %s to %s); not sent: %s unsendable, %s refused, %s expired",
            len(sent_ids),
            min(sent_ids, default="-"),
            max(sent_ids, default="-"),
            unsendable,
            refused,
            expired,
        )
    return result


def _give_up(job: FailedJob, problem: str, *, now: datetime) -> int:
    """A claimed job whose stored call cannot be sent: dead with the reason (``lifecycle.give_up``). Returns 1."""
    text = f"the stored call cannot be sent to {job.task_name}: {problem}"[:500]
    logger.error("job %s: %s; marked dead", job.pk, text)
    lifecycle.give_up(job, now=now, text=text)
    return 1


# --- the sweep ------------------------------------------------------------------------------------------


class ClaimLimit(Protocol):
    """What the sweep may still claim, asked before each claim: the wave size, a group's allowance.

    ``allow`` narrows the candidates of the next claim and caps how many it takes (0: none); ``count`` is told
    what that claim took. It narrows what the pauses and the failure groups' breakers already allow
    (``queueing/gate.py``, asked at each claim too); ``MaxJobs`` (``sweep(max_jobs=…)``) is one.
    """

    def allow(self, candidates: FailedJobQuerySet, *, limit: int) -> tuple[FailedJobQuerySet, int]: ...

    def count(self, jobs: Sequence[FailedJob]) -> None: ...


@dataclass
class MaxJobs:
    """At most ``jobs`` claimed in one sweep (the size of the current wave)."""

    jobs: int

    def allow(self, candidates: FailedJobQuerySet, *, limit: int) -> tuple[FailedJobQuerySet, int]:
        return candidates, max(0, min(limit, self.jobs))

    def count(self, jobs: Sequence[FailedJob]) -> None:
        self.jobs -= len(jobs)


class Stop(StrEnum):
    """Why a sweep stopped claiming."""

    NOTHING_DUE = "nothing_due"  # the last claims took fewer rows than they could: none left
    BUDGET = "budget"  # SWEEP_BUDGET spent
    LIMIT = "limit"  # the wave (a ClaimLimit) allows no more
    THROTTLED = "throttled"  # a throttled queue used its THROTTLE share of the budget; the rest had nothing due
    REFUSED = "refused"  # the broker refused a publish: the next sweep tries again


@dataclass(frozen=True)
class SweepResult:
    recovered: int
    claimed: int
    sent: int
    unknown: int
    too_old: int = 0
    batches: int = 0
    stopped: Stop = Stop.NOTHING_DUE


def sweep(
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    budget_seconds: float | None = None,
    max_jobs: int | None = None,
    limit: ClaimLimit | None = None,
) -> SweepResult:
    """Take back expired leases, then claim the due failed jobs and send them again, batch after batch.

    Each batch is claimed (``BATCH_SIZE`` rows at most) and published before the next is claimed, until
    nothing is due, ``max_jobs`` (or ``limit``) allows no more, the broker refuses a publish, or the time
    budget (``SWEEP_BUDGET``; default 80 % of the check interval) is spent. A throttled queue (``THROTTLE``)
    gets no more rows than it can send in the time left, sent at its rate. Two sweeps never claim the same
    rows: each batch is its own claim.
    """
    require_autocommit()
    now = now or timezone.now()
    conf = get_settings()
    batch = batch_size or conf.batch_size
    policy = current_policy()
    deadline = _monotonic() + (budget_seconds if budget_seconds is not None else budget(policy))
    limits: list[ClaimLimit] = [lim for lim in (limit, MaxJobs(max_jobs) if max_jobs is not None else None) if lim]
    pacer = Pacer(parse_rates(conf.throttle), clock=_monotonic, sleep=_sleep)

    recovered = _recover_expired_leases(now=now, policy=policy, limit=batch)
    from queueing import gate  # what may be claimed: pauses and breakers (it builds on this module)

    too_old = gate.expire_too_old(now=now, limit=batch)
    due = FailedJob.objects.due(now, max_retries=policy.max_retries)
    unknown = claimed = sent = batches = 0
    mark_unknown = True
    while True:
        if mark_unknown:
            marked = mark_unknown_tasks_dead(due, now=now, limit=batch)
            unknown, mark_unknown = unknown + marked, marked == batch
        plan, held_back = _claim_plan(due, pacer=pacer, batch=batch, seconds_left=deadline - _monotonic())
        round_jobs: list[FailedJob] = []
        canary_tokens: frozenset[str] = frozenset()
        full = allowed = False
        for candidates, most in plan:
            if (narrowed := _allowed(candidates, limits, most)) is None:
                continue
            # The pauses and each failure group's breaker narrow every claim too (queueing/gate.py).
            taken = gate.claim_due(narrowed[0], now=now, limit=narrowed[1], policy=policy)
            jobs, canary_tokens = taken.jobs, canary_tokens | taken.canary_tokens
            for lim in limits:
                lim.count(jobs)
            allowed, full = True, full or len(jobs) == narrowed[1]
            batches, round_jobs = batches + bool(jobs), round_jobs + jobs
        if not allowed:
            stopped = Stop.LIMIT if plan else Stop.THROTTLED
            break
        if round_jobs:
            in_turn = pacer.interleave(round_jobs, queue_of=lambda job: job.queue)
            outcome = publish(
                in_turn, now=now, canary_tokens=canary_tokens, before_send=lambda job: pacer.wait(job.queue)
            )
            claimed, sent = claimed + len(round_jobs), sent + outcome.sent
            if outcome.refused:
                stopped = Stop.REFUSED
                break
        if not full:
            stopped = Stop.THROTTLED if held_back else Stop.NOTHING_DUE
            break
        if _monotonic() >= deadline:
            stopped = Stop.BUDGET
            break
    result = SweepResult(
        recovered=recovered,
        claimed=claimed,
        sent=sent,
        unknown=unknown,
        too_old=too_old,
        batches=batches,
        stopped=stopped,
    )
    if recovered or claimed or unknown or too_old:
        logger.info("sweep: %s", result)
    return result


def budget(policy: RetryPolicy) -> float:
    """Seconds one sweep may spend claiming and sending: ``SWEEP_BUDGET`` if below the check interval, else 80 %."""
    configured = get_settings().sweep_budget_seconds
    interval = float(policy.check_interval_seconds)
    return configured if 0 < configured < interval else 0.8 * interval


def _allowed(
    candidates: FailedJobQuerySet, limits: Sequence[ClaimLimit], most: int
) -> tuple[FailedJobQuerySet, int] | None:
    """``candidates`` and ``most`` as narrowed by each limit in turn; None if one allows nothing."""
    for lim in limits:
        candidates, most = lim.allow(candidates, limit=most)
        if most <= 0:
            return None
    return candidates, most


def _claim_plan(
    due: FailedJobQuerySet, *, pacer: Pacer, batch: int, seconds_left: float
) -> tuple[list[tuple[FailedJobQuerySet, int]], bool]:
    """The claims of the next round: one for the queues not throttled, one per throttled queue with room; and
    whether a throttled queue has no room left in this sweep (its due jobs wait for the next one).
    """
    if not pacer.rates_per_second:
        return [(due, batch)], False
    named = [queue for queue in pacer.rates_per_second if queue != ANY_QUEUE]
    plan: list[tuple[FailedJobQuerySet, int]] = []
    if ANY_QUEUE in pacer.rates_per_second:
        throttled = list(due.order_by().values_list("queue", flat=True).distinct())
    else:
        throttled, plan = named, [(due.exclude(queue__in=named), batch)]
    held_back = False
    for queue in throttled:
        if room := pacer.room(queue, seconds=seconds_left):
            plan.append((due.filter(queue=queue), min(batch, room)))
        held_back = held_back or not room
    return plan, held_back


def _recover_expired_leases(*, now: datetime, policy: RetryPolicy, limit: int) -> int:
    """Step 6: take back up to ``limit`` jobs whose lease ran out (``lifecycle.expire_lease``)."""
    with transaction.atomic():
        expired = FailedJob.objects.lease_expired(now).order_by("lease_expires_at")
        if connection.features.has_select_for_update_skip_locked:
            expired = expired.select_for_update(skip_locked=True)
        jobs = list(expired[:limit])
        for job in jobs:
            reason = lifecycle.expire_lease(job, now=now, policy=policy)
            logger.warning("job %s: %s; now %s", job.pk, reason, job.status)
    return len(jobs)
