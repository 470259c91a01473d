"""The retry system's queue endpoints: ``GET /api/queue/status`` and ``POST /api/queue/retry-all-failed``.

Who may call them and how their errors answer is ``queueing/http.py``; the status JSON is declared once in
``queueing/status/schema.py`` (``check_queue --json`` prints the same). ``docs/api.md`` has the details.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest
from ninja import Query, Router, Schema
from pydantic import Field

from queueing import bulkops, operations, permissions, status
from queueing.http import ERRORS, actor, auth, error_responses_openapi
from queueing.models import BulkOperation
from queueing.status.schema import StatusOut
from queueing.tokens import Scope

router = Router(tags=["queues"])


# --- GET /api/queue/status -----------------------------------------------------------------------------------


class StatusQuery(Schema):
    queueName: str | None = Field(None, min_length=1, max_length=200, description="Only this queue.")


@router.get(
    "/queue/status",
    response={200: StatusOut, **ERRORS},
    summary="Each queue's waiting, active, completed, failed, delayed and dead jobs",
    openapi_extra=error_responses_openapi(),
)
def queue_status(request: HttpRequest, query: Query[StatusQuery]) -> StatusOut:
    """Per known queue (or only `queueName`): waiting, active, completed, failed, delayed, dead and
    retrying, and the newest failed and dead jobs.

    Cheap enough to poll every second: the workers are asked at most once per
    `STATUS_WORKERS_CACHE_SECONDS` (in the background), the database at most once per
    `STATUS_COUNTS_CACHE_SECONDS`. A figure that cannot be had (broker down, no worker answering) is null
    and listed in `unavailable` with the reason. An unknown `queueName` is a 404 listing the known queues.
    """
    return status.queue_status(queue=query.queueName).to_schema()


# --- POST /api/queue/retry-all-failed -------------------------------------------------------------------------


class RetryAllIn(Schema):
    queueName: str = Field(min_length=1, max_length=200)
    taskName: str | None = Field(None, min_length=1, max_length=255, description="Only this task.")
    exceptionClass: str | None = Field(None, min_length=1, max_length=255, description="Only this error class.")
    dryRun: bool = Field(False, description="Count and group what would be sent; send nothing.")
    ratePerSecond: float | None = Field(None, gt=0, description="Most jobs sent per second.")


class RetryAllOut(Schema):
    success: bool
    queueName: str
    total: int
    retried: int
    dryRun: bool | None = Field(None, description="Present (true) for a dry run: nothing was sent.")
    notSent: dict[str, int] | None = Field(
        None, description="Present when some jobs found were not sent: how many per reason."
    )
    groups: list[dict[str, Any]] | None = Field(None, description="A dry run's selection per task and error.")


class OperationOut(Schema):
    operationId: int
    kind: str
    state: str
    selection: dict[str, Any]
    total: int
    sent: int
    report: dict[str, Any] | None
    error: str | None
    createdAt: str
    startedAt: str | None
    finishedAt: str | None


class AcceptedOut(Schema):
    success: bool
    queueName: str
    total: int
    operationId: int
    progressUrl: str


@router.post(
    "/queue/retry-all-failed",
    response={200: RetryAllOut, 202: AcceptedOut, **ERRORS},
    summary="Re-send every failed and dead job of a queue now",
    openapi_extra=error_responses_openapi(),
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.RETRY}"),
    exclude_none=True,
)
def retry_all_failed(request: HttpRequest, payload: RetryAllIn) -> Any:
    """Re-send every failed and dead job of `queueName` (optionally only `taskName` / `exceptionClass`) now,
    whatever their next retry time; jobs already being retried are left alone. `total`: the jobs found;
    `retried`: those sent; `notSent`: the others per reason (unknown task, unsendable, refused by the broker,
    left alone); `dryRun`: count them and list them per group, send nothing. An unknown queue is a 404 listing
    the known ones.

    More than 1,000 jobs run in the background: the answer is a 202 with `operationId` and `progressUrl`
    (`GET /api/queue/operations/{id}`: `sent` of `total`, then the report). Needs a `write` token, or a staff
    session whose user may retry failed jobs.
    """
    spec = {"queue": payload.queueName, "taskName": payload.taskName, "exceptionClass": payload.exceptionClass}
    selection = bulkops.selection_of(spec)
    if not payload.dryRun:
        found = operations.retry_now(selection=selection, dry_run=True)
        if found.total > bulkops.SYNC_MAX_JOBS:
            operation = bulkops.start_retry(
                spec, total=found.total, requested_by=actor(request), rate_per_second=payload.ratePerSecond
            )
            return 202, {
                "success": True,
                "queueName": payload.queueName,
                "total": found.total,
                "operationId": operation.pk,
                "progressUrl": f"/api/queue/operations/{operation.pk}",
            }
    outcome = operations.retry_now(
        selection=selection, dry_run=payload.dryRun, rate_per_second=payload.ratePerSecond, actor=actor(request)
    )
    answer = {"success": True, "queueName": payload.queueName, **outcome.as_dict()}
    report = outcome.report()
    # The seed's shape when every job found was sent; what was not (and why), or the dry run's groups, beside it.
    if payload.dryRun:
        answer |= {"dryRun": True, "groups": report["groups"]}
    if any(report["notSent"].values()):
        answer["notSent"] = report["notSent"]
    return 200, answer


@router.get(
    "/queue/operations/{operation_id}",
    response={200: OperationOut, **ERRORS},
    summary="A background bulk retry's progress and report",
    openapi_extra=error_responses_openapi(),
)
def operation_status(request: HttpRequest, operation_id: int) -> Any:
    """`state` (queued, running, done, failed), `sent` of `total` so far, and once done the report."""
    operation = BulkOperation.objects.filter(pk=operation_id).first()
    if operation is None:
        raise Http404(f"no bulk operation #{operation_id}")
    return bulkops.describe(operation)
