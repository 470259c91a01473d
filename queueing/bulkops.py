"""Large bulk retries run in the background, with their progress in a ``BulkOperation`` row.

A bulk retry of at most ``SYNC_MAX_JOBS`` jobs is answered at once, as before (``{"total", "retried"}``); a
larger one becomes a ``BulkOperation`` that a worker runs (``run_bulk_retry``), writing ``sent`` of ``total``
after each batch, so that the API answers 202 in milliseconds with where to read the progress
(``GET /api/queue/operations/<id>``) and the admin lists the operations. The work itself is
``operations.retry_now``: the same streaming, batching and reporting as any bulk retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from queueing import operations
from queueing.models import BulkOperation
from queueing.registry import validate_queue
from queueing.tasks import RetryableTask

logger = logging.getLogger(__name__)

State = BulkOperation.State

#: Most jobs a bulk retry sends while the caller waits; more run in the background. At about 1 ms a job
#: (docs/benchmarks.md) 1,000 keep a request under a couple of seconds.
SYNC_MAX_JOBS = 1_000


#: Most ids one ``retry_now`` call of an operation takes (an admin selection is stored as its ids): well under
#: SQLite's limit of variables in one query.
IDS_PER_CALL = 5_000


def selection_of(spec: dict[str, Any]) -> operations.Selection:
    """The ``Selection`` a stored ``{"queue", "taskName", "exceptionClass", "group", "ids"}`` names."""
    return operations.Selection(
        queue=spec.get("queue"),
        task_name=spec.get("taskName"),
        exception_class=spec.get("exceptionClass"),
        group=spec.get("group"),
        ids=spec.get("ids"),
    )


def in_background(total: int) -> bool:
    """Whether a bulk retry of ``total`` jobs runs in the background (the API's and the admin's threshold)."""
    return total > SYNC_MAX_JOBS


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


@dataclass(frozen=True)
class Asked:
    """What became of a bulk retry asked for: run at once (or a dry run), with its ``outcome``; or ``operation``."""

    outcome: operations.RetryOutcome | None = None
    operation: BulkOperation | None = None


def retry(
    spec: dict[str, Any], *, dry_run: bool = False, rate_per_second: float | None = None, requested_by: str = ""
) -> Asked:
    """A bulk retry of the jobs ``spec`` selects, as the API and the admin ask for it: a dry run, sent at once
    (up to ``SYNC_MAX_JOBS`` jobs), or a ``BulkOperation`` a worker runs (more)."""
    selection = selection_of(spec)
    if not dry_run:
        validate_queue(selection.queue)
        total = selection.candidates(timezone.now()).count()
        if in_background(total):
            return Asked(
                operation=start_retry(spec, total=total, requested_by=requested_by, rate_per_second=rate_per_second)
            )
    outcome = operations.retry_now(
        selection=selection, dry_run=dry_run, rate_per_second=rate_per_second, actor=requested_by
    )
    return Asked(outcome=outcome)


def shown_selection(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored selection as shown: its filters set, and a list of ids (the admin's) as their number."""
    shown = {key: value for key, value in spec.items() if value is not None and key != "ids"}
    if "ids" in spec:
        shown["jobsSelected"] = len(spec["ids"])
    return shown


def describe(operation: BulkOperation) -> dict[str, Any]:
    """The operation as the API shows it."""
    return {
        "operationId": operation.pk,
        "kind": operation.kind,
        "state": operation.state,
        "selection": shown_selection(operation.selection),
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
        outcome = _retry(operation, progress)
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


def _retry(operation: BulkOperation, progress: Callable[[int, int], None]) -> operations.RetryOutcome:
    """``retry_now`` on the operation's selection; a list of ids (the admin's) ``IDS_PER_CALL`` at a time."""
    spec = dict(operation.selection)
    ids = spec.pop("ids", None)
    if ids is None:
        return operations.retry_now(
            selection=selection_of(spec),
            rate_per_second=operation.rate_per_second,
            on_progress=progress,
            actor=operation.requested_by,
        )
    outcomes: list[operations.RetryOutcome] = []
    for start in range(0, len(ids), IDS_PER_CALL):
        before = sum(outcome.retried for outcome in outcomes)

        def progress_of_all(sent: int, _found: int, before: int = before) -> None:
            progress(before + sent, len(ids))

        outcomes.append(
            operations.retry_now(
                selection=selection_of({**spec, "ids": ids[start : start + IDS_PER_CALL]}),
                rate_per_second=operation.rate_per_second,
                on_progress=progress_of_all,
                actor=operation.requested_by,
            )
        )
        if outcomes[-1].refused:
            break  # the broker refuses: stop, as one run does
    return operations.combined(outcomes)


@shared_task(
    base=RetryableTask, name="queueing.run_bulk_retry", autoretry_for=(), record_failures=False, ignore_result=True
)
def run_bulk_retry(operation_id: int) -> None:
    """A worker runs a background bulk retry (``bulkops.run``). Delivered twice, it runs once."""
    run(operation_id)
