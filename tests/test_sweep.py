"""The sweep: which jobs it claims, that claims are exclusive, and that leases recover lost retries."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection, transaction
from kombu.exceptions import OperationalError

from queueing import operations, recording, registry, sweep
from queueing.models import FailedJob
from tests import tasks
from tests.conftest import FAST

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


def published(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The headers of the task messages waiting in ``queue`` on the broker."""
    return [json.loads(raw)["headers"] for raw in broker.lrange(queue, 0, -1)]


def test_sweep_sends_only_jobs_that_are_due(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    due = make_failed_job(queue="default", next_retry_at=now - timedelta(seconds=1))
    make_failed_job(queue="default", next_retry_at=now + timedelta(minutes=5))
    make_failed_job(queue="default", status=Status.DEAD, next_retry_at=None)
    make_failed_job(queue="default", status=Status.RESOLVED)

    result = sweep.sweep(now=now)

    assert (result.claimed, result.sent) == (1, 1)
    [headers] = published(broker, "default")
    assert headers[registry.HEADER_JOB_ID] == due.pk
    assert headers["task"] == "tests.tasks.succeed"
    due.refresh_from_db()
    assert due.status == Status.RETRYING
    assert due.retry_count == 1
    assert headers["id"] == due.clone_task_id()
    assert headers[registry.HEADER_CLAIM] == str(due.claim_token)


def test_sweep_leaves_jobs_that_used_up_their_automatic_retries(
    broker: redis.Redis, make_failed_job: Any, now: Any
) -> None:
    make_failed_job(queue="default", retry_count=3)

    assert sweep.sweep(now=now).sent == 0
    assert published(broker, "default") == []


def test_sweep_claims_at_most_the_waves_size(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    for _ in range(5):
        make_failed_job(queue="default")

    assert sweep.sweep(now=now, batch_size=2, max_jobs=2).sent == 2
    assert len(published(broker, "default")) == 2
    assert FailedJob.objects.filter(status=Status.FAILED).count() == 3


def test_two_sweeps_at_once_never_send_a_job_twice(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    jobs = [make_failed_job(queue="default") for _ in range(120)]
    start = threading.Barrier(3)
    claimed: list[list[int]] = [[], [], []]
    errors: list[BaseException] = []

    def sweeper(slot: int) -> None:
        try:
            start.wait()
            while True:
                result = sweep.sweep(now=now, batch_size=10)
                claimed[slot].append(result.sent)
                if result.claimed == 0:
                    return
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    sent_ids = [h[registry.HEADER_JOB_ID] for h in published(broker, "default")]
    assert sorted(sent_ids) == sorted(j.pk for j in jobs)  # each exactly once
    assert sum(sum(c) for c in claimed) == len(jobs)
    assert set(FailedJob.objects.values_list("retry_count", flat=True)) == {1}


def test_a_retry_whose_publish_was_lost_is_sent_again_when_its_lease_expires(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any
) -> None:
    job = make_failed_job(queue="default")
    # Given a sweep that claimed the job and died before publishing (or whose message the broker lost)
    sweep.sweep(now=now)
    broker.delete("default")
    job.refresh_from_db()
    assert (job.status, job.retry_count) == (Status.RETRYING, 1)

    # When the next sweeps run, first within the lease, then after it
    assert sweep.sweep(now=now + timedelta(seconds=30)).sent == 0
    later = now + timedelta(seconds=FAST["LEASE_SECONDS"] + 1)
    result = sweep.sweep(now=later)

    # Then the row is taken back, its retry given back, and it is sent again exactly once
    assert (result.recovered, result.sent) == (1, 1)
    job.refresh_from_db()
    assert (job.status, job.retry_count) == (Status.RETRYING, 1)
    assert [h[registry.HEADER_JOB_ID] for h in published(broker, "default")] == [job.pk]
    assert "lease_expired" in [e["event"] for e in job.history]
    assert job.reason_code == FailedJob.Reason.LEASE_EXPIRED_NOT_STARTED


def test_a_retry_that_started_and_vanished_uses_up_its_retry(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any
) -> None:
    configure(RETRY_DELAY=300)
    job = make_failed_job(queue="default")
    sweep.sweep(now=now)
    job.refresh_from_db()
    # Given a clone that started (renewing its lease) and whose worker was then killed
    assert recording.start_clone(job_id=job.pk, claim_token=str(job.claim_token), task_id="clone-1", now=now)

    later = now + timedelta(seconds=FAST["LEASE_SECONDS"] + 1)
    result = sweep.sweep(now=later, batch_size=1)

    job.refresh_from_db()
    assert result.recovered == 1
    assert (job.status, job.retry_count) == (Status.FAILED, 1)
    assert "never finished" in job.status_reason
    assert job.reason_code == FailedJob.Reason.LEASE_EXPIRED
    assert job.claim_token is None
    assert job.next_retry_at == later + timedelta(seconds=300)


def test_an_expired_lease_on_the_last_retry_leaves_the_job_dead(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any
) -> None:
    job = make_failed_job(queue="default", retry_count=2)
    sweep.sweep(now=now)
    job.refresh_from_db()
    recording.start_clone(job_id=job.pk, claim_token=str(job.claim_token), task_id="clone-1", now=now)

    sweep.sweep(now=now + timedelta(seconds=FAST["LEASE_SECONDS"] + 1))

    job.refresh_from_db()
    assert (job.status, job.retry_count) == (Status.DEAD, 3)
    assert job.reason_code == FailedJob.Reason.LEASE_EXPIRED


def test_a_job_naming_an_unknown_task_is_marked_dead_and_not_sent(
    broker: redis.Redis, make_failed_job: Any, now: Any
) -> None:
    job = make_failed_job(queue="default", task_name="tests.tasks.no_such_task")

    result = sweep.sweep(now=now)

    assert (result.unknown, result.sent) == (1, 0)
    assert published(broker, "default") == []
    job.refresh_from_db()
    assert job.status == Status.DEAD
    assert "'tests.tasks.no_such_task' is not registered" in job.status_reason
    assert job.reason_code == FailedJob.Reason.UNREGISTERED_TASK


def test_a_publish_error_gives_the_claim_and_the_retry_back(
    broker: redis.Redis, make_failed_job: Any, now: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_failed_job(queue="default")

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.succeed, "apply_async", broker_down)
    result = sweep.sweep(now=now)

    assert (result.claimed, result.sent) == (1, 0)
    job.refresh_from_db()
    assert (job.status, job.retry_count) == (Status.FAILED, 0)
    assert job.next_retry_at == now
    assert "could not be sent" in job.status_reason
    assert job.reason_code == FailedJob.Reason.PUBLISH_FAILED


def test_the_sweep_refuses_to_run_inside_a_transaction() -> None:
    with transaction.atomic(), pytest.raises(RuntimeError, match=r"outside transaction\.atomic"):
        sweep.sweep()


def test_a_stored_call_that_no_longer_fits_its_task_is_marked_dead_not_resent_forever(
    broker: redis.Redis, make_failed_job: Any, now: Any
) -> None:
    # Given a row recorded before the task's signature changed
    job = make_failed_job(queue="default", task_name="tests.tasks.fail_times", args=["only-one-argument"])

    result = sweep.sweep(now=now)

    assert (result.claimed, result.sent) == (1, 0)
    job.refresh_from_db()
    assert (job.status, job.retry_count) == (Status.DEAD, 0)
    assert "cannot be sent to tests.tasks.fail_times" in job.status_reason
    assert "missing 1 required positional argument: 'times'" in job.status_reason
    assert job.reason_code == FailedJob.Reason.UNSENDABLE
    assert published(broker, "default") == []


def test_a_bulk_retry_goes_on_past_jobs_it_cannot_send(broker: redis.Redis, make_failed_job: Any) -> None:
    # Given a queue where the first batch holds only calls that no longer fit their task
    misfits = [make_failed_job(queue="default", task_name="tests.tasks.fail_times", args=["x"]) for _ in range(3)]
    sendable = [make_failed_job(queue="default") for _ in range(3)]

    outcome = operations.retry_now(queue="default", batch_size=2)

    assert (outcome.total, outcome.retried, outcome.unsendable, outcome.refused) == (6, 3, 3, 0)
    assert sorted(h[registry.HEADER_JOB_ID] for h in published(broker, "default")) == [j.pk for j in sendable]
    assert {FailedJob.objects.get(pk=j.pk).status for j in misfits} == {Status.DEAD}


def test_a_bulk_retry_tells_dead_jobs_of_unknown_tasks_apart_once(broker: redis.Redis, make_failed_job: Any) -> None:
    job = make_failed_job(queue="default", task_name="tests.tasks.gone", status=Status.DEAD, status_reason="old reason")

    first = operations.retry_now(queue="default")
    second = operations.retry_now(queue="default")

    assert (first.total, first.retried, first.unknown) == (1, 0, 1)
    assert (second.total, second.retried, second.unknown) == (1, 0, 0)
    job.refresh_from_db()
    assert job.status == Status.DEAD
    assert job.status_reason.startswith("unregistered task: 'tests.tasks.gone' is not registered")
    assert published(broker, "default") == []


def test_discarding_and_marking_dead_leave_an_event_in_the_history(make_failed_job: Any, now: Any) -> None:
    failed, dead, busy = make_failed_job(), make_failed_job(status=Status.DEAD), make_failed_job(status=Status.RETRYING)

    assert operations.mark_dead(ids=[failed.pk, busy.pk], now=now, reason="broken for good") == [failed.pk]
    assert operations.discard(ids=[dead.pk, busy.pk], now=now) == [dead.pk]

    failed.refresh_from_db()
    dead.refresh_from_db()
    busy.refresh_from_db()
    assert (failed.status, failed.dead_at, failed.status_reason) == (Status.DEAD, now, "broken for good")
    assert failed.history[-1] == {"event": "dead", "at": now.isoformat(), "reason": "broken for good"}
    assert failed.reason_code == FailedJob.Reason.OPERATOR_MARKED_DEAD
    assert (dead.status, dead.discarded_at) == (Status.DISCARDED, now)
    assert dead.reason_code == FailedJob.Reason.OPERATOR_DISCARDED
    assert dead.history[-1]["event"] == "discarded"
    assert busy.status == Status.RETRYING
