"""A bulk retry's dry run: its selection per failure group, what would be sent, and what would not and why.

One grouping serves the breaker and the operator: the failure group (``FailureGroup``, one fingerprint of task,
exception class and normalised message; ``queueing/groups.py``). A dry run lists the selection per group and
queue (jobs recorded before groups existed: per task and exception class), each with the group's breaker state
and whether its automatic retries are paused, how many jobs would be sent, and how many would not, per reason:

- ``unknownTask``: the task is not registered in this project (a run marks them dead with the reason);
- ``unsendable``: the stored call cannot be sent as it stands: a corrupted row, an undeclared queue, arguments
  that no longer fit the task's signature, sensitive arguments no key in force decrypts (a run marks them dead);
- ``expired``: the call's own ``expires`` has passed (a run marks them dead, never sent).

What a dry run cannot know: whether the broker will refuse a message (``refused`` in a run's report) or a job
changes state meanwhile (``leftAlone``). An operator's retry sends a group whatever its breaker and pauses
(those hold back the sweep only): the state is listed so that nobody floods a service still down unawares.

Cost: four queries, plus one per ``batch_size`` jobs of registered tasks (their calls are read to check them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Task
from django.db.models import Count

from queueing import breaker, sensitive, workflow
from queueing.models import FailedJob, FailedJobQuerySet, FailureGroup, QueuePause
from queueing.registry import registered_task, resendable_task_names, stored_call_problem

#: The reasons a dry run can foresee, in the order a run meets them.
REASONS = ("unknownTask", "unsendable", "expired")

#: What each reason means, for the command, the admin and the docs.
REASON_TEXT = {
    "unknownTask": "the task is not registered in this project (marked dead with the reason)",
    "unsendable": "the stored call cannot be sent as it stands (marked dead: see the status reason)",
    "expired": "the call's own expiry has passed (marked dead, never sent)",
    "refused": "the broker refused them (the run stopped there; run it again)",
    "leftAlone": "they changed state meanwhile, or the run stopped early",
}

#: Each reason in a few words, for a table's cell.
REASON_WORDS = {"unknownTask": "task not registered", "unsendable": "call unsendable", "expired": "call expired"}

Key = tuple[int | None, str, str, str]  # group id, queue, task name, exception class


@dataclass(frozen=True)
class GroupPlan:
    """One failure group (and queue) of a bulk retry's selection, and what a retry would do to its jobs."""

    group_id: int | None  # None: jobs recorded before failure groups existed
    task_name: str
    exception_class: str
    message_pattern: str
    queue: str
    breaker: str  # closed, open or probing ("" without a group)
    breaker_text: str  # ``breaker.describe``: "open until …"
    paused: bool  # the sweep's automatic retries of the group or of its queue are paused
    jobs: int
    not_sent: Mapping[str, int] = field(default_factory=dict)  # per reason (``REASONS``), only those > 0

    @property
    def would_send(self) -> int:
        return self.jobs - sum(self.not_sent.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group_id,
            "taskName": self.task_name,
            "exceptionClass": self.exception_class,
            "messagePattern": self.message_pattern,
            "queue": self.queue,
            "breaker": self.breaker,
            "breakerText": self.breaker_text,
            "autoRetryPaused": self.paused,
            "jobs": self.jobs,
            "wouldSend": self.would_send,
            "notSent": dict(self.not_sent),
        }

    def describe(self) -> str:
        """One line: the group, its breaker, and what would (not) be sent."""
        name = f"group #{self.group_id}" if self.group_id is not None else "no group"
        cause = f"{self.task_name}  {self.exception_class}" + (
            f": {self.message_pattern}" if self.message_pattern else ""
        )
        state = f"{self.breaker_text}{', automatic retries paused' if self.paused else ''}" or "no breaker"
        line = f"{name} ({state}) queue {self.queue}  {cause}: {self.jobs} found, {self.would_send} would be sent"
        if self.not_sent:
            line += "; would not be sent: " + self.why_not()
        return line

    def why_not(self) -> str:
        """What would not be sent and why, in a few words: ``2 task not registered, 1 call expired``."""
        return ", ".join(f"{n} {REASON_WORDS[reason]}" for reason, n in self.not_sent.items())


def not_sent_total(plans: tuple[GroupPlan, ...]) -> dict[str, int]:
    """The plans' jobs that would not be sent, per reason (every reason, 0 included)."""
    return {reason: sum(plan.not_sent.get(reason, 0) for plan in plans) for reason in REASONS}


def plan(candidates: FailedJobQuerySet, *, now: datetime, batch_size: int) -> tuple[GroupPlan, ...]:
    """The candidates of a bulk retry per failure group and queue, largest first, with what would not be sent."""
    registered = resendable_task_names()
    rows = (
        candidates.order_by()
        .values_list("group_id", "queue", "task_name", "exception_class")
        .annotate(n=Count("pk"))
        .order_by("-n", "group_id", "queue", "task_name", "exception_class")
    )
    counted: list[tuple[Key, int]] = [((g, q, t, e), n) for g, q, t, e, n in rows]
    problems: Counter[tuple[Key, str]] = Counter()
    for key, n in counted:
        if key[2] not in registered:
            problems[key, "unknownTask"] = n
    for job in _calls(candidates.filter(task_name__in=registered), batch_size=batch_size):
        if (reason := _problem(job, now=now)) is not None:
            problems[(job.group_id, job.queue, job.task_name, job.exception_class), reason] += 1
    group_ids = {key[0] for key, _ in counted if key[0] is not None}
    groups = FailureGroup.objects.in_bulk(group_ids) if group_ids else {}
    paused_queues = set(QueuePause.objects.values_list("queue", flat=True))
    plans = []
    for key, n in counted:
        group_id, queue, task_name, exception_class = key
        group = groups.get(group_id) if group_id is not None else None
        state = group.as_breaker() if group is not None else None
        plans.append(
            GroupPlan(
                group_id=group_id,
                task_name=task_name,
                exception_class=exception_class,
                message_pattern=group.message_pattern if group is not None else "",
                queue=queue,
                breaker=state.state.value if state is not None else "",
                breaker_text=breaker.describe(state) if state is not None else "",
                paused=queue in paused_queues or (group is not None and group.paused_at is not None),
                jobs=n,
                not_sent={reason: problems[key, reason] for reason in REASONS if problems[key, reason]},
            )
        )
    return tuple(plans)


def _calls(candidates: FailedJobQuerySet, *, batch_size: int) -> Iterator[FailedJob]:
    """The candidates with what their call needs, ``batch_size`` rows a query, in id order (keyset)."""
    fields = ("pk", "group_id", "queue", "task_name", "exception_class", "args", "kwargs", "options")
    after_id = 0
    while batch := list(candidates.filter(pk__gt=after_id).order_by("pk").only(*fields)[:batch_size]):
        after_id = batch[-1].pk
        yield from batch


def _problem(job: FailedJob, *, now: datetime) -> str | None:
    """Why a run would not send this job of a registered task (as ``claims.publish`` checks), or ``None``."""
    if stored_call_problem(job) is not None or not _decryptable(job):
        return "unsendable"
    if workflow.expired(job.options, now=now):
        return "expired"
    task = registered_task(job.task_name)
    if task is not None and not _fits(task, job.args, job.kwargs):
        return "unsendable"
    return None


def _decryptable(job: FailedJob) -> bool:
    """Whether the keys in force open every encrypted value of the stored call (``queueing/sensitive.py``)."""
    try:
        for part in (job.args, job.kwargs, job.options):
            if sensitive.is_encrypted(part):
                sensitive.reveal(part)
    except sensitive.Undecryptable:
        return False
    return True


def _fits(task: Task, args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether the arguments fit the task's signature, as Celery checks them when sending (``Task.typing``)."""
    header = getattr(task, "__header__", None)
    if not getattr(task, "typing", True) or header is None:
        return True
    try:
        header(*args, **kwargs)
    except TypeError:
        return False
    return True
