"""Pausing the automatic retries of one queue or one failure group, and resuming them.

A pause holds back the sweep only: original calls, their immediate retries, the recording of failures and an
operator's retry go on as usual. Admin, API, ``pause_auto_retry`` command and ``queueing.retry`` call these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from queueing.models import FailureGroup, QueuePause
from queueing.registry import validate_queue

logger = logging.getLogger(__name__)


class UnknownGroup(LookupError):
    """A failure group id that does not exist."""

    def __init__(self, group_id: object) -> None:
        self.group_id = group_id
        super().__init__(f"unknown failure group {group_id!r}; see GET /api/queue/groups or the admin's failure groups")


@dataclass(frozen=True)
class Paused:
    """What is paused: the queues, and the ids of the groups."""

    queues: tuple[str, ...]
    groups: tuple[int, ...]

    def as_dict(self) -> dict[str, list[str] | list[int]]:
        return {"queues": list(self.queues), "groups": list(self.groups)}


def get_group(group_id: int) -> FailureGroup:
    group = FailureGroup.objects.filter(pk=group_id).first()
    if group is None:
        raise UnknownGroup(group_id)
    return group


def pause(*, queue: str | None = None, group: int | None = None, reason: str = "", now: datetime | None = None) -> bool:
    """Pause the automatic retries of ``queue`` or of failure group ``group``. ``False``: it was paused already."""
    now = now or timezone.now()
    if (queue is None) == (group is None):
        raise ValueError("pause one queue or one group: give exactly one of queue= and group=")
    if queue is not None:
        validate_queue(queue)
        _, created = QueuePause.objects.get_or_create(queue=queue, defaults={"paused_at": now, "reason": reason[:500]})
        if created:
            logger.warning("automatic retries of queue %r paused%s", queue, f": {reason}" if reason else "")
        return created
    assert group is not None
    get_group(group)
    changed = FailureGroup.objects.filter(pk=group, paused_at__isnull=True).update(paused_at=now)
    if changed:
        logger.warning("automatic retries of failure group %s paused%s", group, f": {reason}" if reason else "")
    return bool(changed)


def resume(*, queue: str | None = None, group: int | None = None) -> bool:
    """Resume the automatic retries of ``queue`` or of ``group``. ``False``: it was not paused."""
    if (queue is None) == (group is None):
        raise ValueError("resume one queue or one group: give exactly one of queue= and group=")
    if queue is not None:
        validate_queue(queue)
        changed, _ = QueuePause.objects.filter(queue=queue).delete()
        if changed:
            logger.info("automatic retries of queue %r resumed", queue)
        return bool(changed)
    assert group is not None
    get_group(group)
    changed = FailureGroup.objects.filter(pk=group, paused_at__isnull=False).update(paused_at=None)
    if changed:
        logger.info("automatic retries of failure group %s resumed", group)
    return bool(changed)


def paused() -> Paused:
    """What is paused now."""
    queues = QueuePause.objects.order_by("queue").values_list("queue", flat=True)
    group_ids = FailureGroup.objects.filter(paused_at__isnull=False).order_by("pk").values_list("pk", flat=True)
    return Paused(tuple(queues), tuple(group_ids))
