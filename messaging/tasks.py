"""The example workload: send a WhatsApp message through an HTTP gateway."""

from __future__ import annotations

from celery import shared_task

from messaging import gateway
from messaging.policy import whatsapp_error_policy
from queueing.tasks import RetryableTask


@shared_task(
    base=RetryableTask,
    bind=True,
    name="messaging.tasks.send_whatsapp_message",
    retry_policy=whatsapp_error_policy,
)
def send_whatsapp_message(self: RetryableTask, session_id: str, to: str, message: str) -> dict[str, str]:
    """Deliver one message. The original call's id is the idempotency key, so a retry never sends it twice."""
    return gateway.send(session_id=session_id, to=to, message=message, idempotency_key=self.origin_task_id())
