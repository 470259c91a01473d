"""The operator's three verbs (retry now, discard, mark dead): each one an object with its behaviour and its words.

A verb knows which states it acts on, what it says before and after (singular and plural), and how it acts:
through the service functions the JSON API and the commands call too (``queueing.operations``). ``perform`` runs
any verb on a selection the same way: bounded to ``ACTION_MAX_JOBS``, skipping the jobs in other states, and
logging exactly the jobs the service says it changed in the admin's history (``LogEntry``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import ngettext

from queueing import autoretry, bulkops, bulkplan, operations, permissions
from queueing.admin import operations as admin_operations
from queueing.models import FailedJob

logger = logging.getLogger(__name__)

Status = FailedJob.Status
User = AbstractBaseUser | AnonymousUser

#: Most jobs one run of an admin action acts on; the message says how many are left for the next run. A retry
#: publishes each job (about 5 ms a job with Redis): 1,000 keep the request to a few seconds.
ACTION_MAX_JOBS = 1_000

#: Why a selected job in a state is skipped, singular and plural.
SKIPPED = {
    Status.FAILED: ("%(n)d skipped because it is failed", "%(n)d skipped because they are failed"),
    Status.RETRYING: ("%(n)d skipped because it is being retried", "%(n)d skipped because they are being retried"),
    Status.RESOLVED: ("%(n)d skipped because it is resolved", "%(n)d skipped because they are resolved"),
    Status.DEAD: ("%(n)d skipped because it is already dead", "%(n)d skipped because they are already dead"),
    Status.DISCARDED: ("%(n)d skipped because it is discarded", "%(n)d skipped because they are discarded"),
}


def actor_of(user: User) -> str:
    """How a job's history names a user who acted in the admin (or through the API with a session)."""
    return f"user:{user.get_username()}"


def plural(phrases: tuple[str, str], n: int) -> str:
    """The singular or plural phrase for ``n``, with ``n`` in it."""
    return ngettext(phrases[0], phrases[1], n) % {"n": n}


@dataclass(frozen=True, kw_only=True)
class Applied:
    """What a verb did to the ids it was given: the ids it changed, and a phrase for each kind it did not."""

    changed_ids: Sequence[int]
    problems: list[str]


@dataclass(frozen=True, kw_only=True)
class Verb:
    """One operator verb: the states it acts on, its words, and (in each subclass) how it acts."""

    key: str  # the detail page's button value, and the admin's ``has_<key>_permission``
    action: str  # the list's action name
    permission: str  # the model permission (codename) a user needs to use the verb
    title: str
    eligible: tuple[str, ...]
    confirm_label: str
    will_do: tuple[str, str]  # the confirmation's promise, singular and plural
    done: tuple[str, str]  # the message's report, singular and plural
    logged: str  # the admin history's entry for each job changed
    note_text: str

    def note(self) -> str:
        """What the verb means for the job's future, as the confirmation and the message say it."""
        return self.note_text

    def closing(self, changed: int) -> str:
        """What the message adds after its report (nothing but for a retry)."""
        return ""

    def apply(self, ids: list[int], *, now: datetime, user: User, rate_per_second: float | None = None) -> Applied:
        """Act on ``ids`` (eligible when read) through ``queueing.operations``; say which ones it changed.
        ``rate_per_second``: the throttle of a verb that sends (a retry)."""
        raise NotImplementedError

    def dry_run(self, queryset: QuerySet[FailedJob]) -> tuple[bulkplan.GroupPlan, ...]:
        """What the verb would do per failure group (the confirmation lists it); nothing for most verbs."""
        return ()

    def in_background(self, eligible: int) -> bool:
        """Whether ``eligible`` jobs are too many for one request: a background operation acts on them all."""
        return False


@dataclass(frozen=True, kw_only=True)
class RetryVerb(Verb):
    """Send failed and dead jobs again now, as manual retries (``operations.retry_now``)."""

    def note(self) -> str:
        max_retries = autoretry.current_policy().max_retries
        limit = (
            "Manual retries do not count against the automatic limit: the sweep still makes up to %(n)d automatic "
            "retry of each failed job, whatever the manual retries.",
            "Manual retries do not count against the automatic limit: the sweep still makes up to %(n)d automatic "
            "retries of each failed job, whatever the manual retries.",
        )
        return plural(limit, max_retries) + " " + self.note_text

    def closing(self, changed: int) -> str:
        return " " + self.note() if changed else ""

    def dry_run(self, queryset: QuerySet[FailedJob]) -> tuple[bulkplan.GroupPlan, ...]:
        return admin_operations.dry_run(queryset)

    def in_background(self, eligible: int) -> bool:
        return bulkops.in_background(eligible)

    def apply(self, ids: list[int], *, now: datetime, user: User, rate_per_second: float | None = None) -> Applied:
        """``operations.retry_now`` on exactly these ids; a phrase for each kind of job it could not send."""
        outcome = operations.retry_now(ids=ids, now=now, actor=actor_of(user), rate_per_second=rate_per_second)
        reasons = (
            (
                outcome.unknown,
                "%(n)d not sent because its task is not registered in this project",
                "%(n)d not sent because their task is not registered in this project",
            ),
            (
                outcome.unsendable,
                "%(n)d not sent because the stored call no longer fits its task (it is dead now: see its status "
                "reason)",
                "%(n)d not sent because their stored calls no longer fit their task (they are dead now: see their "
                "status reason)",
            ),
            (
                outcome.expired,
                "%(n)d not sent because its call had expired (it is dead now)",
                "%(n)d not sent because their calls had expired (they are dead now)",
            ),
            (
                len(ids) - outcome.retried - outcome.unknown - outcome.unsendable - outcome.expired,
                "%(n)d not sent and left as it was (the broker refused a message, the run stopped early, or it "
                "changed state meanwhile): run the action again",
                "%(n)d not sent and left as they were (the broker refused a message, the run stopped early, or they "
                "changed state meanwhile): run the action again",
            ),
        )
        problems = [plural((one, many), n) for n, one, many in reasons if n > 0]
        return Applied(changed_ids=outcome.retried_ids, problems=problems)


@dataclass(frozen=True, kw_only=True)
class TransitionVerb(Verb):
    """A verb that moves jobs to a final or waiting state in one service call (discard, mark dead)."""

    def transition(self, ids: list[int], *, now: datetime, user: User) -> list[int]:
        """The operation's call; returns the ids it changed."""
        raise NotImplementedError

    def apply(self, ids: list[int], *, now: datetime, user: User, rate_per_second: float | None = None) -> Applied:
        changed = self.transition(ids, now=now, user=user)
        unchanged = len(ids) - len(changed)
        meanwhile = (
            "%(n)d not changed because it changed state meanwhile",
            "%(n)d not changed because they changed state meanwhile",
        )
        return Applied(changed_ids=changed, problems=[plural(meanwhile, unchanged)] if unchanged else [])


@dataclass(frozen=True, kw_only=True)
class DiscardVerb(TransitionVerb):
    """Give up on failed and dead jobs, for good (``operations.discard``)."""

    def transition(self, ids: list[int], *, now: datetime, user: User) -> list[int]:
        return operations.discard(ids=ids, now=now, actor=actor_of(user))


@dataclass(frozen=True, kw_only=True)
class MarkDeadVerb(TransitionVerb):
    """Stop the automatic retries of failed jobs (``operations.mark_dead``); the reason names the operator."""

    def transition(self, ids: list[int], *, now: datetime, user: User) -> list[int]:
        reason = f"marked dead by {user.get_username()} in the admin"
        return operations.mark_dead(ids=ids, now=now, reason=reason, actor=actor_of(user))


RETRY = RetryVerb(
    key="retry",
    action="retry_selected",
    permission=permissions.RETRY,
    title="Retry selected now",
    eligible=(Status.FAILED, Status.DEAD),
    confirm_label="Yes, retry them now",
    will_do=("%(n)d job will be sent again now", "%(n)d jobs will be sent again now"),
    done=("%(n)d job sent again", "%(n)d jobs sent again"),
    logged="Retried now by an operator (a manual retry: not counted against the automatic limit).",
    note_text="A dead job that fails again after a manual retry goes back to dead.",
)
DISCARD = DiscardVerb(
    key="discard",
    action="discard_selected",
    permission=permissions.DISCARD,
    title="Discard selected",
    eligible=(Status.FAILED, Status.DEAD),
    confirm_label="Yes, discard them",
    will_do=("%(n)d job will be discarded", "%(n)d jobs will be discarded"),
    done=("%(n)d job discarded", "%(n)d jobs discarded"),
    logged="Discarded by an operator.",
    note_text="Discarding is final: a discarded job is never retried again, automatically or by hand.",
)
MARK_DEAD = MarkDeadVerb(
    key="mark_dead",
    action="mark_dead_selected",
    permission=permissions.MARK_DEAD,
    title="Mark selected dead",
    eligible=(Status.FAILED,),
    confirm_label="Yes, mark them dead",
    will_do=("%(n)d job will be marked dead", "%(n)d jobs will be marked dead"),
    done=("%(n)d job marked dead", "%(n)d jobs marked dead"),
    logged="Marked dead by an operator.",
    note_text="Dead jobs are not retried automatically; they can still be retried by hand.",
)
VERBS: dict[str, Verb] = {verb.key: verb for verb in (RETRY, DISCARD, MARK_DEAD)}


# --- one verb on a selection --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Outcome:
    message: str
    level: int


def status_counts(queryset: QuerySet[FailedJob]) -> dict[str, int]:
    """``{status: rows}`` of the selection, in one query."""
    rows = queryset.order_by().values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def skipped_phrases(verb: Verb, counts: dict[str, int]) -> list[str]:
    """One phrase per state the verb skips, in lifecycle order."""
    return [plural(SKIPPED[Status(s)], counts[s]) for s in Status.values if s not in verb.eligible and counts.get(s)]


def left_phrase(n: int) -> str:
    return ngettext(
        "%(n)d left for another run of the action (one run handles at most %(max)d jobs)",
        "%(n)d left for another run of the action (one run handles at most %(max)d jobs)",
        n,
    ) % {"n": n, "max": ACTION_MAX_JOBS}


#: Why a selected job would not be sent (a retry's dry run, ``bulkplan.REASONS``), singular and plural.
WOULD_NOT = {
    "unknownTask": (
        "%(n)d would not be sent because its task is not registered in this project (it would be marked dead)",
        "%(n)d would not be sent because their task is not registered in this project (they would be marked dead)",
    ),
    "unsendable": (
        "%(n)d would not be sent because its stored call cannot be sent as it stands (it would be marked dead)",
        "%(n)d would not be sent because their stored calls cannot be sent as they stand (they would be marked dead)",
    ),
    "expired": (
        "%(n)d would not be sent because its call has expired (it would be marked dead)",
        "%(n)d would not be sent because their calls have expired (they would be marked dead)",
    ),
}


def preview(verb: Verb, queryset: QuerySet[FailedJob]) -> dict[str, Any]:
    """What the verb would do to the selection: for the confirmation page (a retry: its dry run per group)."""
    counts = status_counts(queryset)
    eligible = sum(counts.get(status, 0) for status in verb.eligible)
    background = verb.in_background(eligible)
    plans = verb.dry_run(queryset) if eligible else ()
    would_not = bulkplan.not_sent_total(plans)
    acting = eligible if background else min(eligible, ACTION_MAX_JOBS)
    if plans and not background and eligible <= ACTION_MAX_JOBS:
        acting = sum(plan.would_send for plan in plans)
    return {
        "selected": sum(counts.values()),
        "eligible": eligible,
        "will_do": plural(verb.will_do, acting),
        "skipped": [plural(WOULD_NOT[r], n) for r, n in would_not.items() if n] + skipped_phrases(verb, counts),
        "left": left_phrase(eligible - ACTION_MAX_JOBS) if eligible > ACTION_MAX_JOBS and not background else "",
        "background": admin_operations.BACKGROUND % {"max": bulkops.SYNC_MAX_JOBS} if background else "",
        "groups": [{**plan.as_dict(), "whyNot": plan.why_not()} for plan in plans],
        "note": verb.note(),
    }


def perform(verb: Verb, queryset: QuerySet[FailedJob], *, request: HttpRequest, filter_text: str = "") -> Outcome:
    """Apply ``verb`` to the selection (at most ``ACTION_MAX_JOBS`` of it, or all of it in the background when
    the verb does so); the message says what happened to each, or links to the background operation."""
    counts = status_counts(queryset)
    eligible = sum(counts.get(status, 0) for status in verb.eligible)
    if verb.in_background(eligible):
        ids = list(queryset.filter(status__in=verb.eligible).order_by("pk").values_list("pk", flat=True))
        started = admin_operations.start_in_background(
            ids,
            actor=actor_of(request.user),
            filter_text=filter_text,
            rate_per_second=admin_operations.rate_of(request),
        )
        skipped = skipped_phrases(verb, counts)
        text = format_html("{}{}.", started, "; " + "; ".join(skipped) if skipped else "")
        logger.info("admin: %s by %s of %s jobs in the background", verb.key, request.user.get_username(), len(ids))
        return Outcome(message=text, level=messages.SUCCESS)
    ids = list(queryset.filter(status__in=verb.eligible).order_by("pk").values_list("pk", flat=True)[:ACTION_MAX_JOBS])
    rate = admin_operations.rate_of(request)
    applied = (
        verb.apply(ids, now=timezone.now(), user=request.user, rate_per_second=rate)
        if ids
        else Applied(changed_ids=(), problems=[])
    )
    done = len(applied.changed_ids)
    if done:
        log_changes(verb, applied.changed_ids, user=request.user)

    parts = [plural(verb.done, done), *applied.problems, *skipped_phrases(verb, counts)]
    if eligible > len(ids):
        parts.append(left_phrase(eligible - len(ids)))
    message = "; ".join(parts) + "." + verb.closing(done)
    clean = done > 0 and done == len(ids) == eligible
    logger.info(
        "admin: %s by %s on %s selected jobs: %s", verb.key, request.user.get_username(), sum(counts.values()), message
    )
    return Outcome(message=message, level=messages.SUCCESS if clean else messages.WARNING)


def log_changes(verb: Verb, changed_ids: Sequence[int], *, user: User) -> None:
    """One admin history entry (``LogEntry``) per job the verb changed (as its service says), in one INSERT."""
    assert user.pk is not None  # only a saved, logged-in user acts in the admin
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=FailedJob.objects.filter(pk__in=list(changed_ids)).only("pk", "task_name", "origin_task_id", "status"),
        action_flag=CHANGE,
        change_message=verb.logged,
    )
