"""The automatic retry policy and its decisions: plain values and pure functions (no Django here).

Where a job goes when a call fails for good, or when a clone that started vanished (``models.py``, steps 2,
5 and 6): ``failed`` and due again after the retry delay, or ``dead`` with a reason. The lifecycle verbs on
``FailedJob`` ask this module and write what it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """The automatic retry policy in force: settings, changed by ``start_auto_retry`` at run time."""

    max_retries: int
    retry_delay_seconds: float
    check_interval_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "check_interval_seconds": self.check_interval_seconds,
        }


class Reason(StrEnum):
    """Why a job is in its state, as a code (``FailedJob.Reason`` offers the same codes to Django)."""

    NONE = ""
    """No particular reason: a job failed and waiting for its next automatic retry, or resolved."""
    UNREGISTERED_TASK = "unregistered_task"
    """Dead: the stored task name is not registered in this project."""
    PERMANENT_ERROR = "permanent_error"
    """Dead: the task raised ``PermanentError`` (or automatic retries are switched off)."""
    RETRIES_USED_UP = "retries_used_up"
    """Dead: the automatic retries are used up."""
    LEASE_EXPIRED = "lease_expired"
    """A retry started and never reported back within its lease; that retry is used up."""
    LEASE_EXPIRED_NOT_STARTED = "lease_expired_not_started"
    """A retry's lease ran out before it started (the publish was lost); the retry was given back."""
    UNSENDABLE = "unsendable"
    """Dead: the stored call no longer fits its task (or cannot be encoded), so it cannot be sent."""
    PUBLISH_FAILED = "publish_failed"
    """The broker refused the retry; the claim and the retry were given back."""
    FAILED_AFTER_OPERATOR_RETRY = "failed_after_operator_retry"
    """Dead again: an operator retried a dead job and it failed again."""
    OPERATOR_DISCARDED = "operator_discarded"
    """Discarded by an operator."""
    OPERATOR_MARKED_DEAD = "operator_marked_dead"
    """Marked dead by an operator."""
    EXPIRED = "expired"
    """Dead: the call's own deadline (Celery's ``expires``) passed before it could be sent again."""
    MAX_AGE_EXCEEDED = "max_age_exceeded"
    """Dead: still failing ``MAX_AGE`` after its first failure (its group kept it waiting that long)."""


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Where a job goes: ``dead`` (with a reason), or ``failed`` and due after ``retry_in_seconds``."""

    dead: bool
    reason: Reason
    text: str
    retry_in_seconds: float | None


def out_of_automatic_retries(*, retry_count: int, max_retries: int) -> bool:
    """Whether a job has used all its automatic retries (``MAX_RETRIES == 0``: every job is, at once)."""
    return retry_count >= max_retries


def after_failure(*, permanent: bool, retry_count: int, from_dead: bool, policy: RetryPolicy) -> Verdict:
    """A call (the original or a clone) failed for good, after its immediate retries (steps 2 and 5).

    ``from_dead``: the failing clone was an operator's retry of a dead job, which goes back to ``dead``.
    """
    if from_dead:
        return _dead(Reason.FAILED_AFTER_OPERATOR_RETRY, "failed again after an operator's retry of a dead job")
    if permanent:
        return _dead(Reason.PERMANENT_ERROR, "permanent error: not retried automatically")
    if out_of_automatic_retries(retry_count=retry_count, max_retries=policy.max_retries):
        return _dead(Reason.RETRIES_USED_UP, f"automatic retries used up ({retry_count} of {policy.max_retries})")
    return Verdict(dead=False, reason=Reason.NONE, text="", retry_in_seconds=policy.retry_delay_seconds)


def after_lost_clone(*, started_at: str, retry_count: int, from_dead: bool, policy: RetryPolicy) -> Verdict:
    """A clone started and its lease ran out (its worker died): that retry is used up (step 6)."""
    text = f"lease expired: the retry started at {started_at} and never finished"
    if from_dead or out_of_automatic_retries(retry_count=retry_count, max_retries=policy.max_retries):
        return _dead(Reason.LEASE_EXPIRED, text)
    return Verdict(dead=False, reason=Reason.LEASE_EXPIRED, text=text, retry_in_seconds=policy.retry_delay_seconds)


def _dead(reason: Reason, text: str) -> Verdict:
    return Verdict(dead=True, reason=reason, text=text, retry_in_seconds=None)
