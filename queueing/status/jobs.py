"""What the database says: the one grouped count of ``FailedJob`` rows, and the newest failures.

``job_counts()`` is the only grouped count of the table, used by the status report, the alerts and
``RetryManager.get_stats()``. ``job_snapshot()`` is what the report reads: the counts of the failed, dead and
retrying jobs and the newest failed/dead rows of each queue, kept in Redis for ``STATUS_COUNTS_CACHE_SECONDS``
(``cache.py``), because the grouped counts grow with the table; and the failure groups with their jobs counted
(``groups.group_figures``), kept apart for ``STATUS_GROUPS_CACHE_SECONDS``, longer: that count reads every job of
a failing group (a parallel scan of 0.6 s on both cores for 1,000,000 rows in two groups, docs/benchmarks.md),
and refreshed every second it left a status request waiting for a core.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import redis
from django.db.models import Count

from queueing import registry
from queueing.conf import get_settings
from queueing.models import FailedJob
from queueing.status import cache
from queueing.status.groups import GroupFigures, group_figures

Status = FailedJob.Status
T = TypeVar("T", bound=cache.Timestamped)

#: Most recent failed/dead jobs listed per queue.
RECENT_FAILED_LIMIT = 10
#: The statuses the report counts: the resolved and discarded rows (the bulk of an old table) stay out.
OPEN_STATUSES = (Status.FAILED, Status.DEAD, Status.RETRYING)
#: Seconds past ``STATUS_COUNTS_CACHE_SECONDS`` that an out-of-date copy of the counts may still be answered.
STALE_COUNTS_GRACE_SECONDS = 3.0

#: Named with the shape of its value: a process of an older release (during a rolling deploy) reads and writes
#: its own key, not one it cannot read.
_JOBS_KEY = "queueing:status:jobs:v4"
_GROUPS_KEY = "queueing:status:groups:v1"


def job_counts(*, statuses: Collection[str] = tuple(Status.values)) -> dict[str, dict[str, int]]:
    """``{queue: {status: n}}``, one grouped query, zeros included: every declared queue and every queue with
    a row in one of ``statuses`` (all of them by default, which makes that every known queue).

    Naming fewer statuses keeps the other rows out of the scan: the report counts ``OPEN_STATUSES`` only.
    Its cost still grows with the rows counted: on PostgreSQL about 70 ms for 10,000 failed and 0.3 s for
    250,000 (of 1,000,000; ``docs/bench-status.md``).
    """
    wanted = [s for s in Status.values if s in statuses]
    rows = FailedJob.objects.order_by().values_list("queue", "status").annotate(n=Count("id"))
    if len(wanted) < len(Status.values):
        rows = rows.filter(status__in=wanted)
    found: dict[tuple[str, str], int] = {(queue, status): n for queue, status, n in rows}
    queues = registry.declared_queues() | {queue for queue, _ in found}
    return {queue: {s: found.get((queue, s), 0) for s in wanted} for queue in sorted(queues)}


@dataclass(frozen=True, kw_only=True)
class RecentFailure:
    """One of the newest failed or dead jobs of a queue."""

    id: int
    name: str
    failed_reason: str
    attempts_made: int
    last_failed_at: datetime
    status: Literal["failed", "dead"]
    retry_count: int
    next_retry_at: datetime | None
    status_reason: str

    @classmethod
    def of(cls, job: FailedJob) -> RecentFailure:
        if job.exception_class:
            message = job.exception_message
            reason = f"{job.exception_class}: {message}" if message else job.exception_class
        else:
            reason = job.status_reason
        # ``recent_failures`` asks for these two statuses only
        status: Literal["failed", "dead"] = "dead" if job.status == Status.DEAD else "failed"
        return cls(
            id=job.pk,
            name=job.task_name,
            failed_reason=reason,
            attempts_made=job.attempts,
            last_failed_at=job.last_failed_at,
            status=status,
            retry_count=job.retry_count,
            next_retry_at=job.next_retry_at,
            status_reason=job.status_reason,
        )


@dataclass(frozen=True, kw_only=True)
class JobSnapshot:
    """The database's part of the report, as of ``at`` (epoch seconds)."""

    at: float
    #: ``{queue: {status: n}}`` of ``OPEN_STATUSES`` (``job_counts``)
    counts: dict[str, dict[str, int]]
    #: ``{queue: newest failed/dead jobs first}``, queues without any left out
    recent: dict[str, list[RecentFailure]]
    #: the failure groups worth showing, their jobs counted (``groups.group_figures``; kept in a copy of their own)
    groups: list[GroupFigures]


@dataclass(frozen=True, kw_only=True)
class GroupsCopy:
    """The failure groups' figures, as of ``at`` (epoch seconds)."""

    at: float
    groups: list[GroupFigures]


def job_snapshot(*, client: redis.Redis | None = None, max_age_seconds: float | None = None) -> JobSnapshot:
    """The counts and the newest failures, kept in Redis for ``max_age_seconds`` (default
    ``STATUS_COUNTS_CACHE_SECONDS``; 0 or no ``client``: always query, the groups too), and the failure groups,
    kept for ``STATUS_GROUPS_CACHE_SECONDS`` (never less than the counts).

    An out-of-date copy is still answered while one process refreshes it in the background, but only for a
    few seconds more: after that it is gone, and the next request waits for the query, so that a reader
    who comes after a quiet spell never gets old counts. A Redis error is raised as it is.
    """
    conf = get_settings()
    max_age = conf.status_counts_cache_seconds if max_age_seconds is None else max_age_seconds
    if max_age <= 0 or client is None:
        return query_jobs()
    copy = _shared(client, _JOBS_KEY, JobSnapshot, max_age, compute=lambda: query_jobs(with_groups=False))
    groups_age = max(max_age, conf.status_groups_cache_seconds)
    groups = _shared(client, _GROUPS_KEY, GroupsCopy, groups_age, compute=query_groups)
    snapshot = copy if copy is not None else query_jobs(with_groups=False)
    return dataclasses.replace(snapshot, groups=groups.groups if groups is not None else group_figures())


def _shared(client: redis.Redis, name: str, kind: type[T], max_age: float, *, compute: Callable[[], T]) -> T | None:
    return cache.shared_copy(
        client,
        name,
        kind,
        fresh_seconds=max_age,
        keep_seconds=max_age + STALE_COUNTS_GRACE_SECONDS,
        lock_seconds=60.0,
        wait_seconds=5.0,
        compute=compute,
        block_if_missing=True,
    )


def query_groups() -> GroupsCopy:
    """The failure groups' figures, from the database now."""
    return GroupsCopy(at=time.time(), groups=group_figures())


def query_jobs(with_groups: bool = True) -> JobSnapshot:
    """The snapshot, from the database now (without the groups: they are kept apart, ``job_snapshot``)."""
    at = time.time()
    counts = job_counts(statuses=OPEN_STATUSES)
    recent = {
        queue: recent_failures(queue, [s for s in (Status.FAILED, Status.DEAD) if by_status[s]])
        for queue, by_status in counts.items()
    }
    recent = {q: jobs for q, jobs in recent.items() if jobs}
    return JobSnapshot(at=at, counts=counts, recent=recent, groups=group_figures() if with_groups else [])


def recent_failures(queue: str, statuses: list[str]) -> list[RecentFailure]:
    """The newest failed/dead rows of ``queue``: one query per status, each a short index scan (a few ms)."""
    fields = [
        "id",
        "task_name",
        "exception_class",
        "exception_message",
        "status_reason",
        "attempts",
        "last_failed_at",
        "status",
        "retry_count",
        "next_retry_at",
    ]
    jobs: list[FailedJob] = []
    for status in statuses:
        jobs += (
            FailedJob.objects.filter(status=status, queue=queue)
            .order_by("-last_failed_at", "-id")
            .only(*fields)[:RECENT_FAILED_LIMIT]
        )
    jobs.sort(key=lambda job: (job.last_failed_at, job.pk), reverse=True)
    return [RecentFailure.of(job) for job in jobs[:RECENT_FAILED_LIMIT]]
