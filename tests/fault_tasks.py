"""Tasks the fault scenarios run (``tests/faults.py``). They write what happens to files (the ledger), not to
Redis, so that a scenario can read it while its broker is down."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import shared_task

from tests.tasks import Boom

#: Memory kept by ``hog``, so that the worker child grows as a leaking one does.
_KEPT: list[bytes] = []


def note(key: str, event: str) -> None:
    """Append one event (``start``, ``end`` …) with this process's id to the ledger of ``key``, fsynced."""
    path = Path(os.environ["FAULTS_LEDGER"]) / key
    with path.open("a") as out:
        out.write(f"{event}:{os.getpid()}\n")
        out.flush()
        os.fsync(out.fileno())


@shared_task(name="tests.fault_tasks.hold", immediate_retries=0)
def hold(key: str, seconds: float, outcome: str = "ok") -> str:
    """Run for ``seconds``, then succeed (``ok``) or fail (``fail``)."""
    note(key, "start")
    time.sleep(seconds)
    note(key, "end")
    if outcome == "fail":
        raise Boom(f"{key} fails on purpose")
    return "ok"


@shared_task(name="tests.fault_tasks.fail_when_released", immediate_retries=0)
def fail_when_released(key: str, release: str, timeout_seconds: float = 120) -> None:
    """Wait until the file ``release`` exists (the scenario has set up its fault), then fail for good."""
    note(key, "start")
    deadline = time.monotonic() + timeout_seconds
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    note(key, "end")
    raise Boom(f"{key} fails on purpose")


@shared_task(name="tests.fault_tasks.hog", immediate_retries=0)
def hog(key: str, megabytes: int) -> str:
    """Keep ``megabytes`` more memory in this worker process (a leak), then succeed."""
    note(key, "start")
    _KEPT.append(os.urandom(megabytes * 1024 * 1024))
    note(key, "end")
    return "ok"


@shared_task(name="tests.fault_tasks.overrun", immediate_retries=0)
def overrun(key: str, seconds: float) -> str:
    """Run for ``seconds`` whatever happens: the soft time limit is noted and ignored (the hard one kills it)."""
    from celery.exceptions import SoftTimeLimitExceeded

    note(key, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            note(key, "soft")
    note(key, "end")
    return "ok"
