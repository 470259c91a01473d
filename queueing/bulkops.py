"""Large bulk retries run in the background, with their progress in a ``BulkOperation`` row.

A bulk retry of at most ``SYNC_MAX_JOBS`` jobs is answered at once, as before (``{"total", "retried"}``); a
larger one becomes a ``BulkOperation`` that a worker runs (``run_bulk_retry``), writing ``sent`` of ``total``
after each batch, so that the API answers 202 in milliseconds with where to read the progress
(``GET /api/queue/operations/<id>``) and the admin lists the operations. The work itself is
``operations.retry_now``: the same streaming, batching and reporting as any bulk retry.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from queueing import operations
from queueing.models import BulkOperation
from queueing.tasks import RetryableTask

logger = logging.getLogger(__name__)

State = BulkOperation.State

#: Most jobs a bulk retry sends while the caller waits; more run in the background. At about 1 ms a job
#: (docs/benchmarks.md) 1,000 keep a request under a couple of seconds.
SYNC_MAX_JOBS = 1_000


def selection_of(spec: dict[str, Any]) -> operations.Selection:
    """The ``Selection`` a stored ``{"queue", "taskName", "exceptionClass"}`` names."""
    return operations.Selection(
        queue=spec.get("queue"), task_name=spec.get("taskName"), exception_class=spec.get("exceptionClass")
    )


def start_retry(
    spec: dict[str, Any], *, total: int, requested_by: str = "", rate_per_second: float | None = None
) -> BulkOperation:
    """Record a background bulk retry of the jobs ``spec`` selects and have a worker run it (after the commit)."""
    operation = BulkOperation.objects.create(
        selection=spec,
        total=total,
        requested_by=requested_by,
        rate_per_second=rate_per_second,
        created_at=timezone.now(),
    )
    transaction.on_commit(lambda: run_bulk_retry.delay(operation.pk))
    logger.info("bulk retry #%s of %s jobs (%s) queued by %s", operation.pk, total, spec, requested_by or "-")
    return operation


def describe(operation: BulkOperation) -> dict[str, Any]:
    """The operation as the API shows it."""
    return {
        "operationId": operation.pk,
        "kind": operation.kind,
        "state": operation.state,
        "selection": operation.selection,
        "total": operation.total,
        "sent": operation.sent,
        "report": operation.report or None,
        "error": operation.error or None,
        "createdAt": operation.created_at.isoformat(),
        "startedAt": operation.started_at.isoformat() if operation.started_at else None,
        "finishedAt": operation.finished_at.isoformat() if operation.finished_at else None,
    }


def run(operation_id: int) -> BulkOperation | None:
    """Run a queued bulk retry, writing its progress after each batch. ``None``: not queued (already run)."""
    claimed = BulkOperation.objects.filter(pk=operation_id, state=State.QUEUED).update(
        state=State.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.warning("bulk retry #%s is not queued (run already); nothing done", operation_id)
        return None
    operation = BulkOperation.objects.get(pk=operation_id)

    def progress(sent: int, total: int) -> None:
        BulkOperation.objects.filter(pk=operation_id).update(sent=sent, total=total)

    try:
        outcome = operations.retry_now(
            selection=selection_of(operation.selection),
            rate_per_second=operation.rate_per_second,
            on_progress=progress,
            actor=operation.requested_by,
        )
    except Exception as exc:
        BulkOperation.objects.filter(pk=operation_id).update(
            state=State.FAILED, error=repr(exc)[:2000], finished_at=timezone.now()
        )
        logger.exception("bulk retry #%s failed", operation_id)
        raise
    BulkOperation.objects.filter(pk=operation_id).update(
        state=State.DONE,
        total=outcome.total,
        sent=outcome.retried,
        report=outcome.report(),
        finished_at=timezone.now(),
    )
    operation.refresh_from_db()
    return operation


@shared_task(
    base=RetryableTask, name="queueing.run_bulk_retry", autoretry_for=(), record_failures=False, ignore_result=True
)
def run_bulk_retry(operation_id: int) -> None:
    """A worker runs a background bulk retry (``bulkops.run``). Delivered twice, it runs once."""
    run(operation_id)
