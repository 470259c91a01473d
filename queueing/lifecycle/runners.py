"""Which copy of a clone runs where: the ``running_on`` mark a starting clone leaves on its row (``runner_mark``)
and whether another live copy of the same clone message holds the row (``held_by_another_copy``; step 4 of
``models/__init__.py``). Reading only: the state change is ``lifecycle.start_clone``.
"""

from __future__ import annotations

from collections.abc import Callable

from queueing.models import FailedJob


def runner_mark(*, host: str, pid: int, attempt: int) -> str:
    """What ``running_on`` holds for one running copy of a clone: ``host:pid#attempt``."""
    return f"{host}:{pid}#{attempt}"


def _parse_mark(mark: str) -> tuple[str, int, int]:
    where, _, attempt = mark.rpartition("#")
    host, _, pid = where.rpartition(":")
    return host, int(pid or 0), int(attempt or 0)


def held_by_another_copy(job: FailedJob, *, runner: str, alive: Callable[[int], bool]) -> bool:
    """Step 4: whether another copy of the same clone message runs now (then this one must not start).

    Not when no copy marked the row, when the mark is this copy's own, when this copy is a later immediate
    retry (the marked run ended: it sent this one), or when the marking process on this host is gone.
    """
    if not job.running_on or job.running_on == runner:
        return False
    held_host, held_pid, held_attempt = _parse_mark(job.running_on)
    host, _, attempt = _parse_mark(runner)
    if attempt > held_attempt:
        return False
    return not (held_host == host and not alive(held_pid))
