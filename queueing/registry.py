"""The task registry, the queues the project knows, and the message headers that tie a clone to its row.

Only tasks registered here are ever re-sent; a queue name from outside is checked once, at the edge
(``validate_queue``).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery, Task
from celery.app import app_or_default
from django.db import connection
from django.utils.dateparse import parse_datetime

from queueing.exceptions import UnknownQueue
from queueing.models import FailedJob

#: Message headers that tie a clone to its row. The claim token fences it: a clone whose row was taken back
#: (lease expired) or re-claimed finds no row under its token and does nothing.
HEADER_JOB_ID = "queueing_job_id"
HEADER_CLAIM = "queueing_claim"
HEADER_ORIGIN = "queueing_origin"
#: Set on a canary's call (``queueing/breaker.py``): it makes one attempt, without immediate retries.
HEADER_CANARY = "queueing_canary"


@functools.cache
def _load_task_modules(app: Celery) -> None:
    # Celery's autodiscovery is lazy outside the worker: a web process or a management command would
    # otherwise see only the tasks of the modules it happened to import.
    app.loader.import_default_modules()


def celery_app() -> Celery:
    app = app_or_default()  # the current app itself (not the ``current_app`` proxy): a cache key
    _load_task_modules(app)
    return app


def registered_task(name: str) -> Task | None:
    """The task registered under ``name`` in this project, or ``None``. Only these are ever re-sent."""
    return celery_app().tasks.get(name)


def is_resendable(task: Task) -> bool:
    """Whether the system may send ``task`` again from a row: a task of the project whose failures it records.

    Never Celery's own tasks nor the system's (the sweep, the failure recorder): a tampered row naming one of
    them must not make the sweep run it.
    """
    return not task.name.startswith("celery.") and getattr(task, "record_failures", True)


def resendable_task_names() -> set[str]:
    """The names of the registered tasks the sweep and the operators may send again (``is_resendable``)."""
    return {name for name, task in list(celery_app().tasks.items()) if is_resendable(task)}


def stored_call_problem(job: FailedJob) -> str | None:
    """What makes a row's stored call unsendable as it stands (a tampered or corrupted row), or ``None``.

    The arguments' fit to the task's signature is Celery's to check when sending (``TypeError``).
    """
    if not isinstance(job.args, list):
        return f"its args must be a JSON list, got {type(job.args).__name__}"
    if not isinstance(job.kwargs, dict):
        return f"its kwargs must be a JSON object, got {type(job.kwargs).__name__}"
    if not isinstance(job.options, dict):
        return f"its options must be a JSON object, got {type(job.options).__name__}"
    if not isinstance(job.options.get("headers") or {}, dict):
        return "its options' headers must be a JSON object"
    if (expires := job.options.get("expires")) and not _aware_time(expires):
        return f"its expires must be an ISO 8601 time with a time zone, got {str(expires)[:50]!r}"
    for limit in ("time_limit", "soft_time_limit"):
        value = job.options.get(limit)
        if value is not None and (type(value) not in (int, float) or value <= 0):
            return f"its {limit} must be a positive number of seconds, got {str(value)[:50]!r}"
    priority = job.options.get("priority")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):
        return f"its priority must be a whole number from 0 to 255, got {str(priority)[:50]!r}"
    if celery_app().conf.task_queues and job.queue not in (queues := declared_queues()):
        return (
            f"unknown queue {job.queue[:200]!r}; known queues: {', '.join(sorted(queues))}: fix the row's queue "
            "(or declare the queue in CELERY_TASK_QUEUES), then retry the job"
        )
    return None


def _aware_time(value: Any) -> bool:
    try:
        parsed = parse_datetime(str(value))
    except ValueError:
        return False
    return parsed is not None and parsed.tzinfo is not None


def declared_queues() -> set[str]:
    """The queues the Celery app declares (``task_queues`` and the default queue), without a query."""
    app = celery_app()
    return {q.name for q in (app.conf.task_queues or ())} | {app.conf.task_default_queue}


def known_queues() -> list[str]:
    """Queues the Celery app declares plus those of recorded jobs."""
    return sorted(declared_queues() | recorded_queues())


def recorded_queues() -> set[str]:
    """The distinct queues of recorded jobs, without reading the whole table: a loose index scan of the
    ``(queue, status)`` index, one probe per distinct queue (a ``DISTINCT`` reads every row: docs/benchmarks.md).
    """
    table = connection.ops.quote_name(FailedJob._meta.db_table)
    sql = (
        f"WITH RECURSIVE q(queue) AS (SELECT MIN(queue) FROM {table} UNION ALL "
        f"SELECT (SELECT MIN(queue) FROM {table} WHERE queue > q.queue) FROM q WHERE q.queue IS NOT NULL) "
        "SELECT queue FROM q WHERE queue IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {row[0] for row in cursor.fetchall()}


def validate_queue(name: str | None) -> None:
    """Raise ``UnknownQueue`` (listing the known ones) unless ``name`` is None or a known queue.

    A known name costs at most one indexed ``EXISTS``; only an unknown one pays for the full list.
    """
    if name is None or name in declared_queues():
        return
    # A NUL cannot be in a queue name, and PostgreSQL refuses it in a query: it is simply not a known queue.
    if "\x00" not in name and FailedJob.objects.filter(queue=name).exists():
        return
    raise UnknownQueue(name, known_queues())


def message_header(request: Any, name: str) -> Any:
    """A custom message header of the running call (Celery puts them on the request, or under ``headers``)."""
    value = request.get(name) if hasattr(request, "get") else getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value
