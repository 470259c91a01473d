"""The retry system's JSON API: authentication, error shapes, and the queue endpoints.

Authentication: ``Authorization: Bearer <QUEUEING_API_TOKEN>`` (the setting may hold the token itself or
``sha256:<hex digest>`` of it, so that config files need not carry the secret), or a logged-in staff
user's session (with its CSRF token on unsafe methods). No credentials, or a wrong token: 401. A session of
a user who is not staff: 403. ``/metrics`` (``queueing/metrics.py``) is guarded by the same rules
(``access_problem``).

Every error is JSON, ``{"error": "<what is wrong and what to do>", …}``: 400 for bad input (naming the
fields), 401/403 as above, 404 for an unknown queue (listing the known ones) or path, 405 for a wrong method
(with ``Allow``), 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``. ``docs/api.md`` has the details.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Literal

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.http import require_safe
from ninja import NinjaAPI, Query, Router, Schema
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuthIsStaff
from pydantic import BaseModel, Field

from queueing import operations, status
from queueing.conf import get_settings
from queueing.exceptions import UnknownQueue

UNAUTHORIZED = "authentication required: send 'Authorization: Bearer <QUEUEING_API_TOKEN>' or log in as staff"
FORBIDDEN = "forbidden: {user!r} is logged in but not staff; log in as a staff user or send the bearer token"


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> str | None:
        return "token" if token_is_valid(token) else None


def token_is_valid(token: str) -> bool:
    expected = get_settings().api_token
    if not expected or not token:
        return False
    if expected.startswith("sha256:"):
        given = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        return hmac.compare_digest(given, expected)
    return hmac.compare_digest(token.encode(), expected.encode())


class StaffSession(SessionAuthIsStaff):
    """A staff user's session, CSRF-checked on unsafe methods. Not logged in: not this scheme (401)."""

    def __call__(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            # No session to check: without this, an anonymous POST would fail the CSRF check (403) before
            # anyone told it that it lacks credentials (401).
            return None
        if not user.is_staff:
            raise AuthorizationError(message=FORBIDDEN.format(user=user.get_username()))
        return super().__call__(request)


def auth() -> list[Any]:
    return [BearerToken(), StaffSession()]


def access_problem(request: HttpRequest) -> tuple[int, str] | None:
    """For views outside ninja (``/metrics``, read-only): ``None`` if allowed, else (401 or 403, message)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_is_valid(token.strip()):
        return None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return None if user.is_staff else (403, FORBIDDEN.format(user=user.get_username()))
    return 401, UNAUTHORIZED


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
        response = error(api, request, 401, UNAUTHORIZED)
        response["WWW-Authenticate"] = "Bearer"
        return response

    @api.exception_handler(HttpError)
    def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
            return error(api, request, 400, "invalid request: the body is not valid JSON", fields={"body": "not JSON"})
        return error(api, request, exc.status_code, str(exc))

    @api.exception_handler(Http404)
    def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error(api, request, 404, "not found")

    @api.exception_handler(RequestDataTooBig)
    def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        return error(api, request, 413, "request body too large")


def json_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap one of the API's URL views: a wrong method is a JSON 405 (ninja answers it in plain text), a 404
    outside an operation (the API's root) is JSON too.

    ninja's operation views are CSRF-exempt (their session auth checks CSRF itself); the schema and docs
    views are not operations: they answer GET and HEAD only, and are exempted so that a POST gets its 405.
    """
    is_operation = getattr(view, "csrf_exempt", False)
    inner = view if is_operation else require_safe(view)

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = inner(request, *args, **kwargs)
        except Http404:
            return not_found(request)
        if isinstance(response, HttpResponseNotAllowed):
            return method_not_allowed(request, response["Allow"])
        return response

    wrapper.csrf_exempt = True  # type: ignore[attr-defined]
    return wrapper


def method_not_allowed(request: HttpRequest, allow: str) -> HttpResponse:
    response = JsonResponse(
        {"error": f"method {request.method} not allowed on {request.path}; allowed: {allow}"}, status=405
    )
    response["Allow"] = allow
    return response


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any other path under /api/: a JSON 404 pointing at the docs."""
    return JsonResponse({"error": f"no API endpoint at {request.path}; see /api/docs"}, status=404)


router = Router(tags=["queues"])


class ErrorOut(BaseModel):
    """Every error: what is wrong and what to do, and for bad input the fields at fault."""

    error: str
    fields: dict[str, str] | None = Field(None, description="400: field -> what is wrong with it.")
    field: str | None = Field(None, description="404: the field naming the unknown queue.")
    knownQueues: list[str] | None = Field(None, description="404: the queues that exist.")


#: The errors every queue endpoint may answer (405 for a wrong method comes from the URL layer).
ERRORS: dict[int, type[ErrorOut]] = {code: ErrorOut for code in (400, 401, 403, 404, 413)}


# --- GET /api/queue/status -----------------------------------------------------------------------------------


Figure = Literal["waiting", "active", "completed", "failed", "delayed", "dead"]

# Plain pydantic models (not ninja's Schema, which reads ORM objects attribute by attribute): the answer is
# built from dicts, and validating it this way costs a tenth of the time.


class RecentFailedOut(BaseModel):
    id: int = Field(description="The FailedJob's id.")
    name: str = Field(description="Task name.")
    failedReason: str = Field(description="Exception class and message of the last failure.")
    attemptsMade: int = Field(description="Executions of the call, immediate retries included.")
    timestamp: int = Field(description="Last failure, milliseconds since the Unix epoch.")
    status: Literal["failed", "dead"]
    retryCount: int = Field(description="Automatic retries used.")
    nextRetryAt: int | None = Field(description="When the sweep re-sends it, ms since the epoch; null if never.")
    statusReason: str = Field(description="Why the system put the job in its state (may be empty).")


class QueueStatusOut(BaseModel):
    waiting: int | None = Field(description="Messages on the broker waiting for a worker.")
    active: int | None = Field(description="Tasks running on a worker now.")
    completed: int | None = Field(description="Tasks that succeeded, counted since the counter's start.")
    failed: int = Field(description="Jobs failed for good this round; the sweep retries them.")
    delayed: int | None = Field(description="Tasks held by a worker until their ETA (countdowns, backoff).")
    dead: int = Field(description="Jobs whose retries are used up; they wait for a person.")
    retrying: int = Field(description="Jobs sent again and not yet finished.")
    unavailable: list[Figure] = Field(description="Figures that are null here; the reasons are in the top level.")
    recentFailed: list[RecentFailedOut] = Field(description="Newest failed and dead jobs first, at most 10.")


class WorkersOut(BaseModel):
    names: list[str] = Field(description="Workers that answered the latest broadcast.")
    reportedAt: int | None = Field(description="When the workers were last asked, ms since the epoch.")


class StatusOut(BaseModel):
    queues: dict[str, QueueStatusOut]
    unavailable: dict[str, str] = Field(description="Figure -> why it is null.")
    workers: WorkersOut
    countsAsOf: int | None = Field(description="When failed/dead were counted, ms since the epoch.")
    generatedAt: int


class StatusQuery(Schema):
    queueName: str | None = Field(None, min_length=1, max_length=200, description="Only this queue.")


@router.get("/queue/status", response={200: StatusOut, **ERRORS})
def queue_status(request: HttpRequest, query: Query[StatusQuery]) -> dict[str, Any]:
    """Per known queue: waiting, active, completed, failed, delayed, dead, and the newest failures.

    Cheap enough to poll every second: the workers are asked at most once per
    ``STATUS_WORKERS_CACHE_SECONDS`` (in the background), the database at most once per
    ``STATUS_COUNTS_CACHE_SECONDS``. A figure that cannot be had is null and listed in ``unavailable``.
    """
    return status.queue_status(queue=query.queueName).as_dict()


# --- POST /api/queue/retry-all-failed -------------------------------------------------------------------------


class RetryAllIn(Schema):
    queueName: str = Field(min_length=1, max_length=200)


class RetryAllOut(Schema):
    success: bool
    queueName: str
    total: int
    retried: int


@router.post("/queue/retry-all-failed", response={200: RetryAllOut, **ERRORS})
def retry_all_failed(request: HttpRequest, payload: RetryAllIn) -> dict[str, Any]:
    """Re-send every failed and dead job of the queue now. Jobs already being retried are left alone."""
    outcome = operations.retry_now(queue=payload.queueName)
    return {"success": True, "queueName": payload.queueName, **outcome.as_dict()}
