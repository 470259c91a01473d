"""The retry system's JSON API: authentication, error shapes, and the queue endpoints.

Authentication: ``Authorization: Bearer <QUEUEING_API_TOKEN>`` (the setting may hold the token itself or
``sha256:<hex digest>`` of it, so that config files need not carry the secret), or a logged-in staff
user's session (with its CSRF token on unsafe methods).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router, Schema
from ninja.errors import AuthenticationError, ValidationError
from ninja.security import HttpBearer, SessionAuthIsStaff
from pydantic import Field

from queueing import services
from queueing.conf import get_settings
from queueing.exceptions import UnknownQueue


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> str | None:
        expected = get_settings().api_token
        if not expected or not token:
            return None
        if expected.startswith("sha256:"):
            given = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
            return "token" if hmac.compare_digest(given, expected) else None
        return "token" if hmac.compare_digest(token.encode(), expected.encode()) else None


def auth() -> list[Any]:
    return [BearerToken(), SessionAuthIsStaff()]


def error(api: NinjaAPI, request: HttpRequest, status: int, message: str, **extra: Any) -> HttpResponse:
    return api.create_response(request, {"error": message, **extra}, status=status)


def install_error_handlers(api: NinjaAPI) -> None:
    """JSON errors that name the field, with 400 (not 422) for bad input, 413 for a body too large."""

    @api.exception_handler(ValidationError)
    def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        fields: dict[str, str] = {}
        for err in exc.errors:
            loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "payload", "query", "path")]
            fields[".".join(loc) or "body"] = err.get("msg", "invalid")
        names = ", ".join(fields)
        return error(api, request, 400, f"invalid request: {names}", fields=fields)

    @api.exception_handler(UnknownQueue)
    def _unknown_queue(request: HttpRequest, exc: UnknownQueue) -> HttpResponse:
        return error(api, request, 404, str(exc), field="queueName", knownQueues=exc.known)

    @api.exception_handler(AuthenticationError)
    def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        response = error(
            api,
            request,
            401,
            "authentication required: send 'Authorization: Bearer <QUEUEING_API_TOKEN>' or log in as staff",
        )
        response["WWW-Authenticate"] = "Bearer"
        return response

    @api.exception_handler(RequestDataTooBig)
    def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        return error(api, request, 413, "request body too large")


router = Router(tags=["queues"])


class RetryAllIn(Schema):
    queueName: str = Field(min_length=1, max_length=200)


class RetryAllOut(Schema):
    success: bool
    queueName: str
    total: int
    retried: int


@router.post("/queue/retry-all-failed", response=RetryAllOut)
def retry_all_failed(request: HttpRequest, payload: RetryAllIn) -> dict[str, Any]:
    """Re-send every failed and dead job of the queue now. Jobs already being retried are left alone."""
    outcome = services.retry_now(queue=payload.queueName)
    return {"success": True, "queueName": payload.queueName, **outcome.as_dict()}
