"""The error policy end to end: the WhatsApp task against the fake gateway, in the embedded worker.

The sweep is run by the test (``sweep.sweep()``), when it wants; everything else is the real worker, the real
broker and the gateway's ``/attempts``, which count what was tried (deliveries are deduplicated and would hide
a second send).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from messaging.fake_gateway import FakeGateway
from messaging.tasks import send_whatsapp_message
from queueing import sweep
from queueing.models import FailedJob
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Status, Reason = FailedJob.Status, FailedJob.Reason


@pytest.fixture
def gateway(settings: Any) -> Iterator[FakeGateway]:
    with FakeGateway(port=0) as server:
        settings.WHATSAPP_GATEWAY_URL = server.url
        yield server


def attempts_of(gateway: FakeGateway, key: str) -> list[dict[str, Any]]:
    return [a for a in gateway.attempts() if a["idempotencyKey"] == key]


def statuses(gateway: FakeGateway, key: str) -> list[int | None]:
    return [a["status"] for a in attempts_of(gateway, key)]


def row(origin_task_id: str) -> FailedJob | None:
    return FailedJob.objects.filter(origin_task_id=origin_task_id).first()


def settled(origin_task_id: str, events: int) -> FailedJob | None:
    """The row once it holds ``events`` failure events and is not being retried."""
    job = row(origin_task_id)
    recorded = job and [e for e in job.history if e["event"] in ("failed", "deferred")]
    return job if job and recorded and len(recorded) >= events and job.status != Status.RETRYING else None


def sweep_until_sent(*, timeout: float) -> None:
    """Run the sweep (as Beat would, every 0.1 s here) until it sends a job."""
    wait_for(lambda: sweep.sweep().sent, timeout=timeout, interval=0.1, what="the sweep to send the job")


def test_a_rate_limited_send_never_comes_back_sooner_than_the_servers_retry_after(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway, configure: Any
) -> None:
    # Given a gateway answering 429 with Retry-After: 10, and one immediate retry per call
    configure(IMMEDIATE_RETRIES=1)
    gateway.set_mode("rate-limited", retry_after_seconds=10)

    # When a message is sent, retried at once, recorded, and re-sent by the sweep (which retries it at once too)
    result = send_whatsapp_message.delay("default", "+15550100", "hello")
    job = wait_for(lambda: settled(result.id, 1), timeout=30, what="the deferral to be recorded")
    assert (job.status, job.reason_code, job.retry_count) == (Status.FAILED, Reason.SERVER_DEFERRED, 0)
    assert job.next_retry_at is not None and job.next_retry_at >= job.last_failed_at + timedelta(seconds=10)
    sweep_until_sent(timeout=20)
    job = wait_for(lambda: settled(result.id, 2), timeout=30, what="the clone's deferral")

    # Then each of the four attempts came at least 10 s after the one before (the immediate retry's countdown
    # and the sweep's next_retry_at both honour the hint), and the deferrals used up no automatic retry
    times = [datetime.fromisoformat(a["at"]) for a in attempts_of(gateway, result.id)]
    assert statuses(gateway, result.id) == [429, 429, 429, 429]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 10 - 0.001, gaps  # the gateway's timestamps have whole milliseconds
    assert (job.status, job.reason_code, job.retry_count) == (Status.FAILED, Reason.SERVER_DEFERRED, 0)
    assert "asked to wait 10 s (Retry-After)" in job.status_reason


def test_a_deferral_does_not_use_up_an_automatic_retry_and_the_message_goes_out_once_the_limit_lifts(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway, configure: Any
) -> None:
    # Given a single automatic retry, no immediate ones, and a gateway rate-limiting with Retry-After: 1
    configure(IMMEDIATE_RETRIES=0, MAX_RETRIES=1)
    gateway.set_mode("rate-limited", retry_after_seconds=1)
    result = send_whatsapp_message.delay("default", "+15550100", "hello")
    wait_for(lambda: settled(result.id, 1), what="the first deferral")

    # When the sweep re-sends it three times, each clone deferred again
    for round_number in (2, 3, 4):
        sweep_until_sent(timeout=10)
        job = wait_for(lambda n=round_number: settled(result.id, n), what=f"deferral {round_number}")
        # Then it is still failed, due again, and no automatic retry is used up (MAX_RETRIES is 1)
        assert (job.status, job.reason_code, job.retry_count) == (Status.FAILED, Reason.SERVER_DEFERRED, 0)

    # When the rate limit lifts
    gateway.set_mode("ok")
    sweep_until_sent(timeout=10)

    # Then the message is delivered once, by the fifth attempt, and the row is resolved
    job = wait_for(lambda: (j := row(result.id)) and j.status == Status.RESOLVED and j, what="resolved")
    assert statuses(gateway, result.id) == [429, 429, 429, 429, 200]
    assert [m["message"] for m in gateway.messages()] == ["hello"]
    assert job.retry_count == 1
    assert [e.get("retry_given_back") for e in job.history if e["event"] == "deferred"] == [None, True, True, True]


def test_a_retry_after_longer_than_the_backoff_cap_waits_in_the_database_not_in_the_broker(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway, configure: Any
) -> None:
    # Given immediate retries capped at 5 s, and a gateway asking to wait 60 s (as an HTTP date)
    configure(BACKOFF_MAX=5)
    gateway.set_mode("down", retry_after_seconds=60, retry_after_format="http-date")

    # When a message is sent
    result = send_whatsapp_message.delay("default", "+15550100", "hello")

    # Then it is not retried at once: it is recorded deferred after one attempt, due in a minute or so
    job = wait_for(lambda: settled(result.id, 1), what="the deferral")
    assert statuses(gateway, result.id) == [503]
    assert (job.status, job.reason_code, job.attempts) == (Status.FAILED, Reason.SERVER_DEFERRED, 1)
    wait = (job.next_retry_at - job.last_failed_at).total_seconds()
    assert 59 <= wait <= 61 * 1.1, wait  # the HTTP date has whole seconds; up to 10 % jitter on top
    assert sweep.sweep().sent == 0


def test_the_deferred_wait_is_capped_by_retry_after_max(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway, configure: Any
) -> None:
    configure(BACKOFF_MAX=5, RETRY_AFTER_MAX=20, RETRY_AFTER_JITTER=0)
    gateway.set_mode("rate-limited", retry_after_seconds=86_400)

    result = send_whatsapp_message.delay("default", "+15550100", "hello")

    job = wait_for(lambda: settled(result.id, 1), what="the deferral")
    assert (job.next_retry_at - job.last_failed_at).total_seconds() == pytest.approx(20)


def test_a_message_to_an_invalid_recipient_is_dead_after_one_attempt_naming_the_field(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway
) -> None:
    result = send_whatsapp_message.delay("default", "15550100", "hello")  # no "+": not an E.164 number

    job = wait_for(lambda: settled(result.id, 1), what="the FailedJob row")
    assert statuses(gateway, result.id) == [400]
    assert (job.status, job.reason_code, job.attempts) == (Status.DEAD, Reason.PERMANENT_ERROR, 1)
    assert job.status_reason == "permanent error (invalid recipient, field 'to', HTTP 400): not retried automatically"


def test_a_session_not_found_is_retried_automatically_after_the_session_delay(
    celery_worker: Any, broker: redis.Redis, gateway: FakeGateway, settings: Any
) -> None:
    # Given a session delay of 3 s, and a message to a session the gateway does not serve (yet)
    settings.WHATSAPP_SESSION_RETRY_DELAY_SECONDS = 3
    result = send_whatsapp_message.delay("later", "+15550100", "hello")

    # Then it is failed after one attempt (no immediate retries), not dead, due after the session delay
    job = wait_for(lambda: settled(result.id, 1), what="the failure")
    assert statuses(gateway, result.id) == [404]
    assert (job.status, job.reason_code, job.retry_count) == (Status.FAILED, Reason.POLICY_DELAY, 0)
    assert job.next_retry_at == job.last_failed_at + timedelta(seconds=3)
    assert "session not found" in job.status_reason
    assert sweep.sweep().sent == 0

    # When the phone is linked, and the delay has passed
    gateway.sessions = frozenset({"default", "later"})
    started = time.monotonic()
    sweep_until_sent(timeout=10)

    # Then the sweep re-sends it once the delay is over, and it is delivered once
    job = wait_for(lambda: (j := row(result.id)) and j.status == Status.RESOLVED and j, what="resolved")
    assert time.monotonic() - started > 1  # it waited for its due time
    assert statuses(gateway, result.id) == [404, 200]
    assert job.retry_count == 1


def test_a_task_that_raises_a_transient_error_with_retry_after_is_retried_after_that_wait(
    celery_worker: Any, broker: redis.Redis
) -> None:
    key = uuid.uuid4().hex

    result = tasks.defer_times.delay(key, 2, 1.5)

    wait_for(lambda: broker.lrange(f"done:{key}", 0, -1) == [b"3"], what="the third run to succeed")
    times = [float(t) for t in broker.lrange(f"times:{key}", 0, -1)]
    assert len(times) == 3
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 1.5
    assert row(result.id) is None


def test_a_broken_queue_policy_does_not_lose_the_failure(
    celery_worker: Any, broker: redis.Redis, configure: Any
) -> None:
    # Given a queue default that cannot be imported
    configure(ERROR_POLICIES=["default=tests.nowhere.POLICY"], IMMEDIATE_RETRIES=0)

    # When a task on that queue fails
    result = tasks.always_fail.delay(uuid.uuid4().hex)

    # Then the failure is recorded all the same, by the defaults
    job = wait_for(lambda: settled(result.id, 1), what="the failure to be recorded")
    assert (job.status, job.exception_class) == (Status.FAILED, "tests.tasks.Boom")
