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
