"""The HTTP plumbing shared by the JSON API (``queueing/api.py``, ``messaging/api.py``) and ``/metrics``
(``queueing/metrics.py``): who may call, and how every error answers.

Authentication: ``Authorization: Bearer <token>``, one of the named tokens of ``QUEUEING_API_TOKENS`` or
``QUEUEING_API_TOKEN`` (``queueing/tokens.py``: each has a scope, ``read`` or ``write``), or a logged-in staff
user's session (with its CSRF token on unsafe methods). No credentials, or a wrong token: 401. A session of
a user who is not staff: 403. An operation that acts (``auth(Scope.WRITE, permission=…)``) also needs a
``write`` token, or a session whose user has the verb's permission (``queueing.retry_failedjob`` …): else 403.
ninja's operations use ``auth()``; a plain Django view uses ``refusal()`` (read only). ``actor(request)``
names the caller in a job's history.

Every error is JSON, ``{"error": "<what is wrong and what to do>", …}``: 400 for bad input (naming the
fields), 401/403 as above, 404 for an unknown queue (listing the known ones) or path, 405 for a wrong method
(with ``Allow``), 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``. ``docs/api.md`` has the details.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuthIsStaff
from pydantic import BaseModel, Field

from queueing.exceptions import UnknownQueue
from queueing.tokens import ApiToken, Scope, find

UNAUTHORIZED = "authentication required: send 'Authorization: Bearer <QUEUEING_API_TOKEN>' or log in as staff"
FORBIDDEN = "forbidden: {user!r} is logged in but not staff; log in as a staff user or send the bearer token"
READ_ONLY_TOKEN = (
    "forbidden: token {name!r} may only read; send a token with the write scope (QUEUEING_API_TOKENS: "
    "name:write:<token>)"
)
NO_PERMISSION = "forbidden: {user!r} lacks the permission {permission!r}; ask an administrator (docs/permissions.md)"


# --- who may call ---------------------------------------------------------------------------------------------


class BearerToken(HttpBearer):
    openapi_description = (
        "The API token: the value of `QUEUEING_API_TOKEN` in the server's environment (or "
        "`QUEUEING['API_TOKEN']`), or one of the named tokens of `QUEUEING_API_TOKENS` (`name:read:<token>` "
        "may read the status and the metrics, `name:write:<token>` may also retry and send). `bin/start` makes "
        "one up when it is unset and prints it in its banner (`API token …`); paste the token itself, without "
        "`Bearer `. If the setting holds `sha256:<hex digest>`, paste the token whose digest it is. An empty "
        "setting lets no bearer in: log in at /admin/ as a staff user instead (the StaffSession scheme)."
    )

    def __init__(self, scope: Scope = Scope.READ) -> None:
        super().__init__()
        self.scope = scope

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        found = find(token)
        if found is not None and not found.scope.allows(self.scope):
            raise AuthorizationError(message=READ_ONLY_TOKEN.format(name=found.name))
        return found


def token_is_valid(token: str) -> bool:
    """Whether ``token`` is one of the API's tokens (any scope)."""
    return find(token) is not None


class StaffSession(SessionAuthIsStaff):
    """A staff user's session, CSRF-checked on unsafe methods. Not logged in: not this scheme (401)."""

    openapi_description = (
        "The session cookie of a staff user: log in at /admin/ in this browser and the docs' requests carry "
        "it (POSTs also need the `X-CSRFToken` header, from the `csrftoken` cookie). A logged-in user who is "
        "not staff gets 403; retrying also needs the `retry_failedjob` permission."
    )

    def __init__(self, permission: str = "") -> None:
        super().__init__()
        self.permission = permission

    def __call__(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            # No session to check: without this, an anonymous POST would fail the CSRF check (403) before
            # anyone told it that it lacks credentials (401).
            return None
        if not user.is_staff:
            raise AuthorizationError(message=FORBIDDEN.format(user=user.get_username()))
        allowed = super().__call__(request)  # the CSRF check first: a forged request hears nothing more
        if allowed and self.permission and not user.has_perm(self.permission):
            raise AuthorizationError(message=NO_PERMISSION.format(user=user.get_username(), permission=self.permission))
        return allowed


def auth(scope: Scope = Scope.READ, *, permission: str = "") -> list[Any]:
    """The schemes of an API operation: a bearer token of ``scope``, or a staff session (with ``permission``)."""
    return [BearerToken(scope), StaffSession(permission)]


def actor(request: HttpRequest) -> str:
    """Who calls, as a job's history names them: ``token:<name>`` or ``user:<username>``."""
    caller = getattr(request, "auth", None)
    if isinstance(caller, ApiToken):
        return caller.actor
    user = getattr(request, "user", None)
    return f"user:{user.get_username()}" if user is not None and user.is_authenticated else "anonymous"


def access_problem(request: HttpRequest) -> tuple[int, str] | None:
    """For views outside ninja (``/metrics``, read-only): ``None`` if allowed, else (401 or 403, message)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_is_valid(token.strip()):
        return None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return None if user.is_staff else (403, FORBIDDEN.format(user=user.get_username()))
    return 401, UNAUTHORIZED


def refusal(request: HttpRequest) -> HttpResponse | None:
    """For a read-only view outside ninja: ``None`` if the caller may read, else the JSON 401 or 403."""
    if (problem := access_problem(request)) is None:
        return None
    code, message = problem
    response = JsonResponse({"error": message}, status=code)
    if code == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


# --- how errors answer ----------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every error: what is wrong and what to do, and for bad input the fields at fault."""

    error: str
    fields: dict[str, str] | None = Field(None, description="400: field -> what is wrong with it.")
    field: str | None = Field(None, description="404: the field naming the unknown queue.")
    knownQueues: list[str] | None = Field(None, description="404: the queues that exist.")


#: The errors every API operation may answer (405 for a wrong method comes from the URL layer).
ERRORS: dict[int, type[ErrorOut]] = {code: ErrorOut for code in (400, 401, 403, 404, 413)}

#: What each error means, for the OpenAPI document.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad input: `error` names the fields, `fields` says what is wrong with each.",
    401: "No credentials, a wrong token or another scheme: send `Authorization: Bearer <QUEUEING_API_TOKEN>` "
    "or log in as staff. Comes with `WWW-Authenticate: Bearer`.",
    403: "A logged-in user who is not staff, a staff session's POST without its CSRF token, a `read` token on an "
    "operation that acts, or a session whose user lacks the verb's permission.",
    404: "An unknown queue (`knownQueues` lists the known ones), or no endpoint at that path.",
    405: "A method the path does not answer; the `Allow` header lists those it does.",
    413: "A request body over `DATA_UPLOAD_MAX_MEMORY_SIZE`.",
}


def error_responses_openapi() -> dict[str, Any]:
    """``openapi_extra`` of an operation: each of its error answers described, 405 included."""
    error_schema = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    responses: dict[int, Any] = {code: {"description": text} for code, text in ERROR_DESCRIPTIONS.items()}
    responses[405]["content"] = error_schema
    return {"responses": responses}


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

    return csrf_exempt(wrapper)


def method_not_allowed(request: HttpRequest, allow: str) -> HttpResponse:
    response = JsonResponse(
        {"error": f"method {request.method} not allowed on {request.path}; allowed: {allow}"}, status=405
    )
    response["Allow"] = allow
    return response


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any other path under /api/: a JSON 404 pointing at the docs."""
    return JsonResponse({"error": f"no API endpoint at {request.path}; see /api/docs"}, status=404)
