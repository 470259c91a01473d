"""The sweep: take back expired leases, then claim the due failed jobs and send them again, batch after batch.

Each batch is claimed (``claims.claim`` through ``gate.claim_due``) and published (``claims.publish``) before
the next, until nothing is due, a limit (``ClaimLimit``, ``MaxJobs``) allows no more, the broker refuses a
publish, or the time budget (``budget``) is spent. A publish that is lost anyway is recovered by the lease
(``models/__init__.py``, step 6; ``_recover_expired_leases``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from django.db import connection, transaction
from django.utils import timezone

from queueing import lifecycle
from queueing.autoretry import current_policy
from queueing.claims import mark_unknown_tasks_dead, publish, require_autocommit
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet
from queueing.policy import RetryPolicy
from queueing.throttle import ANY_QUEUE, Pacer, parse_rates

logger = logging.getLogger(__name__)

# The sweep's clock (tests replace them).
_monotonic = time.monotonic
_sleep = time.sleep


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
            # A throttle waits before each send (which then goes out one by one); unthrottled, one batch.
            wait = (lambda job: pacer.wait(job.queue)) if pacer.rates_per_second else None
            outcome = publish(in_turn, now=now, canary_tokens=canary_tokens, before_send=wait)
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
