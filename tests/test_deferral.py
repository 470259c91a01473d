"""``lifecycle.fail`` with a server's deferral: recorded on the job's row, the sweep's retry given back (step 5)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from queueing import lifecycle
from queueing.models import FailedJob
from queueing.policy import ClassifiedError, ErrorKind, RetryPolicy

pytestmark = pytest.mark.django_db

Status, Reason, ClaimedBy = FailedJob.Status, FailedJob.Reason, FailedJob.ClaimedBy
POLICY = RetryPolicy(max_retries=3, retry_delay_seconds=300, check_interval_seconds=60)
DEFERRED = ClassifiedError(
    kind=ErrorKind.DEFERRED, retry_now=True, retry_after_seconds=120, delay_seconds=125, text="server deferred"
)


def defer(job: FailedJob, now: datetime, error: ClassifiedError = DEFERRED) -> None:
    lifecycle.fail(
        job,
        task_id="clone",
        attempts=2,
        exception_class="messaging.gateway.GatewayUnavailable",
        exception_message="gateway answered 429",
        traceback="",
        error=error,
        policy=POLICY,
        now=now,
    )


def claimed(make_failed_job: Any, *, by: str, retry_count: int, claimed_from: str = Status.FAILED) -> FailedJob:
    counter = "retry_count" if by == ClaimedBy.SWEEP else "manual_retry_count"
    return make_failed_job(
        status=Status.RETRYING,
        claimed_by=by,
        claimed_from=claimed_from,
        claim_token=uuid.uuid4(),
        **{counter: retry_count},
    )


def test_a_deferred_sweep_retry_is_given_back_and_the_job_is_due_when_the_server_said(
    make_failed_job: Any, now: datetime
) -> None:
    # Given the last automatic retry, claimed by the sweep
    job = claimed(make_failed_job, by=ClaimedBy.SWEEP, retry_count=3)

    # When the server defers it
    defer(job, now)

    # Then it is failed (not dead), its retry is given back, and it is due after the server's wait
    job.refresh_from_db()
    assert (job.status, job.reason_code, job.status_reason) == (
        Status.FAILED,
        Reason.SERVER_DEFERRED,
        "server deferred",
    )
    assert job.retry_count == 2
    assert job.next_retry_at == now + timedelta(seconds=125)
    assert (job.claim_token, job.claimed_by) == (None, "")
    assert job.history[-1]["event"] == "deferred"
    assert job.history[-1]["retry_after_seconds"] == 120
    assert job.history[-1]["retry_given_back"] is True


def test_a_deferred_operator_retry_keeps_its_manual_count_and_a_dead_job_is_dead_again(
    make_failed_job: Any, now: datetime
) -> None:
    job = claimed(make_failed_job, by=ClaimedBy.OPERATOR, retry_count=1, claimed_from=Status.DEAD)

    defer(job, now)

    job.refresh_from_db()
    assert (job.status, job.reason_code) == (Status.DEAD, Reason.FAILED_AFTER_OPERATOR_RETRY)
    assert (job.retry_count, job.manual_retry_count) == (0, 1)


def test_a_first_deferral_writes_a_new_row_failed_and_due_when_the_server_said(now: datetime) -> None:
    job = FailedJob(
        origin_task_id="origin",
        task_name="tests.tasks.succeed",
        queue="default",
        first_failed_at=now,
        last_failed_at=now,
    )

    defer(job, now)

    job.refresh_from_db()
    assert (job.status, job.reason_code, job.retry_count, job.attempts) == (Status.FAILED, Reason.SERVER_DEFERRED, 0, 2)
    assert job.next_retry_at == now + timedelta(seconds=125)
