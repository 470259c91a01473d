"""POST /api/send-message: queue one WhatsApp message."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status
from pydantic import Field

from messaging.tasks import send_whatsapp_message
from queueing.http import ERRORS, auth, error_responses_openapi
from queueing.tokens import Scope

router = Router(tags=["messaging"])


class SendMessageIn(Schema):
    sessionId: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    to: str = Field(min_length=3, max_length=32, pattern=r"^\+?[0-9]{3,31}$")
    # Any text but control characters other than tab and line breaks (a NUL cannot even be stored by PostgreSQL).
    message: str = Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$")


class SendMessageOut(Schema):
    jobId: str


@router.post(
    "/send-message",
    response={202: SendMessageOut, **ERRORS},
    summary="Queue one WhatsApp message (the example workload)",
    openapi_extra=error_responses_openapi(),
    auth=auth(Scope.WRITE),  # a read-only token may not send
)
def send_message(request: HttpRequest, payload: SendMessageIn) -> Status[dict[str, Any]]:
    """Queue a message on `whatsapp-send` and answer 202 at once. `jobId` is the Celery task id; if the
    send fails for good, its FailedJob carries it as `origin_task_id`.
    """
    result = send_whatsapp_message.delay(payload.sessionId, payload.to, payload.message)
    return Status(202, {"jobId": result.id})
