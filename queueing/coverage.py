"""Tasks that are not ``RetryableTask``: getting their final failures recorded and retried, and saying which are.

Two ways, both in ``docs/workflows.md`` ("Tasks that are not RetryableTask"):

1. **Put ``RetryableTask`` first in the task's bases** (a task with its own base class):
   ``class MyTask(RetryableTask, OwnBase)``. Everything a ``RetryableTask`` does then holds, workflow
   semantics included.
2. **Name it in ``QUEUEING["RECORD_FAILURES_OF"]``** (fnmatch patterns; for a third-party task whose class
   you cannot change). The signal handlers below record its final failure (``task_failure``), fence and
   resolve its clones (``task_prerun``, ``task_success``). Celery has already run the task's failure path
   when ``task_failure`` is sent (FAILURE stored, error callbacks run, the chain failed): for its workflow,
   such a job is failed at once, not pending, and a clone that later succeeds still stores its result under
   the original id and goes on with the chain. Its own immediate retries are its own (no ``autoretry``
   from here), and a stale clone runs (its outcome is not recorded), since a signal handler cannot stop it.

At worker start (``worker_ready``) one log line lists the registered tasks that are covered and those that
are not.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.app import app_or_default
from celery.signals import task_failure, task_prerun, task_success, worker_ready

from queueing.conf import get_settings

logger = logging.getLogger(__name__)

#: Celery's own tasks (``celery.chord_unlock``, ``celery.backend_cleanup`` …): housekeeping, never listed.
CELERY_OWN_PREFIX = "celery."


def by_pattern(name: str) -> bool:
    """Whether ``RECORD_FAILURES_OF`` names this task."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in get_settings().record_failures_of)


def _is_retryable(task: Any) -> bool:
    from queueing.tasks import RetryableTask

    return isinstance(task, RetryableTask)


def watched(task: Any) -> bool:
    """A task that is not ``RetryableTask`` and that ``RECORD_FAILURES_OF`` names: the handlers here record it."""
    return task is not None and not _is_retryable(task) and by_pattern(getattr(task, "name", "") or "")


@dataclass(frozen=True)
class Coverage:
    """The registered tasks (Celery's own left out), sorted by name, by whether their failures are recorded."""

    covered: list[str]  # RetryableTask, or named in RECORD_FAILURES_OF
    opted_out: list[str]  # RetryableTask with record_failures=False (the system's own housekeeping)
    not_covered: list[str]  # neither: a final failure is Celery's alone


def coverage(app: Celery) -> Coverage:
    result = Coverage(covered=[], opted_out=[], not_covered=[])
    for name, task in sorted(app.tasks.items()):
        if name.startswith(CELERY_OWN_PREFIX):
            continue
        if _is_retryable(task):
            (result.covered if getattr(task, "record_failures", True) else result.opted_out).append(name)
        else:
            (result.covered if by_pattern(name) else result.not_covered).append(name)
    return result


@worker_ready.connect
def _log_coverage(sender: Any = None, **_: Any) -> None:
    # The worker's own app, whose tasks it has imported (``registry.celery_app()`` would import them again,
    # which blocks in the worker's main process at this point).
    found = coverage(getattr(sender, "app", None) or app_or_default())
    logger.info(
        "failures recorded and retried for %d tasks: %s; NOT for %d tasks: %s (base them on RetryableTask or "
        "name them in QUEUEING RECORD_FAILURES_OF); opted out (record_failures=False): %s",
        len(found.covered),
        ", ".join(found.covered) or "-",
        len(found.not_covered),
        ", ".join(found.not_covered) or "-",
        ", ".join(found.opted_out) or "-",
    )


# --- the signal route for tasks named in RECORD_FAILURES_OF ------------------------------------------------


@task_prerun.connect
def _start_clone(sender: Task | None = None, task_id: str = "", **_: Any) -> None:
    if not watched(sender):
        return
    from queueing import recording
    from queueing.tasks import claim_headers

    assert sender is not None
    if (claim := claim_headers(sender.request)) is not None and not recording.start_clone(
        job_id=claim[0], claim_token=claim[1], task_id=task_id
    ):
        logger.warning("job %s: retry %s is stale (claim gone); its outcome will not be recorded", claim[0], task_id)


@task_success.connect
def _resolve_clone(sender: Task | None = None, **_: Any) -> None:
    if not watched(sender):
        return
    from queueing import recording
    from queueing.tasks import claim_headers

    assert sender is not None
    if (claim := claim_headers(sender.request)) is not None:
        recording.record_success(job_id=claim[0], claim_token=claim[1], task_id=str(sender.request.id))


@task_failure.connect
def _record_failure(
    sender: Task | None = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    if not watched(sender) or exception is None:
        return
    from queueing.tasks import failure_of, record

    assert sender is not None
    traceback = str(getattr(einfo, "traceback", "") or "")
    try:
        record(
            failure_of(sender, exception, traceback=traceback, args=args, kwargs=kwargs, task_id=task_id, pending=False)
        )
    except Exception:  # a signal handler's error is only logged by Celery; say what was lost
        logger.exception("task %s[%s]: its failure could not be recorded", sender.name, task_id)
