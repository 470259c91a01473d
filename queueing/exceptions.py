"""Exceptions a task can raise to steer the retry system, and the ones the system raises itself."""

from __future__ import annotations

from datetime import timedelta


class PermanentError(Exception):
    """Raised by a task when retrying cannot help (bad input, unknown recipient).

    No immediate retries; the job is recorded straight away as ``dead`` and waits for a person (unless the
    task's error policy, ``queueing/policy.py``, says otherwise for this class).
    """

    #: The kind this class declares (``policy.declared_kind``); an error policy's rule for a subclass wins.
    error_kind = "permanent"


class TransientError(Exception):
    """Raised by a task when the failure is worth retrying; ``retry_after`` says when, if the task knows.

    Without ``retry_after``: retried at once, then by the sweep, as any other error. With it (seconds or a
    ``timedelta``, e.g. a server's ``Retry-After``): a deferral. The immediate retry and the sweep both wait
    that long (capped by ``RETRY_AFTER_MAX``), and the wait uses up no automatic retry.
    """

    #: The kind this class declares (``policy.declared_kind``); with ``retry_after`` it is a deferral.
    error_kind = "transient"

    def __init__(self, message: str = "", *, retry_after: float | timedelta | None = None) -> None:
        super().__init__(message)
        if isinstance(retry_after, timedelta):
            retry_after = retry_after.total_seconds()
        if retry_after is not None and not retry_after >= 0:
            raise ValueError(f"retry_after must be a number of seconds >= 0 or a timedelta, got {retry_after!r}")
        #: Seconds the task asks to wait before the next attempt; ``None``: no hint.
        self.retry_after_seconds: float | None = None if retry_after is None else float(retry_after)

    def __reduce__(self) -> tuple[object, ...]:
        # Celery pickles exceptions between processes; keep the keyword argument.
        return (_transient_error, (str(self), self.retry_after_seconds))


def _transient_error(message: str, retry_after_seconds: float | None) -> TransientError:
    return TransientError(message, retry_after=retry_after_seconds)


class UnknownQueue(ValueError):
    """A queue name that neither the Celery app nor any recorded job knows."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown queue {name!r}; known queues: {', '.join(known) or '(none)'}")


class InvalidTransition(RuntimeError):
    """A lifecycle verb called on a job in a state it cannot leave that way (``models/__init__.py`` tells the moves)."""

    def __init__(self, job_id: int | None, status: str, move: str, allowed: tuple[str, ...] = ()) -> None:
        self.job_id = job_id
        self.status = str(status)
        self.move = move
        allowed_from = f"; allowed from: {', '.join(map(str, allowed))}" if allowed else ""
        super().__init__(f"job {job_id}: cannot {move} a job that is {self.status!r}{allowed_from}")
