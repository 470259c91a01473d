"""What the retry system does with each error of the WhatsApp gateway (``queueing/policy.py`` tells the rules).

- rate limited (``429``) or down (``503``) with a ``Retry-After``: the server's hint, for both the immediate
  retry and the sweep; uses up no automatic retry (``GatewayUnavailable`` carries the hint, the defaults do
  the rest);
- no answer, a timeout, a ``5xx`` without a hint: as any transient error (immediate retries, then the sweep
  after ``RETRY_DELAY``);
- session not found: the phone is not linked (yet); it comes back when it is re-linked or the gateway
  reconnects, so no immediate retries, and the sweep retries it after ``WHATSAPP_SESSION_RETRY_DELAY_SECONDS``
  (15 minutes by default);
- an invalid recipient, and any other ``4xx``: dead at once, the reason naming the field the gateway refused.
"""

from __future__ import annotations

from django.conf import settings

from messaging.gateway import GatewayRefused, InvalidRecipient, SessionNotFound
from queueing.policy import ErrorPolicy, OnError


def whatsapp_error_policy() -> ErrorPolicy:
    """The policy of ``send_whatsapp_message``; a function, so that the session delay is read when it is used."""
    return ErrorPolicy.of(
        {
            SessionNotFound: OnError.later(
                delay_seconds=settings.WHATSAPP_SESSION_RETRY_DELAY_SECONDS, label="session not found"
            ),
            InvalidRecipient: OnError.dead(label="invalid recipient"),
            GatewayRefused: OnError.dead(label="refused by the gateway"),
        }
    )
