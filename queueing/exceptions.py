"""Exceptions a task can raise to steer the retry system, and the ones the system raises itself."""

from __future__ import annotations


class PermanentError(Exception):
    """Raised by a task when retrying cannot help (bad input, unknown recipient).

    No immediate retries; the job is recorded straight away as ``dead`` and waits for a person.
    """


class UnknownQueue(ValueError):
    """A queue name that neither the Celery app nor any recorded job knows."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown queue {name!r}; known queues: {', '.join(known) or '(none)'}")


class InvalidTransition(RuntimeError):
    """A lifecycle verb called on a job in a state it cannot leave that way (``models.py`` tells the moves)."""

    def __init__(self, job_id: int | None, status: str, move: str, allowed: tuple[str, ...] = ()) -> None:
        self.job_id = job_id
        self.status = str(status)
        self.move = move
        allowed_from = f"; allowed from: {', '.join(map(str, allowed))}" if allowed else ""
        super().__init__(f"job {job_id}: cannot {move} a job that is {self.status!r}{allowed_from}")
