"""Failure groups and their circuit breakers, in the database: finding a failure's group, and each state change.

The decisions are ``queueing/breaker.py``'s (pure); this module reads a group, asks, and writes the answer
with one conditional ``UPDATE … WHERE`` the state it read, so of two processes that saw the same state only
one changes it (two sweeps at once never both send canaries). Each change is one log line: ``WARNING`` when a
group opens, ``INFO`` otherwise.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models import F

from queueing import breaker
from queueing.autoretry import current_policy
from queueing.conf import get_settings
from queueing.fingerprint import fingerprint
from queueing.models import FailedJob, FailureGroup
from queueing.policy import RetryPolicy

logger = logging.getLogger(__name__)

State = FailureGroup.State

#: The least time between two waves of a group, as a share of ``CHECK_INTERVAL``.
WAVE_INTERVAL_SHARE = 0.8


def config(policy: RetryPolicy | None = None) -> breaker.BreakerConfig:
    """The breaker's settings in force (``RETRY_DELAY`` and ``CHECK_INTERVAL`` as ``start_auto_retry`` left them)."""
    conf, policy = get_settings(), policy or current_policy()
    return breaker.BreakerConfig(
        enabled=conf.breaker_enabled,
        canaries=conf.breaker_canaries,
        base_delay_seconds=policy.retry_delay_seconds,
        max_delay_seconds=max(conf.breaker_max_delay_seconds, policy.retry_delay_seconds),
        first_wave=conf.breaker_first_wave,
        wave_growth=conf.breaker_wave_growth,
        # One wave per sweep: a little under the interval, so that a sweep Beat sends a moment early counts.
        wave_interval_seconds=WAVE_INTERVAL_SHARE * policy.check_interval_seconds,
        probe_timeout_seconds=conf.lease_seconds,
    )


class StaleGroup(Exception):
    """The group id this process knew for a fingerprint names no such group any more: look it up again."""


#: fingerprint -> id of its group, as this process learnt them (a group is never deleted by the system; each use
#: checks the fingerprint, ``count_failure``). At most ``GROUP_IDS_KEPT``: then forgotten and learnt again.
_group_ids: dict[str, int] = {}
GROUP_IDS_KEPT = 10_000


@dataclass(frozen=True)
class Cause:
    """A failure's cause: its fingerprint and the id of its group (``group_for``)."""

    key: str
    group_id: int


def group_for(*, task_name: str, queue: str, exception_class: str, message: str, now: datetime) -> Cause:
    """The group of one failure, made on its first. Call in a transaction, then ``count_failure`` before it ends.

    A query only the first time this process meets a cause: then its group's id is remembered.
    """
    key, pattern = fingerprint(task_name=task_name, exception_class=exception_class, message=message)
    if (known := _group_ids.get(key)) is not None:
        return Cause(key, known)
    group_id = FailureGroup.objects.filter(fingerprint=key).values_list("pk", flat=True).first()
    if group_id is None:
        try:
            with transaction.atomic():
                group_id = FailureGroup.objects.create(
                    fingerprint=key,
                    task_name=task_name,
                    exception_class=exception_class,
                    message_pattern=pattern,
                    queue=queue,
                    first_seen_at=now,
                    last_seen_at=now,
                    state_changed_at=now,
                ).pk
        except IntegrityError:  # made by another process a moment ago
            group_id = FailureGroup.objects.get(fingerprint=key).pk
    if len(_group_ids) >= GROUP_IDS_KEPT:
        _group_ids.clear()
    _group_ids[key] = group_id
    return Cause(key, group_id)


def count_failure(cause: Cause, *, now: datetime) -> FailureGroup:
    """Count one failure in its group and return the group as it is now, in one statement (``UPDATE …
    RETURNING``). Its row stays locked until the transaction ends: make it the transaction's last but the
    breaker's move (``note_failure``), so that failures of one cause, all writing this row, wait on each other
    as briefly as can be. ``StaleGroup`` (the transaction must be rolled back) if the group is gone."""
    meta = FailureGroup._meta
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(f.column)) for f in meta.concrete_fields)
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {quote('failure_count')} = {quote('failure_count')} + 1, "
        f"{quote('last_seen_at')} = %s WHERE {quote('id')} = %s AND {quote('fingerprint')} = %s RETURNING {columns}"
    )
    found = list(
        FailureGroup.objects.raw(sql, [connection.ops.adapt_datetimefield_value(now), cause.group_id, cause.key])
    )
    if not found:
        _group_ids.pop(cause.key, None)
        raise StaleGroup(cause.key)
    return found[0]


def note_failure(
    job: FailedJob,
    *,
    previous_group_id: int | None,
    claim_token: str | UUID | None,
    deferred_seconds: float | None = None,
    now: datetime,
    group: FailureGroup | None = None,
) -> None:
    """A failure was recorded on ``job`` (now in its new group): move the breakers it concerns.

    ``group``: the job's group as ``count_failure`` returned it (locked since): its state is not read again.

    A canary is a clone claimed under its group's ``probe_token``: its failure pushes the group it probed
    back, even when the new failure has another cause. ``deferred_seconds``: the server asked to wait that long
    (``Retry-After``), which is not a failed probe.
    """
    token = str(claim_token) if claim_token else None
    if job.status == FailedJob.Status.DEAD and token is None:
        return  # dead at once (a permanent error): nothing of it will be sent again, nothing to hold back
    settings = config()

    def decide(state: breaker.Breaker, group: FailureGroup) -> tuple[breaker.Breaker | None, str]:
        canary = token is not None and group.probe_token is not None and str(group.probe_token) == token
        after = breaker.after_failure(state, canary=canary, deferred_seconds=deferred_seconds, now=now, config=settings)
        why = "canary failed" if canary else "job failed"
        if group.pk != job.group_id:
            why += " with another cause"
        return after, why + (f", the server asked for {deferred_seconds:g} s" if deferred_seconds is not None else "")

    if token is not None and previous_group_id not in (None, job.group_id):
        _move(previous_group_id, decide, now)
    if job.group_id is not None:
        _move(job.group_id, decide, now, read=group if group is not None and group.pk == job.group_id else None)


def note_success(job: FailedJob, *, claim_token: str | UUID, now: datetime) -> None:
    """A clone of ``job`` succeeded: a canary's success closes its probing group (waves follow)."""
    if job.group_id is None:
        return
    token = str(claim_token)

    def decide(state: breaker.Breaker, group: FailureGroup) -> tuple[breaker.Breaker | None, str]:
        canary = group.probe_token is not None and str(group.probe_token) == token
        return breaker.after_success(state, canary=canary), "canary succeeded"

    _move(job.group_id, decide, now)


@dataclass(frozen=True)
class GroupRelease:
    """What the sweep may send of one group now: at most ``limit`` jobs (``None``: no limit), under ``token``."""

    group_id: int
    kind: breaker.ReleaseKind
    limit: int | None
    token: UUID | None = None  # a probe's canaries are claimed under the group's new probe token

    @property
    def canary(self) -> bool:
        return self.kind is breaker.ReleaseKind.PROBE


def take_release(group: FailureGroup, *, now: datetime, settings: breaker.BreakerConfig) -> GroupRelease:
    """How many of ``group``'s due jobs the sweep may send now, the group moved on accordingly.

    A probe or a wave is taken once: the group row changes only if it is still as read here, so of two sweeps
    (or two batches of one) only one gets it; the other gets nothing of this group this time.
    """
    state = group.as_breaker()
    release = breaker.release(state, now=now, config=settings)
    nothing = GroupRelease(group.pk, breaker.ReleaseKind.NONE, 0)
    if release.kind in (breaker.ReleaseKind.NONE, breaker.ReleaseKind.ALL):
        return nothing if release.kind is breaker.ReleaseKind.NONE else GroupRelease(group.pk, release.kind, None)
    after = breaker.after_release(state, release.kind, now=now, config=settings)
    assert after is not None
    token = uuid.uuid4() if release.kind is breaker.ReleaseKind.PROBE else None
    extra: dict[str, Any] = {"probe_token": token, "probes": F("probes") + 1} if token else {}
    if not _write(group, state, after, now=now, why=release.kind.value, **extra):
        return nothing
    return GroupRelease(group.pk, release.kind, release.count, token)


Decide = Callable[[breaker.Breaker, FailureGroup], tuple[breaker.Breaker | None, str]]


def _move(group_id: int, decide: Decide, now: datetime, *, read: FailureGroup | None = None) -> None:
    """Read the group (``read``: as already read), ask ``decide(breaker, group)`` (the next state and why), write
    it conditionally; again if another process changed the group in between (three reads at most)."""
    for _ in range(3):
        group, read = read or FailureGroup.objects.filter(pk=group_id).first(), None
        if group is None:
            return
        state = group.as_breaker()
        after, why = decide(state, group)
        if after is None or after == state:
            return
        if _write(group, state, after, now=now, why=why):
            return


def _write(
    group: FailureGroup, before: breaker.Breaker, after: breaker.Breaker, *, now: datetime, why: str, **extra: Any
) -> bool:
    """Change the group from ``before`` to ``after`` if nobody changed it since it was read. One log line."""
    changed = FailureGroup.objects.filter(
        pk=group.pk,
        state=before.state.value,
        level=before.level,
        wave=before.wave,
        open_until=before.open_until,
        probe_token=group.probe_token,
    ).update(
        state=after.state.value,
        level=after.level,
        wave=after.wave,
        open_until=after.open_until,
        wave_released_at=after.wave_released_at,
        **({"state_changed_at": now} if after.state != before.state else {}),
        **extra,
    )
    if changed:
        level = (
            logging.WARNING
            if after.state is breaker.State.OPEN and before.state is not breaker.State.OPEN
            else logging.INFO
        )
        logger.log(
            level,
            "failure group %s (%s): %s -> %s (%s)",
            group.pk,
            group.task_name,
            breaker.describe(before),
            breaker.describe(after),
            why,
        )
    return bool(changed)
