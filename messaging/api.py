"""POST /api/send-message: queue one WhatsApp message."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status
from pydantic import Field

from messaging.tasks import send_whatsapp_message
from queueing.api import ERRORS

router = Router(tags=["messaging"])


class SendMessageIn(Schema):
    sessionId: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    to: str = Field(min_length=3, max_length=32, pattern=r"^\+?[0-9]{3,31}$")
    message: str = Field(min_length=1, max_length=4096)


class SendMessageOut(Schema):
    jobId: str


@router.post("/send-message", response={202: SendMessageOut, **ERRORS})
def send_message(request: HttpRequest, payload: SendMessageIn) -> Status[dict[str, Any]]:
    """Queue a message on ``whatsapp-send``. ``jobId`` is the task id (its FailedJob's ``origin_task_id``)."""
    result = send_whatsapp_message.delay(payload.sessionId, payload.to, payload.message)
    return Status(202, {"jobId": result.id})
