"""Failure groups and pauses in the JSON API (README, "Probe before flooding"; ``docs/api.md``).

- ``GET /api/queue/groups``: the groups (those paused or with jobs still failing; ``all=true``:
  every group), newest first, and what is paused.
- ``POST /api/queue/groups/{id}/retry`` | ``/discard`` | ``/pause`` | ``/resume``: one group at once (the body
  a JSON object: ``{}``, or ``{"reason": …}`` for discard and pause).
- ``POST /api/queue/pause-auto-retry`` | ``/resume-auto-retry`` ``{"queueName"}``: one queue's automatic
  retries; normal processing goes on.

Authentication and errors as every endpoint (``queueing/http.py``); an unknown group is a 404.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import BaseModel, Field, model_validator

from queueing import bulkops, operations, pauses, permissions
from queueing.api import AcceptedOut, RetryAllOut, bulk_answer
from queueing.http import ERRORS, actor, auth, error_responses_openapi
from queueing.models import FailureGroup
from queueing.status.groups import group_figures
from queueing.status.report import group_out
from queueing.status.schema import GroupOut, PausedOut
from queueing.tokens import Scope

router = Router(tags=["failure groups"])
OPENAPI = error_responses_openapi()


class GroupsQuery(Schema):
    all: bool = Field(False, description="Every group, closed ones included (default: those worth a look).")
    limit: int = Field(50, ge=1, le=500, description="Most groups listed.")


class GroupsOut(BaseModel):
    groups: list[GroupOut]
    autoRetryPaused: PausedOut


class EmptyIn(Schema):
    """A JSON object (``{}``): every POST takes one, so that a stray body is a 400, not ignored."""

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        # ninja hands a schema its input wrapped (a ``DjangoGetter``); the JSON value is its ``_obj``.
        if not isinstance(getattr(data, "_obj", data), dict):
            raise ValueError("the body must be a JSON object, such as {}")
        return data


class ReasonIn(EmptyIn):
    reason: str = Field("", max_length=500, description="Why, for the log and the admin.")


class QueuePauseIn(Schema):
    queueName: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=500)


class GroupRetryIn(EmptyIn):
    dryRun: bool = Field(False, description="Send nothing: what would be sent, and what would not and why.")
    ratePerSecond: float | None = Field(None, gt=0, description="Most jobs sent per second.")


class GroupDiscardOut(BaseModel):
    success: bool
    group: int
    discarded: int


class PauseOut(BaseModel):
    success: bool
    paused: bool = Field(description="Whether its automatic retries are paused now.")
    changed: bool = Field(description="False: it already was so.")
    group: int | None = None
    queueName: str | None = None


def _group(group_id: int) -> int:
    try:
        return pauses.get_group(group_id).pk
    except pauses.UnknownGroup as exc:
        raise HttpError(404, str(exc)) from exc


@router.get("/queue/groups", response={200: GroupsOut, **ERRORS}, summary="Failure groups", openapi_extra=OPENAPI)
def list_groups(request: HttpRequest, query: Query[GroupsQuery]) -> GroupsOut:
    """Failures grouped by cause, newest first: each group's breaker state (closed, open until …, probing),
    its jobs per status and the share still failing; and the queues and groups whose automatic retries are
    paused."""
    if query.all:
        ids = list(FailureGroup.objects.order_by("-last_seen_at", "-pk").values_list("pk", flat=True)[: query.limit])
        figures = group_figures(group_ids=ids, limit=query.limit)
    else:
        figures = group_figures(limit=query.limit)
    now_paused = pauses.paused()
    return GroupsOut(
        groups=[group_out(group) for group in figures],
        autoRetryPaused=PausedOut(queues=list(now_paused.queues), groups=list(now_paused.groups)),
    )


@router.post(
    "/queue/groups/{group_id}/retry",
    response={200: RetryAllOut, 202: AcceptedOut, **ERRORS},
    summary="Re-send every failed and dead job of a group now",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.RETRY}"),
    exclude_none=True,
)
def retry_group(request: HttpRequest, group_id: int, payload: GroupRetryIn) -> Any:
    """Re-send every failed and dead job of the group now (an operator's retry: no automatic retry is used,
    whatever the breaker). As `POST /api/queue/retry-all-failed`: `dryRun`, `ratePerSecond`, `notSent`, and
    more than 1,000 jobs in the background (202)."""
    spec = {"group": _group(group_id)}
    asked = bulkops.retry(
        spec, dry_run=payload.dryRun, rate_per_second=payload.ratePerSecond, requested_by=actor(request)
    )
    return bulk_answer(asked, {"success": True, "group": group_id})


@router.post(
    "/queue/groups/{group_id}/discard",
    response={200: GroupDiscardOut, **ERRORS},
    summary="Discard every failed and dead job of a group",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.DISCARD}"),
)
def discard_group(request: HttpRequest, group_id: int, payload: ReasonIn) -> dict[str, Any]:
    """Give up on every failed and dead job of the group (final)."""
    discarded = operations.discard_group(group=_group(group_id), reason=payload.reason)
    return {"success": True, "group": group_id, "discarded": len(discarded)}


@router.post(
    "/queue/groups/{group_id}/pause",
    response={200: PauseOut, **ERRORS},
    summary="Pause a group's automatic retries",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.PAUSE}"),
)
def pause_group(request: HttpRequest, group_id: int, payload: ReasonIn) -> dict[str, Any]:
    """The sweep leaves the group's failed jobs alone until resumed (its breaker keeps its state); an
    operator can still retry them. An unknown group is a 404."""
    changed = pauses.pause(group=_group(group_id), reason=payload.reason)
    return {"success": True, "group": group_id, "paused": True, "changed": changed}


@router.post(
    "/queue/groups/{group_id}/resume",
    response={200: PauseOut, **ERRORS},
    summary="Resume a group's automatic retries",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.PAUSE}"),
)
def resume_group(request: HttpRequest, group_id: int, payload: EmptyIn) -> dict[str, Any]:
    """The sweep takes the group's due jobs again, as its breaker allows. An unknown group is a 404."""
    changed = pauses.resume(group=_group(group_id))
    return {"success": True, "group": group_id, "paused": False, "changed": changed}


@router.post(
    "/queue/pause-auto-retry",
    response={200: PauseOut, **ERRORS},
    summary="Pause a queue's automatic retries (normal processing goes on)",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.PAUSE}"),
)
def pause_queue(request: HttpRequest, payload: QueuePauseIn) -> dict[str, Any]:
    """The sweep leaves the queue's failed jobs alone until resumed; new calls run and are recorded as usual,
    and an operator can still retry them. An unknown queue is a 404 listing the known ones."""
    changed = pauses.pause(queue=payload.queueName, reason=payload.reason)
    return {"success": True, "queueName": payload.queueName, "paused": True, "changed": changed}


@router.post(
    "/queue/resume-auto-retry",
    response={200: PauseOut, **ERRORS},
    summary="Resume a queue's automatic retries",
    openapi_extra=OPENAPI,
    auth=auth(Scope.WRITE, permission=f"queueing.{permissions.PAUSE}"),
)
def resume_queue(request: HttpRequest, payload: QueuePauseIn) -> dict[str, Any]:
    """The sweep takes the queue's due jobs again. An unknown queue is a 404 listing the known ones."""
    changed = pauses.resume(queue=payload.queueName)
    return {"success": True, "queueName": payload.queueName, "paused": False, "changed": changed}
