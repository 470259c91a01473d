"""What the sweep may claim: the due jobs, less the paused ones, as far as each failure group's breaker allows.

``claim_due`` is the sweep's one call (``sweep.sweep``); a sweep that loops over batches calls it again for
each batch: a probe or a wave is taken once (``groups.take_release``), so a second batch in the same
``CHECK_INTERVAL`` gets nothing more of a group that is probing or releasing a wave. ``release_for(group)``
tells how many of one group may go now without taking anything.

Pauses (``pause_auto_retry``): a paused queue or group is skipped by the sweep only; an operator's retry, the
original calls and their immediate retries go on as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from queueing import breaker, claims, groups, lifecycle
from queueing.conf import get_settings
from queueing.models import FailedJob, FailedJobQuerySet, FailureGroup, QueuePause
from queueing.policy import RetryPolicy

logger = logging.getLogger(__name__)

#: Most groups one call looks at (the groups with the oldest due jobs first).
MAX_GROUPS_PER_CALL = 200
#: The canaries: those with the fewest automatic retries used first, so that no job dies of being a canary.
CANARY_ORDER = ("retry_count", "next_retry_at", "id")


def not_paused(due: FailedJobQuerySet) -> FailedJobQuerySet:
    """``due`` without the jobs of paused queues and paused groups (in the same query)."""
    paused_groups = FailureGroup.objects.filter(paused_at__isnull=False).values("pk")
    # Subqueries, not a join: PostgreSQL cannot lock (FOR UPDATE) the rows of an outer join's nullable side.
    return due.exclude(queue__in=QueuePause.objects.values("queue")).exclude(group_id__in=paused_groups)


def release_for(group: FailureGroup, *, now: datetime) -> breaker.Release:
    """How many of ``group``'s due jobs may go now (``count`` ``None``: no limit); nothing is taken."""
    if group.paused_at is not None:
        return breaker.NOTHING
    return breaker.release(group.as_breaker(), now=now, config=groups.config())


@dataclass(frozen=True)
class Claimed:
    """The jobs one call claimed, and the claim tokens of its canaries (``claims.publish(canary_tokens=…)``)."""

    jobs: list[FailedJob] = field(default_factory=list)
    canary_tokens: frozenset[str] = frozenset()


def claim_due(due: FailedJobQuerySet, *, now: datetime, limit: int, policy: RetryPolicy | None = None) -> Claimed:
    """Claim up to ``limit`` of the ``due`` jobs for the sweep, as the pauses and the groups' breakers allow.

    ``policy``: the retry policy in force, if the caller has it at hand (one query less).
    """
    due = not_paused(due)
    settings = groups.config(policy)
    if not settings.enabled:
        return Claimed(claims.claim(due, now=now, claimed_by=claims.ClaimedBy.SWEEP, limit=limit))
    canary_tokens: set[str] = set()
    # The groups with due jobs (None: jobs recorded before groups existed, claimed as they always were).
    ids = due.order_by("group_id").values_list("group_id", flat=True).distinct()
    group_ids = list(ids[: MAX_GROUPS_PER_CALL + 1])
    claimed: list[FailedJob] = []
    if None in group_ids:
        claimed = claims.claim(due.filter(group__isnull=True), now=now, claimed_by=claims.ClaimedBy.SWEEP, limit=limit)
    group_ids = [pk for pk in group_ids if pk is not None]
    if not group_ids:
        return Claimed(claimed)
    for group in FailureGroup.objects.filter(pk__in=group_ids).order_by("open_until", "pk"):
        room = limit - len(claimed)
        if room <= 0:
            break
        release = groups.take_release(group, now=now, settings=settings)
        if release.limit == 0:
            continue
        jobs = claims.claim(
            due.filter(group=group),
            now=now,
            claimed_by=claims.ClaimedBy.SWEEP,
            limit=room if release.limit is None else min(room, release.limit),
            token=release.token,
            order=CANARY_ORDER if release.canary else claims.DUE_ORDER,
        )
        if release.canary:
            # Canaries ask once (no immediate retries) when they hold others back (due now or later); a probe
            # that takes every failed job of its group is an ordinary retry round.
            held_back = FailedJob.objects.filter(group=group, status=FailedJob.Status.FAILED).exists()
            if held_back:
                canary_tokens.add(str(release.token))
            logger.info(
                "failure group %s: %s canary job(s) claimed: %s%s",
                group.pk,
                len(jobs),
                [j.pk for j in jobs],
                "; the others wait for their answer" if held_back else "",
            )
        claimed += jobs
    return Claimed(claimed, frozenset(canary_tokens))


def expire_too_old(*, now: datetime, limit: int) -> int:
    """Mark up to ``limit`` failed jobs older than ``MAX_AGE`` dead (``lifecycle.expire_age``). Returns how many."""
    max_age = get_settings().max_age_seconds
    old = FailedJob.objects.too_old(now, max_age_seconds=max_age).order_by("first_failed_at")
    if not old.exists():  # the usual answer, without a transaction
        return 0
    with transaction.atomic():
        skip_locked = connection.features.has_select_for_update_skip_locked
        jobs = list(old.select_for_update(skip_locked=skip_locked)[:limit])
        for job in jobs:
            lifecycle.expire_age(job, now=now, max_age_seconds=max_age)
            logger.warning("job %s: %s", job.pk, job.status_reason)
    return len(jobs)
