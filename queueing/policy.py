"""The automatic retry policy and its decisions: plain values and pure functions (no Django here).

Where a job goes when a call fails for good, or when a clone that started vanished (``models/__init__.py``, steps 2,
5 and 6): ``failed`` and due again after the retry delay (or after the server's ``Retry-After``), or ``dead``
with a reason. The lifecycle verbs on ``FailedJob`` ask this module and write what it says.

What kind of failure an error is (``ErrorKind``) is decided by an ``ErrorPolicy``: per task
(``retry_policy=`` on a ``RetryableTask``) and per queue (``QUEUEING["ERROR_POLICIES"]``), the most specific
exception class winning; a class may also declare its own kind (``error_kind = "permanent"``, as
``queueing.exceptions.PermanentError`` does); anything else is transient. ``classify`` reads an exception
against a policy; ``after_failure`` says where the job goes and how long until its next automatic retry.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
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
    SERVER_DEFERRED = "server_deferred"
    """Failed: the server asked to be called later (``Retry-After``); due then, no automatic retry used up."""
    POLICY_DELAY = "policy_delay"
    """Failed: the task's error policy gives this kind of error its own wait (e.g. a session not found)."""
    UNDECRYPTABLE = "undecryptable"
    """Dead: a sensitive argument of the stored call cannot be decrypted (its key is gone); never sent garbage."""


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


def after_failure(
    *,
    permanent: bool = False,
    error: ClassifiedError | None = None,
    retry_count: int,
    from_dead: bool,
    policy: RetryPolicy,
) -> Verdict:
    """A call (the original or a clone) failed for good, after its immediate retries (steps 2 and 5).

    ``error`` is what ``classify`` made of the exception (``permanent=True`` is short for a permanent one
    without words). ``from_dead``: the failing clone was an operator's retry of a dead job, which goes back to
    ``dead``. For a deferral, ``retry_count`` is the count with the deferred retry already given back.
    The verdict's ``retry_in_seconds`` is how long until the next automatic retry.
    """
    kind = error.kind if error is not None else ErrorKind.PERMANENT if permanent else ErrorKind.TRANSIENT
    if from_dead:
        return _dead(Reason.FAILED_AFTER_OPERATOR_RETRY, "failed again after an operator's retry of a dead job")
    if kind is ErrorKind.PERMANENT:
        text = error.text if error is not None and error.text else "permanent error: not retried automatically"
        return _dead(Reason.PERMANENT_ERROR, text)
    if out_of_automatic_retries(retry_count=retry_count, max_retries=policy.max_retries):
        return _dead(Reason.RETRIES_USED_UP, f"automatic retries used up ({retry_count} of {policy.max_retries})")
    if error is None or error.delay_seconds is None:
        return Verdict(dead=False, reason=Reason.NONE, text="", retry_in_seconds=policy.retry_delay_seconds)
    reason = Reason.SERVER_DEFERRED if kind is ErrorKind.DEFERRED else Reason.POLICY_DELAY
    return Verdict(dead=False, reason=reason, text=error.text, retry_in_seconds=error.delay_seconds)


def after_lost_clone(*, started_at: str, retry_count: int, from_dead: bool, policy: RetryPolicy) -> Verdict:
    """A clone started and its lease ran out (its worker died): that retry is used up (step 6)."""
    text = f"lease expired: the retry started at {started_at} and never finished"
    if from_dead or out_of_automatic_retries(retry_count=retry_count, max_retries=policy.max_retries):
        return _dead(Reason.LEASE_EXPIRED, text)
    return Verdict(dead=False, reason=Reason.LEASE_EXPIRED, text=text, retry_in_seconds=policy.retry_delay_seconds)


def _dead(reason: Reason, text: str) -> Verdict:
    return Verdict(dead=True, reason=reason, text=text, retry_in_seconds=None)


# --- error kinds and the error policy -------------------------------------------------------------------------


class ErrorKind(StrEnum):
    """What kind of failure an error is; ``classify`` tells it from the exception and the policy in force."""

    TRANSIENT = "transient"
    """Worth retrying (network error, timeout, 5xx, any error no rule names): retried at once, then by the
    sweep after ``RETRY_DELAY`` (or the rule's ``delay_seconds``); each automatic retry is used up."""
    DEFERRED = "deferred"
    """The server said when to come back (``Retry-After`` on a 429/503, ``TransientError(retry_after=…)``):
    the immediate retry and the sweep both wait that long (capped, jittered up); no automatic retry is used up."""
    PERMANENT = "permanent"
    """Retrying cannot help (``PermanentError``, or a rule with ``retry=False``): ``dead`` at once, with the
    reason; no immediate retries."""


@dataclass(frozen=True, kw_only=True)
class OnError:
    """What to do with one kind of error: one rule of an ``ErrorPolicy``."""

    retry_now: bool = True
    """Retry at once (``IMMEDIATE_RETRIES`` times, with the backoff) before the failure is recorded."""
    retry: bool = True
    """Retry automatically at all; ``False``: recorded ``dead`` at once (reason ``permanent_error``)."""
    delay_seconds: float | None = None
    """Seconds the sweep waits before re-sending; ``None``: ``RETRY_DELAY`` in force."""
    honour_retry_after: bool = True
    """A server's hint (the exception's ``retry_after_seconds``) sets both waits, and is a deferral."""
    label: str = ""
    """Words for the row's reason (``"session not found"``); empty: the exception's class name."""

    @classmethod
    def dead(cls, *, label: str = "") -> OnError:
        """Dead at once, no immediate retries: retrying this kind of error cannot help."""
        return cls(retry_now=False, retry=False, label=label)

    @classmethod
    def later(cls, *, delay_seconds: float, retry_now: bool = False, label: str = "") -> OnError:
        """Retried by the sweep after ``delay_seconds`` (by default without immediate retries)."""
        return cls(retry_now=retry_now, delay_seconds=delay_seconds, label=label)


@dataclass(frozen=True)
class ErrorPolicy:
    """Rules by exception class; for an error, the rule of the most specific class it is an instance of.

    ``ErrorPolicy.of({SessionNotFound: OnError.later(delay_seconds=900), GatewayRefused: OnError.dead()})``.
    ``a.over(b)``: ``a``'s rules, then ``b``'s for the classes ``a`` does not name.
    """

    rules: tuple[tuple[type[BaseException], OnError], ...] = ()

    @classmethod
    def of(cls, rules: Mapping[type[BaseException], OnError]) -> ErrorPolicy:
        for kind, rule in rules.items():
            if not (isinstance(kind, type) and issubclass(kind, BaseException) and isinstance(rule, OnError)):
                raise TypeError(f"an error policy maps exception classes to OnError rules, got {kind!r}: {rule!r}")
        return cls(tuple(rules.items()))

    def over(self, fallback: ErrorPolicy) -> ErrorPolicy:
        named = {kind for kind, _ in self.rules}
        return ErrorPolicy((*self.rules, *((k, r) for k, r in fallback.rules if k not in named)))

    def rule_for(self, exc: BaseException) -> OnError:
        """The rule of the most specific class of ``exc`` that a rule names or that declares its own kind."""
        by_class = dict(self.rules)
        for cls in type(exc).__mro__:
            if cls in by_class:
                return by_class[cls]
            if (declared := declared_kind(cls)) is not None:
                return OnError.dead() if declared is ErrorKind.PERMANENT else OnError()
        return OnError()


def declared_kind(cls: type) -> ErrorKind | None:
    """The kind an exception class declares itself (its own ``error_kind`` attribute, not an inherited one).

    ``queueing.exceptions.PermanentError`` declares ``"permanent"``, ``TransientError`` ``"transient"``; a class
    of any library can do the same without subclassing them.
    """
    value = vars(cls).get("error_kind")
    return ErrorKind(value) if value in {kind.value for kind in ErrorKind} else None


@dataclass(frozen=True, kw_only=True)
class HintLimits:
    """How a server's ``Retry-After`` hint is honoured (``QUEUEING``: ``RETRY_AFTER_MAX``, ``RETRY_AFTER_JITTER``)."""

    max_seconds: float = 3600.0
    """The longest wait a hint can ask for; a longer one is cut to this."""
    jitter_ratio: float = 0.1
    """Up to this share of the wait is added at random, so that deferred jobs do not all come back at once."""


@dataclass(frozen=True, kw_only=True)
class ClassifiedError:
    """What a failing call's error is, under the policy in force (``classify``)."""

    kind: ErrorKind
    retry_now: bool
    """Whether the call may be retried at once."""
    retry_after_seconds: float | None = None
    """The server's hint, as it gave it (a deferral only)."""
    delay_seconds: float | None = None
    """Seconds until the sweep's retry: the hint (capped, jittered), the rule's delay, or ``None`` for
    ``RETRY_DELAY``."""
    text: str = ""
    """The row's reason, in words (empty for a plain transient error)."""


def retry_after_of(exc: BaseException) -> float | None:
    """The server's hint an exception carries (``retry_after_seconds``), in seconds; ``None`` without one."""
    value = getattr(exc, "retry_after_seconds", None)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        return None
    return float(value)


def deferral_seconds(retry_after_seconds: float, *, limits: HintLimits, rng: random.Random | None = None) -> float:
    """Seconds to wait for a server's hint: the hint, capped at ``max_seconds``, plus up to ``jitter_ratio`` of it.

    The jitter only ever adds (never earlier than the server asked, unless the cap cut the hint), and is
    bounded by ``jitter_ratio`` of the capped wait.
    """
    wait = min(max(0.0, retry_after_seconds), limits.max_seconds)
    return wait + (rng.uniform if rng else random.uniform)(0, wait * max(0.0, limits.jitter_ratio))


def classify(
    exc: BaseException, policy: ErrorPolicy, *, limits: HintLimits, rng: random.Random | None = None
) -> ClassifiedError:
    """What ``exc`` is under ``policy`` (the task's rules over its queue's, then the kinds classes declare)."""
    rule = policy.rule_for(exc)
    label = describe_error(exc, label=rule.label)
    if not rule.retry:
        return ClassifiedError(
            kind=ErrorKind.PERMANENT, retry_now=False, text=f"permanent error ({label}): not retried automatically"
        )
    hint = retry_after_of(exc)
    if hint is not None and rule.honour_retry_after:
        wait = deferral_seconds(hint, limits=limits, rng=rng)
        return ClassifiedError(
            kind=ErrorKind.DEFERRED,
            retry_now=rule.retry_now,
            retry_after_seconds=hint,
            delay_seconds=wait,
            text=f"server deferred ({label}): asked to wait {hint:g} s (Retry-After); due in {wait:.0f} s, "
            "no automatic retry used up",
        )
    if rule.delay_seconds is None:
        return ClassifiedError(kind=ErrorKind.TRANSIENT, retry_now=rule.retry_now)
    return ClassifiedError(
        kind=ErrorKind.TRANSIENT,
        retry_now=rule.retry_now,
        delay_seconds=rule.delay_seconds,
        text=f"{label}: retried automatically after {rule.delay_seconds:g} s (the task's error policy)",
    )


def describe_error(exc: BaseException, *, label: str = "") -> str:
    """Short words for an error: the rule's label or the class name, and the field it names, if any."""
    words = label or type(exc).__name__
    field = getattr(exc, "field", None)
    status = getattr(exc, "status_code", None)
    details = [f"field {field!r}" if isinstance(field, str) and field else "", f"HTTP {status}" if status else ""]
    return ", ".join([words, *(d for d in details if d)])
