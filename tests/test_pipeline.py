"""The retry pipeline end to end, with a real Redis broker and the embedded Celery worker."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
import redis

from queueing import operations, recording, registry, sweep
from queueing.models import FailedJob
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _key() -> str:
    return uuid.uuid4().hex


def _row(origin_task_id: str) -> FailedJob | None:
    return FailedJob.objects.filter(origin_task_id=origin_task_id).first()


def test_a_failing_task_is_retried_immediately_with_doubling_delays(
    celery_worker: Any, broker: redis.Redis, configure: Any
) -> None:
    configure(BACKOFF_BASE=0.3)
    key = _key()

    # Given a task that fails three times and then succeeds
    tasks.fail_times.delay(key, 3)

    # Then it runs four times, 0.3 s, 0.6 s and 1.2 s apart, and no failure is recorded
    wait_for(lambda: broker.llen(f"done:{key}"), what="the fourth run to succeed")
    times = [float(t) for t in broker.lrange(f"times:{key}", 0, -1)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.3, 0.6, 1.2], strict=True):
        assert expected * 0.9 <= gap <= expected + 1.0, gaps
    # Doubling, not a constant wait: the last gap (1.2 s) is four times the first (0.3 s), which no constant
    # delay (with the same scheduling noise on each gap) can give.
    assert gaps[2] > 2 * gaps[0], gaps
    assert not FailedJob.objects.exists()


def test_a_final_failure_writes_exactly_one_failed_job_with_everything_to_run_it_again(
    celery_worker: Any, broker: redis.Redis
) -> None:
    key = _key()

    result = tasks.always_fail.apply_async(args=[key], kwargs={"reason": "gateway down"})

    job = wait_for(lambda: _row(result.id), what="the FailedJob row")
    assert FailedJob.objects.count() == 1
    assert job.status == FailedJob.Status.FAILED
    assert job.task_name == "tests.tasks.always_fail"
    assert job.queue == "default"
    assert job.args == [key]
    assert job.kwargs == {"reason": "gateway down"}
    assert job.exception_class == "tests.tasks.Boom"
    assert job.exception_message == "gateway down"
    assert "Boom: gateway down" in job.traceback
    assert job.attempts == 4 == int(broker.get(f"runs:{key}"))
    assert job.retry_count == 0
    assert job.next_retry_at is not None


def test_a_permanent_error_skips_immediate_retries_and_is_recorded_dead(
    celery_worker: Any, broker: redis.Redis
) -> None:
    key = _key()

    result = tasks.fail_permanently.delay(key)

    job = wait_for(lambda: _row(result.id), what="the FailedJob row")
    assert job.status == FailedJob.Status.DEAD
    assert job.attempts == 1 == int(broker.get(f"runs:{key}"))
    assert "permanent" in job.status_reason
    assert job.reason_code == FailedJob.Reason.PERMANENT_ERROR


def test_retries_count_up_to_the_limit_then_the_job_is_dead_and_never_sent_again(
    celery_worker: Any, broker: redis.Redis
) -> None:
    key = _key()
    result = tasks.always_fail.delay(key)
    job = wait_for(lambda: _row(result.id), what="the first failure")

    # When the sweep re-sends it three times, each clone failing after its own immediate retries
    for round_number in (1, 2, 3):
        assert sweep.sweep().sent == 1
        job = wait_for(
            lambda n=round_number: (j := _row(result.id)) and j.retry_count == n and j.status != "retrying" and j,
            what=f"retry round {round_number} to fail",
        )

    # Then the same row (never a second) is dead after 16 executions, and the sweep leaves it alone
    assert FailedJob.objects.count() == 1
    assert job.status == FailedJob.Status.DEAD
    assert job.reason_code == FailedJob.Reason.RETRIES_USED_UP
    assert job.retry_count == 3
    assert job.attempts == 16 == int(broker.get(f"runs:{key}"))
    assert job.dead_at is not None
    assert sweep.sweep().sent == 0
    assert _row(result.id).status == FailedJob.Status.DEAD


def test_a_successful_retry_resolves_the_row(celery_worker: Any, broker: redis.Redis) -> None:
    key = _key()
    # Given a call that fails its four attempts (the original and 3 immediate retries), then would succeed
    result = tasks.fail_times.delay(key, 4)
    wait_for(lambda: _row(result.id), what="the failure")

    # When the sweep re-sends it
    assert sweep.sweep().sent == 1

    # Then the clone succeeds and the row is resolved
    job = wait_for(lambda: (j := _row(result.id)) and j.status == FailedJob.Status.RESOLVED and j, what="resolved")
    assert job.retry_count == 1
    assert job.resolved_at is not None
    # A clone is the same Celery call: it keeps the original task id (docs/workflows.md); the claim headers,
    # not the id, tell it apart.
    assert job.latest_task_id == result.id
    assert [e["event"] for e in job.history] == ["failed", "retry_started", "resolved"]


def test_a_stale_clone_whose_claim_is_gone_does_nothing(
    celery_worker: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    key = _key()
    job = make_failed_job(task_name="tests.tasks.succeed", args=[key], status=FailedJob.Status.RESOLVED)

    # A message that names the row but holds a claim token the row does not have
    tasks.succeed.apply_async(
        args=[key],
        headers={registry.HEADER_JOB_ID: job.pk, registry.HEADER_CLAIM: str(uuid.uuid4())},
    )
    marker = tasks.succeed.delay(f"{key}-marker")  # runs after it on the solo worker
    wait_for(lambda: broker.get(f"runs:{key}-marker"), what="the marker task")

    assert broker.get(f"runs:{key}") is None
    assert marker.id
    job.refresh_from_db()
    assert job.status == FailedJob.Status.RESOLVED


def test_retry_all_failed_resends_failed_and_dead_jobs_once(
    celery_worker: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    keys = [_key() for _ in range(3)]
    failed = make_failed_job(args=[keys[0]], queue="default")
    dead = make_failed_job(args=[keys[1]], queue="default", status=FailedJob.Status.DEAD, retry_count=3)
    busy = make_failed_job(args=[keys[2]], queue="default", status=FailedJob.Status.RETRYING)

    outcome = operations.retry_now(queue="default")
    again = operations.retry_now(queue="default")

    assert outcome.as_dict() == {"total": 2, "retried": 2}
    assert again.as_dict() == {"total": 0, "retried": 0}
    for job in (failed, dead):
        wait_for(lambda j=job: FailedJob.objects.get(pk=j.pk).status == FailedJob.Status.RESOLVED, what="resolved")
    assert int(broker.get(f"runs:{keys[0]}")) == 1
    assert int(broker.get(f"runs:{keys[1]}")) == 1
    assert broker.get(f"runs:{keys[2]}") is None
    busy.refresh_from_db()
    assert busy.status == FailedJob.Status.RETRYING
    dead.refresh_from_db()
    assert dead.retry_count == 3 and dead.manual_retry_count == 1


def test_a_dead_job_retried_by_hand_that_fails_again_is_dead_again(
    celery_worker: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    key = _key()
    # Given a job an operator marked dead, with all its automatic retries left, whose task still fails
    job = make_failed_job(
        task_name="tests.tasks.always_fail",
        args=[key],
        status=FailedJob.Status.DEAD,
        next_retry_at=None,
        status_reason="marked dead by an operator",
        reason_code=FailedJob.Reason.OPERATOR_MARKED_DEAD,
    )

    # When an operator retries it and the retry fails after its own immediate retries
    outcome = operations.retry_now(ids=[job.pk])
    assert outcome.retried_ids == (job.pk,)
    job = wait_for(
        lambda: (j := FailedJob.objects.get(pk=job.pk)).status != FailedJob.Status.RETRYING and j,
        what="the operator's retry to fail",
    )

    # Then it is dead again (not failed, though automatic retries are left), and the sweep leaves it alone
    assert int(broker.get(f"runs:{key}")) == 4
    assert job.status == FailedJob.Status.DEAD
    assert job.reason_code == FailedJob.Reason.FAILED_AFTER_OPERATOR_RETRY
    assert "after an operator's retry" in job.status_reason
    assert (job.retry_count, job.manual_retry_count, job.next_retry_at, job.claim_token) == (0, 1, None, None)
    assert [e["event"] for e in job.history] == ["retry_started", "failed"]
    assert sweep.sweep().sent == 0
    assert FailedJob.objects.get(pk=job.pk).status == FailedJob.Status.DEAD


def test_a_failure_that_meets_a_database_outage_is_recorded_once_the_database_is_back(
    celery_worker: Any, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    real_record_failure = recording.record_failure
    outage = {"calls_left": 3}  # the failure itself, then two retries of the hand-over, meet the outage

    def database_down_for_a_while(*args: Any, **kwargs: Any) -> Any:
        if outage["calls_left"] > 0:
            outage["calls_left"] -= 1
            raise OperationalError("could not connect to server: Connection refused")
        return real_record_failure(*args, **kwargs)

    monkeypatch.setattr(recording, "record_failure", database_down_for_a_while)
    key = _key()

    # When a call fails for good while the database cannot be written
    result = tasks.always_fail.delay(key)

    # Then the failure waits on the broker and is written, once, when the database answers again
    job = wait_for(lambda: _row(result.id), what="the FailedJob row written after the outage")
    assert outage["calls_left"] == 0
    assert FailedJob.objects.count() == 1
    assert (job.status, job.attempts, job.args) == (FailedJob.Status.FAILED, 4, [key])
    assert job.exception_class == "tests.tasks.Boom"
