"""The retry system's queue endpoints: ``GET /api/queue/status`` and ``POST /api/queue/retry-all-failed``.

Who may call them and how their errors answer is ``queueing/http.py``; the status JSON is declared once in
``queueing/status/schema.py`` (``check_queue --json`` prints the same). ``docs/api.md`` has the details.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import Field

from queueing import bulkops, pauses, permissions, status
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
    group: int | None = Field(None, ge=1, description="Only this failure group (its id: GET /api/queue/groups).")
    dryRun: bool = Field(False, description="Send nothing: list per failure group what would be sent and what not.")
    ratePerSecond: float | None = Field(None, gt=0, description="Most jobs sent per second.")


class RetryAllOut(Schema):
    success: bool
    queueName: str | None = None
    group: int | None = None
    total: int
    retried: int
    dryRun: bool | None = Field(None, description="Present (true) for a dry run: nothing was sent.")
    wouldSend: int | None = Field(None, description="A dry run's jobs that would be sent.")
    notSent: dict[str, int] | None = Field(
        None, description="Present when some jobs found were not sent (a dry run: would not be): how many per reason."
    )
    groups: list[dict[str, Any]] | None = Field(
        None, description="A dry run's selection per failure group: its breaker, what would be sent, what not and why."
    )


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
    queueName: str | None = None
    group: int | None = None
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
    """Re-send every failed and dead job of `queueName` (optionally only `taskName` / `exceptionClass` / failure
    `group`) now, whatever their next retry time and their group's breaker; jobs already being retried are left
    alone. `total`: the jobs found; `retried`: those sent; `notSent`: the others per reason (unknown task,
    unsendable, expired, refused by the broker, left alone); `dryRun`: send nothing, and list per failure group
    (its breaker state, whether paused) what would be sent and what would not and why. `ratePerSecond`: the
    throttle. An unknown queue is a 404 listing the known ones, an unknown group a 404.

    More than 1,000 jobs run in the background: the answer is a 202 with `operationId` and `progressUrl`
    (`GET /api/queue/operations/{id}`: `sent` of `total`, then the report). Needs a `write` token, or a staff
    session whose user may retry failed jobs.
    """
    spec = {
        "queue": payload.queueName,
        "taskName": payload.taskName,
        "exceptionClass": payload.exceptionClass,
        "group": payload.group,
    }
    if payload.group is not None:
        _known_group(payload.group)
    asked = bulkops.retry(
        spec, dry_run=payload.dryRun, rate_per_second=payload.ratePerSecond, requested_by=actor(request)
    )
    return bulk_answer(asked, {"success": True, "queueName": payload.queueName})


def bulk_answer(asked: bulkops.Asked, head: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The answer to a bulk retry (``bulkops.retry``): 202 with where to read the progress of one run in the
    background; else 200 with ``total`` and ``retried`` (the seed's shape when every job found was sent), what
    was not sent and why beside them, and a dry run's groups."""
    if asked.operation is not None:
        operation = asked.operation
        progress = {"operationId": operation.pk, "progressUrl": f"/api/queue/operations/{operation.pk}"}
        return 202, {**head, "total": operation.total, **progress}
    assert asked.outcome is not None
    outcome = asked.outcome
    answer = {**head, **outcome.as_dict()}
    report = outcome.report()
    if outcome.dry_run:
        answer |= {"dryRun": True, "wouldSend": report["wouldSend"], "groups": report["groups"]}
    if any(report["notSent"].values()):
        answer["notSent"] = report["notSent"]
    return 200, answer


def _known_group(group_id: int) -> None:
    try:
        pauses.get_group(group_id)
    except pauses.UnknownGroup as exc:
        raise HttpError(404, str(exc)) from exc


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
