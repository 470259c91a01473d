"""The retry system's queue endpoints: ``GET /api/queue/status`` and ``POST /api/queue/retry-all-failed``.

Who may call them and how their errors answer is ``queueing/http.py``; the status JSON is declared once in
``queueing/status/schema.py`` (``check_queue --json`` prints the same). ``docs/api.md`` has the details.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Schema
from pydantic import Field

from queueing import operations, permissions, status
from queueing.http import ERRORS, actor, auth, error_responses_openapi
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


class RetryAllOut(Schema):
    success: bool
    queueName: str
    total: int
    retried: int


@router.post(
    "/queue/retry-all-failed",
    response={200: RetryAllOut, **ERRORS},
    summary="Re-send every failed and dead job of a queue now",
    openapi_extra=error_responses_openapi(),
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.RETRY}"),
)
def retry_all_failed(request: HttpRequest, payload: RetryAllIn) -> dict[str, Any]:
    """Re-send every failed and dead job of `queueName` now, whatever their next retry time; jobs already
    being retried are left alone. `total`: the jobs found; `retried`: those sent. An unknown queue is a 404
    listing the known ones. Needs a `write` token, or a staff session whose user may retry failed jobs.
    """
    outcome = operations.retry_now(queue=payload.queueName, actor=actor(request))
    return {"success": True, "queueName": payload.queueName, **outcome.as_dict()}
