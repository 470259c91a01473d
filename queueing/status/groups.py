"""The failure groups as the status shows them (``GET /api/queue/status``, ``GET /api/queue/groups``,
``check_queue``, ``/metrics``, the admin): each group's breaker state and counts, and the pauses.

Two queries: the groups (those paused or with jobs still failing: failed, retrying or dead; newest first, at
most ``limit``), then one grouped count of their jobs by status on the ``(group, status)`` index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Exists, OuterRef, Q

from queueing import breaker
from queueing.models import FailedJob, FailureGroup
from queueing.pauses import Paused, paused

Status = FailedJob.Status

#: Most groups one status answer lists.
GROUPS_LIMIT = 50
#: The statuses of a job whose cause is still failing.
STILL_FAILING = (Status.FAILED, Status.RETRYING, Status.DEAD)


@dataclass(frozen=True, kw_only=True)
class GroupFigures:
    """One failure group: what it is, its breaker, and how many of its jobs are in each state."""

    id: int
    task_name: str
    exception_class: str
    message_pattern: str
    queue: str
    state: breaker.State
    state_text: str  # "open until …", "closed (wave 2)"
    open_until: datetime | None
    level: int
    wave: int
    probes: int
    paused_at: datetime | None
    failure_count: int
    first_seen_at: datetime
    last_seen_at: datetime
    jobs: dict[str, int]  # status -> count, every status present

    @property
    def still_failing(self) -> int:
        return sum(self.jobs[s] for s in STILL_FAILING)

    @property
    def share_still_failing(self) -> float:
        """Of the jobs whose latest failure has this cause, the share not resolved or discarded (0 to 1)."""
        total = sum(self.jobs.values())
        return round(self.still_failing / total, 4) if total else 0.0


def group_figures(*, limit: int = GROUPS_LIMIT, group_ids: list[int] | None = None) -> list[GroupFigures]:
    """The groups worth showing: paused, or with jobs still failing (or ``group_ids``), newest first."""
    groups = FailureGroup.objects.all()
    if group_ids is not None:
        groups = groups.filter(pk__in=group_ids)
    else:
        failing = FailedJob.objects.filter(group=OuterRef("pk"), status__in=STILL_FAILING)
        groups = groups.filter(Q(paused_at__isnull=False) | Exists(failing))
    rows = list(groups.order_by("-last_seen_at", "-pk")[:limit])
    counts: dict[int, dict[str, int]] = {row.pk: dict.fromkeys(Status.values, 0) for row in rows}
    grouped = FailedJob.objects.filter(group__in=list(counts)).order_by().values_list("group_id", "status")
    for group_id, status, n in grouped.annotate(n=Count("id")):
        counts[group_id][status] = n
    return [_figures(row, counts[row.pk]) for row in rows]


def _figures(group: FailureGroup, jobs: dict[str, int]) -> GroupFigures:
    return GroupFigures(
        id=group.pk,
        task_name=group.task_name,
        exception_class=group.exception_class,
        message_pattern=group.message_pattern,
        queue=group.queue,
        state=breaker.State(group.state),
        state_text=breaker.describe(group.as_breaker()),
        open_until=group.open_until,
        level=group.level,
        wave=group.wave,
        probes=group.probes,
        paused_at=group.paused_at,
        failure_count=group.failure_count,
        first_seen_at=group.first_seen_at,
        last_seen_at=group.last_seen_at,
        jobs=jobs,
    )


__all__ = ["GROUPS_LIMIT", "GroupFigures", "Paused", "group_figures", "paused"]
