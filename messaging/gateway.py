"""Client of the WhatsApp HTTP gateway (``WHATSAPP_GATEWAY_URL``).

The protocol, which ``manage.py fake_whatsapp_gateway`` also serves:

- ``POST /send`` with ``{"sessionId", "to", "message"}`` and an ``Idempotency-Key`` header: ``200``
  ``{"status": "sent", "id": …}`` (a repeated key answers the first delivery again, sending nothing);
  ``400 {"error", "field"}`` naming the field it refuses (``"to"``: an invalid recipient);
  ``404 {"error": "Session not found"}``; ``429`` when rate-limited and ``503`` when down, either with a
  ``Retry-After`` header (seconds or an HTTP date) when the gateway says how long to wait.
- ``GET /messages``: what was delivered, oldest first.

What ``send`` raises:

- ``GatewayUnavailable`` (worth retrying): no answer, a ``429`` or a ``5xx``. It carries the status and the
  server's ``Retry-After`` in seconds, when there was one.
- ``GatewayRefused`` (a ``PermanentError``): any other ``4xx``, with the status and the field the gateway
  named. Two kinds have their own class: ``InvalidRecipient`` (``400`` naming ``to``) and ``SessionNotFound``
  (``404`` ``Session not found``). Each is still a ``PermanentError``: what the retry system does with them is
  its policy's business, not the client's (``messaging/policy.py``: a session not found is retried later).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings

from queueing.exceptions import PermanentError


class GatewayUnavailable(Exception):
    """The gateway is down, slow or overloaded: worth retrying.

    ``status_code`` is the HTTP status (``None`` when no answer came); ``retry_after_seconds`` the wait the
    gateway asked for in its ``Retry-After`` header, in seconds (``None`` without a usable header).
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after_seconds: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds


class GatewayRefused(PermanentError):
    """The gateway refused the message (a ``4xx`` other than ``429``): sending it again as it is cannot help.

    ``status_code`` is the HTTP status; ``field`` the request field the gateway named, if it named one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.field = field


class InvalidRecipient(GatewayRefused):
    """The gateway refused the recipient (``400`` naming ``to``): the number is not one it can send to."""


class SessionNotFound(GatewayRefused):
    """The gateway does not know the session (``404 Session not found``): the phone is not linked (yet)."""


def send(*, session_id: str, to: str, message: str, idempotency_key: str) -> dict[str, Any]:
    url = settings.WHATSAPP_GATEWAY_URL.rstrip("/") + "/send"
    try:
        response = requests.post(
            url,
            json={"sessionId": session_id, "to": to, "message": message},
            headers={"Idempotency-Key": idempotency_key},
            timeout=settings.WHATSAPP_GATEWAY_TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise GatewayUnavailable(f"gateway at {url} unreachable: {exc.__class__.__name__}: {exc}") from exc
    status = response.status_code
    if status == 429 or status >= 500:
        raise GatewayUnavailable(
            f"gateway answered {status}: {response.text[:200]}",
            status_code=status,
            retry_after_seconds=parse_retry_after(response.headers.get("Retry-After"), now=datetime.now(UTC)),
        )
    if status >= 400:
        raise _refusal(status, response)
    answer: dict[str, Any] = response.json()
    return answer


def _refusal(status: int, response: requests.Response) -> GatewayRefused:
    """The exception for a ``4xx`` answer, of the class its body names."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    field = body.get("field") if isinstance(body, dict) else None
    field = field if isinstance(field, str) else None
    kind = GatewayRefused
    if status == 400 and field == "to":
        kind = InvalidRecipient
    elif status == 404 and error == "Session not found":
        kind = SessionNotFound
    return kind(f"gateway refused the message ({status}): {response.text[:200]}", status_code=status, field=field)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a whole number of seconds or an HTTP date.

    ``None`` for no header or one that is neither; a date in the past is ``0``. ``now`` must be aware.
    """
    if value is None or not (text := value.strip()):
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": the HTTP date is GMT all the same
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
