"""The example task (``messaging.tasks.send_whatsapp_message``) against the fake gateway, in the embedded worker.

The gateway's ``/attempts`` count what was tried, not what was delivered: a delivery is deduplicated by the
idempotency key (the original call's task id) and would hide a second send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from messaging.fake_gateway import FakeGateway
from messaging.tasks import send_whatsapp_message
from queueing.models import FailedJob
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gateway(settings: Any) -> Iterator[FakeGateway]:
    with FakeGateway(port=0) as server:
        settings.WHATSAPP_GATEWAY_URL = server.url
        yield server


def attempts_of(gateway: FakeGateway, key: str) -> list[int | None]:
    return [a["status"] for a in gateway.attempts() if a["idempotencyKey"] == key]


def test_a_message_to_an_invalid_recipient_is_dead_after_one_attempt(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway
) -> None:
    result = send_whatsapp_message.delay("default", "+1", "hello")

    job = wait_for(lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), what="the FailedJob row")
    assert job.status == FailedJob.Status.DEAD
    assert job.exception_class == "messaging.gateway.InvalidRecipient"
    assert '"field": "to"' in job.exception_message
    assert attempts_of(gateway, result.id) == [400]


def test_a_send_the_flaky_gateway_fails_is_retried_at_once_and_delivered_once(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway
) -> None:
    # Given a gateway failing every second send, whose next send fails
    gateway.set_mode("flaky", fail_ratio=0.5)
    warm_up = send_whatsapp_message.delay("default", "+15550100", "warm-up")
    wait_for(lambda: attempts_of(gateway, warm_up.id) == [200], what="the warm-up send")
    # When a message is sent
    result = send_whatsapp_message.delay("default", "+15550100", "hello")
    # Then it fails once, goes through on the immediate retry, and is delivered once; nothing is recorded
    wait_for(lambda: 200 in attempts_of(gateway, result.id), what="the message to go through")
    assert attempts_of(gateway, result.id) == [503, 200]
    assert [m["message"] for m in gateway.messages() if m["idempotencyKey"] == result.id] == ["hello"]
    assert not FailedJob.objects.filter(origin_task_id=result.id).exists()


def test_a_rate_limited_send_is_tried_as_often_as_its_row_counts(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway
) -> None:
    gateway.set_mode("rate-limited", retry_after_seconds=1)

    result = send_whatsapp_message.delay("default", "+15550100", "hello")

    job = wait_for(lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), what="the FailedJob row")
    assert job.status == FailedJob.Status.FAILED
    assert job.exception_class == "messaging.gateway.GatewayUnavailable"
    assert attempts_of(gateway, result.id) == [429] * job.attempts
    assert gateway.messages() == []
