"""Failure groups and their breakers in the database: the sweep sends canaries, then waves; pauses; MAX_AGE.

The sweep publishes to a real Redis (no worker runs); the clones' answers are reported as a worker would.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from queueing import gate, groups, operations, recording, sweep
from queueing.models import FailedJob, FailureGroup
from queueing.registry import HEADER_CANARY, celery_app
from queueing.retry import pause_auto_retry, resume_auto_retry

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status
State = FailureGroup.State
SECOND = timedelta(seconds=1)


def record(n: int, *, at: datetime, message: str = "gateway answered 503 for +1555000{n}") -> FailedJob:
    """An original call that failed for good (its immediate retries used), as the worker reports it."""
    failure = recording.Failure(
        task_name="tests.tasks.succeed",
        task_id=f"task-{n}-{uuid.uuid4()}",
        origin_task_id=f"origin-{n}-{uuid.uuid4()}",
        queue="default",
        args=[],
        kwargs={},
        exception_class="messaging.gateway.GatewayUnavailable",
        exception_message=message.format(n=n),
        traceback="",
        attempts=4,
    )
    job = recording.record_failure(failure, now=at)
    assert job is not None
    return job


def clone_fails(job: FailedJob, *, at: datetime, message: str = "gateway answered 503 for +15550999") -> FailedJob:
    job.refresh_from_db()
    failure = recording.Failure(
        task_name=job.task_name,
        task_id=job.clone_task_id(),
        origin_task_id=job.origin_task_id,
        queue=job.queue,
        args=[],
        kwargs={},
        exception_class="messaging.gateway.GatewayUnavailable",
        exception_message=message,
        traceback="",
        attempts=1,
        job_id=job.pk,
        claim_token=str(job.claim_token),
    )
    failed = recording.record_failure(failure, now=at)
    assert failed is not None
    return failed


def clone_succeeds(job: FailedJob, *, at: datetime) -> None:
    job.refresh_from_db()
    assert recording.record_success(job_id=job.pk, claim_token=str(job.claim_token), task_id="ok", now=at)


def group() -> FailureGroup:
    return FailureGroup.objects.get()


def sent_ids(at: datetime) -> set[int]:
    before = set(FailedJob.objects.filter(status=Status.RETRYING).values_list("pk", flat=True))
    sweep.sweep(now=at)
    return set(FailedJob.objects.filter(status=Status.RETRYING).values_list("pk", flat=True)) - before


@pytest.fixture
def breaker_settings(configure: Any) -> None:
    configure(
        RETRY_DELAY=60,
        CHECK_INTERVAL=30,
        LEASE_SECONDS=3600,
        BREAKER_CANARIES=2,
        BREAKER_MAX_DELAY=600,
        BREAKER_FIRST_WAVE=3,
    )


def test_failures_that_differ_only_in_numbers_share_one_group_with_counts_and_times(
    breaker_settings: None, now: datetime
) -> None:
    record(1, at=now)
    record(2, at=now + SECOND)
    record(3, at=now + 2 * SECOND, message="session 'abc' not found")

    one, other = FailureGroup.objects.order_by("pk")
    assert (one.failure_count, one.first_seen_at, one.last_seen_at) == (2, now, now + SECOND)
    assert one.message_pattern == "gateway answered <n> for <n>"
    assert (one.task_name, one.exception_class, one.queue) == (
        "tests.tasks.succeed",
        "messaging.gateway.GatewayUnavailable",
        "default",
    )
    assert other.message_pattern == "session <str> not found"
    assert FailedJob.objects.filter(group=one).count() == 2


def test_a_failing_group_sends_a_few_canaries_and_the_other_jobs_spend_no_retry(
    broker: redis.Redis, breaker_settings: None, now: datetime
) -> None:
    # Given 20 jobs failed with the same cause: their group opens for RETRY_DELAY
    jobs = [record(n, at=now) for n in range(20)]
    assert (group().state, group().open_until) == (State.OPEN, now + 60 * SECOND)

    # When the sweep runs before the group's time, then after it, then again at once
    assert sent_ids(now + 59 * SECOND) == set()
    canaries = sent_ids(now + 61 * SECOND)
    again = sent_ids(now + 62 * SECOND)

    # Then it sent two canaries, then nothing while they are out; only they spent an automatic retry
    assert len(canaries) == 2 and again == set()
    assert group().state == State.PROBING and group().probes == 1
    spent = set(FailedJob.objects.filter(retry_count__gt=0).values_list("pk", flat=True))
    assert spent == canaries
    assert FailedJob.objects.filter(status=Status.FAILED).count() == 18
    assert {j.pk for j in jobs} >= canaries


def test_failed_canaries_push_the_group_back_for_longer_and_the_next_probe_takes_other_jobs(
    broker: redis.Redis, breaker_settings: None, now: datetime
) -> None:
    for n in range(10):
        record(n, at=now)
    at = now + 61 * SECOND
    first = sent_ids(at)

    # When both canaries fail
    for job in FailedJob.objects.filter(pk__in=first):
        clone_fails(job, at=at + SECOND)

    # Then the group is open for twice the retry delay, and the next probe sends two jobs not yet tried
    assert (group().state, group().level) == (State.OPEN, 1)
    assert group().open_until == at + SECOND + 120 * SECOND
    assert sent_ids(at + 100 * SECOND) == set()
    second = sent_ids(at + 122 * SECOND)
    assert len(second) == 2 and not second & first
    assert not FailedJob.objects.filter(status=Status.DEAD).exists()


def test_a_canary_the_server_defers_holds_its_group_for_the_servers_wait_without_counting_a_failed_probe(
    broker: redis.Redis, breaker_settings: None, configure: Any, now: datetime
) -> None:
    configure(
        RETRY_DELAY=60,
        CHECK_INTERVAL=30,
        LEASE_SECONDS=3600,
        BREAKER_CANARIES=2,
        BREAKER_FIRST_WAVE=3,
        BREAKER_MAX_DELAY=600,
        RETRY_AFTER_JITTER=0,
    )
    for n in range(10):
        record(n, at=now)
    at = now + 61 * SECOND
    canaries = sent_ids(at)

    # When a canary's clone is answered 429 with Retry-After: 300 (a deferral, as the worker classifies it)
    job = FailedJob.objects.get(pk=min(canaries))
    failure = recording.Failure(
        task_name=job.task_name,
        task_id=job.clone_task_id(),
        origin_task_id=job.origin_task_id,
        queue=job.queue,
        args=[],
        kwargs={},
        exception_class="messaging.gateway.GatewayUnavailable",
        exception_message="gateway answered 429 for +15550999",
        traceback="",
        attempts=1,
        job_id=job.pk,
        claim_token=str(job.claim_token),
        error_kind="deferred",
        retry_after_seconds=300,
        delay_seconds=300,
    )
    assert recording.record_failure(failure, now=at + SECOND) is not None

    # Then the group waits what the server asked, and its delay does not grow as for a failed probe
    assert (group().state, group().level) == (State.OPEN, 0)
    assert group().open_until == at + SECOND + 300 * SECOND


def test_a_canary_that_fails_with_another_cause_still_pushes_its_group_back(
    broker: redis.Redis, breaker_settings: None, now: datetime
) -> None:
    for n in range(5):
        record(n, at=now)
    probed = group()
    canary = FailedJob.objects.get(pk=min(sent_ids(now + 61 * SECOND)))
    clone_fails(canary, at=now + 62 * SECOND, message="connection reset by peer")

    probed.refresh_from_db()
    assert (probed.state, probed.level) == (State.OPEN, 1)
    assert FailureGroup.objects.count() == 2


def test_a_successful_canary_releases_the_rest_in_growing_waves(
    broker: redis.Redis, breaker_settings: None, now: datetime
) -> None:
    # Given 40 jobs of one open group, probed
    for n in range(40):
        record(n, at=now)
    at = now + 61 * SECOND
    canaries = sent_ids(at)

    # When a canary succeeds
    clone_succeeds(FailedJob.objects.get(pk=min(canaries)), at=at + SECOND)
    assert (group().state, group().wave) == (State.CLOSED, 0)

    # Then the sweeps send 3, then 15 (one wave per CHECK_INTERVAL, nothing in between), then the rest
    sizes = []
    for step in range(4):
        wave_at = at + (2 + 30 * step) * SECOND
        sizes.append(len(sent_ids(wave_at)))
        assert sent_ids(wave_at + SECOND) == set()
    assert sizes == [3, 15, 20, 0]
    assert not FailedJob.objects.filter(status=Status.FAILED).exists()


def test_two_sweeps_that_read_the_same_open_group_send_one_probe(breaker_settings: None, now: datetime) -> None:
    record(1, at=now)
    seen_by_one, seen_by_other = group(), group()
    settings = groups.config()

    first = groups.take_release(seen_by_one, now=now + 61 * SECOND, settings=settings)
    second = groups.take_release(seen_by_other, now=now + 61 * SECOND, settings=settings)

    assert (first.canary, first.limit, second.limit) == (True, 2, 0)
    assert group().probes == 1 and str(group().probe_token) == str(first.token)


def test_how_many_of_a_group_may_go_now_can_be_asked_without_taking_it(breaker_settings: None, now: datetime) -> None:
    record(1, at=now)
    assert gate.release_for(group(), now=now).limit == 0
    assert gate.release_for(group(), now=now + 61 * SECOND).limit == 2
    assert gate.release_for(group(), now=now + 61 * SECOND).limit == 2
    assert group().state == State.OPEN


def test_with_the_breaker_off_every_due_job_goes(broker: redis.Redis, configure: Any, now: datetime) -> None:
    configure(RETRY_DELAY=60, BREAKER_ENABLED=False)
    for n in range(10):
        record(n, at=now)
    assert len(sent_ids(now + 61 * SECOND)) == 10


def test_a_paused_queue_is_left_alone_by_the_sweep_but_an_operator_can_still_retry_it(
    broker: redis.Redis, configure: Any, make_failed_job: Any, now: datetime
) -> None:
    configure(RETRY_DELAY=0)
    job = make_failed_job(queue="default")
    assert pause_auto_retry("default") is True
    assert pause_auto_retry("default") is False

    assert sweep.sweep(now=now).sent == 0
    assert operations.retry_now(queue="default").retried_ids == (job.pk,)

    make_failed_job(queue="default")
    assert resume_auto_retry("default") is True
    assert sweep.sweep(now=now).sent == 1


def test_a_paused_group_is_left_alone_by_the_sweep_and_other_groups_go_on(
    broker: redis.Redis, configure: Any, now: datetime
) -> None:
    configure(RETRY_DELAY=0, BREAKER_ENABLED=False)
    record(1, at=now)
    record(2, at=now, message="another cause")
    paused = FailureGroup.objects.get(message_pattern="another cause")
    pause_auto_retry(group=paused.pk, reason="vendor incident")

    assert {j.group_id for j in FailedJob.objects.filter(pk__in=sent_ids(now + SECOND))} == {paused.pk - 1}
    resume_auto_retry(group=paused.pk)
    assert len(sent_ids(now + 2 * SECOND)) == 1


def test_a_group_is_retried_and_discarded_as_one(broker: redis.Redis, configure: Any, now: datetime) -> None:
    configure(RETRY_DELAY=600)
    for n in range(3):
        record(n, at=now)
    record(9, at=now, message="another cause")
    first = FailureGroup.objects.order_by("pk").first()
    assert first is not None

    outcome = operations.retry_now(group=first.pk)
    assert (outcome.total, outcome.retried) == (3, 3)

    other = FailureGroup.objects.get(message_pattern="another cause")
    assert len(operations.discard_group(group=other.pk)) == 1
    assert FailedJob.objects.get(group=other).status == Status.DISCARDED


def test_a_job_failing_longer_than_max_age_is_dead_with_that_reason(
    broker: redis.Redis, configure: Any, make_failed_job: Any, now: datetime
) -> None:
    configure(MAX_AGE=3600)
    old = make_failed_job(first_failed_at=now - timedelta(hours=2), next_retry_at=now + timedelta(hours=1))
    young = make_failed_job(first_failed_at=now - timedelta(minutes=30), next_retry_at=now + timedelta(hours=1))

    assert sweep.sweep(now=now).too_old == 1

    old.refresh_from_db()
    young.refresh_from_db()
    assert (old.status, old.reason_code) == (Status.DEAD, FailedJob.Reason.MAX_AGE_EXCEEDED)
    assert "MAX_AGE" in old.status_reason and old.dead_at == now
    assert young.status == Status.FAILED


def test_each_change_of_a_group_is_one_log_line(broker: redis.Redis, breaker_settings: None, now: datetime) -> None:
    celery_app()  # loads the task modules (and the logging set-up) before the handler below listens
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("queueing.groups").addHandler(handler)
    try:
        for n in range(5):
            record(n, at=now)
        canaries = sent_ids(now + 61 * SECOND)
        clone_succeeds(FailedJob.objects.get(pk=min(canaries)), at=now + 62 * SECOND)
    finally:
        logging.getLogger("queueing.groups").removeHandler(handler)

    lines = [(r.levelname, r.getMessage()) for r in records]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "INFO"]
    assert "closed -> open until" in lines[0][1] and "(job failed)" in lines[0][1]
    assert "-> probing until" in lines[1][1] and "(probe)" in lines[1][1]
    assert "probing until" in lines[2][1] and "-> closed (canary succeeded)" in lines[2][1]


def test_canaries_that_hold_others_back_ask_once_and_a_probe_of_a_whole_group_keeps_its_retries(
    broker: redis.Redis, breaker_settings: None, now: datetime
) -> None:
    def canary_headers() -> list[Any]:
        messages = [json.loads(raw) for raw in broker.lrange("default", 0, -1)]
        return [message["headers"].get(HEADER_CANARY) for message in messages]

    # Given a group of five: the probe's two canaries carry the header (no immediate retries for them)
    for n in range(5):
        record(n, at=now)
    sweep.sweep(now=now + 61 * SECOND)
    assert canary_headers() == [True, True]

    # Given a group of one: its probe is the whole group, an ordinary retry with its immediate retries
    broker.delete("default")
    record(9, at=now, message="a cause of its own")
    sweep.sweep(now=now + 61 * SECOND)
    assert canary_headers() == [None]
