"""Client of the WhatsApp HTTP gateway (``WHATSAPP_GATEWAY_URL``).

The protocol, which ``manage.py fake_whatsapp_gateway`` also serves:

- ``POST /send`` with ``{"sessionId", "to", "message"}`` and an ``Idempotency-Key`` header: ``200``
  ``{"status": "sent", "id": …}`` (a repeated key answers the first delivery again, sending nothing);
  ``404 {"error": "Session not found"}``; ``429`` when rate-limited; ``503`` when down.
- ``GET /messages``: what was delivered, oldest first.
"""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings

from queueing.exceptions import PermanentError


class GatewayUnavailable(Exception):
    """The gateway is down, slow or overloaded: worth retrying."""


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
    if response.status_code == 429 or response.status_code >= 500:
        raise GatewayUnavailable(f"gateway answered {response.status_code}: {response.text[:200]}")
    if response.status_code >= 400:
        raise PermanentError(f"gateway refused the message ({response.status_code}): {response.text[:200]}")
    return response.json()
