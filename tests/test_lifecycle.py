"""The lifecycle verbs: each refuses a move the lifecycle does not allow, and writes only its own fields."""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.apps import apps

from queueing import lifecycle
from queueing.exceptions import InvalidTransition
from queueing.models import FailedJob
from queueing.policy import RetryPolicy

Status = FailedJob.Status
Reason = FailedJob.Reason
POLICY = RetryPolicy(max_retries=3, retry_delay_seconds=300, check_interval_seconds=60)


def unsaved(status: str, **fields: Any) -> FailedJob:
    return FailedJob(pk=7, status=status, task_name="tests.tasks.succeed", **fields)


@pytest.mark.parametrize(
    ("status", "verb"),
    [
        (Status.RESOLVED, lambda job, now: lifecycle.discard(job, now=now, text="x")),
        (Status.DISCARDED, lambda job, now: lifecycle.discard(job, now=now, text="x")),
        (Status.DEAD, lambda job, now: lifecycle.mark_dead(job, now=now, text="x")),
        (Status.RETRYING, lambda job, now: lifecycle.mark_dead(job, now=now, text="x")),
        (Status.FAILED, lambda job, now: lifecycle.resolve(job, task_id="t", now=now)),
        (Status.DEAD, lambda job, now: lifecycle.start_clone(job, task_id="t", now=now, lease_seconds=60)),
        (Status.FAILED, lambda job, now: lifecycle.expire_lease(job, now=now, policy=POLICY)),
        (Status.FAILED, lambda job, now: lifecycle.give_back(job, now=now, reason=None, text="x")),
        (Status.RESOLVED, lambda job, now: lifecycle.mark_unregistered_dead(job, now=now)),
        (
            Status.RESOLVED,
            lambda job, now: lifecycle.fail(
                job,
                task_id="t",
                attempts=1,
                exception_class="E",
                exception_message="m",
                traceback="",
                permanent=False,
                policy=POLICY,
                now=now,
            ),
        ),
    ],
)
def test_a_move_the_lifecycle_does_not_allow_is_refused_before_anything_is_written(
    status: str, verb: Any, now: datetime
) -> None:
    job = unsaved(status)  # no database: the verb must refuse before it saves

    with pytest.raises(InvalidTransition) as refused:
        verb(job, now)

    assert (refused.value.job_id, refused.value.status) == (7, status)
    assert str(refused.value).startswith(f"job 7: cannot {refused.value.move} a job that is '{status}'")
    assert job.status == status


@pytest.mark.django_db
def test_a_verb_writes_only_its_own_fields_so_a_concurrent_change_elsewhere_survives(
    make_failed_job: Any, now: datetime
) -> None:
    # Given a job loaded by an operator's verb while a worker updates its error text
    job = make_failed_job()
    FailedJob.objects.filter(pk=job.pk).update(exception_message="newer error", attempts=9)

    # When the verb saves the stale instance
    lifecycle.discard(job, now=now, text="not needed any more")

    # Then its own fields are written, and the worker's change is kept
    job.refresh_from_db()
    assert (job.status, job.discarded_at, job.reason_code) == (Status.DISCARDED, now, Reason.OPERATOR_DISCARDED)
    assert (job.exception_message, job.attempts) == ("newer error", 9)


@pytest.mark.django_db
def test_every_transition_sets_the_coded_reason_beside_the_sentence(make_failed_job: Any, now: datetime) -> None:
    marked = make_failed_job()
    lifecycle.mark_dead(marked, now=now, text="broken")
    unknown = make_failed_job(task_name="tests.tasks.gone")
    lifecycle.mark_unregistered_dead(unknown, now=now)
    permanent = make_failed_job()
    lifecycle.fail(
        permanent,
        task_id="t",
        attempts=1,
        exception_class="E",
        exception_message="m",
        traceback="",
        permanent=True,
        policy=POLICY,
        now=now,
    )

    codes = {job.pk: job.reason_code for job in FailedJob.objects.all()}
    assert codes == {
        marked.pk: Reason.OPERATOR_MARKED_DEAD,
        unknown.pk: Reason.UNREGISTERED_TASK,
        permanent.pk: Reason.PERMANENT_ERROR,
    }


@pytest.mark.django_db
def test_the_data_migration_codes_the_reasons_of_existing_rows_from_their_sentences(
    make_failed_job: Any, now: datetime
) -> None:
    migration = importlib.import_module("queueing.migrations.0005_fill_reason_code")
    sentences = {
        "unregistered task: 'x' is not registered in this project": Reason.UNREGISTERED_TASK,
        "permanent error: not retried automatically": Reason.PERMANENT_ERROR,
        "automatic retries used up (3 of 3)": Reason.RETRIES_USED_UP,
        "failed again after an operator's retry of a dead job": Reason.FAILED_AFTER_OPERATOR_RETRY,
        "lease expired before the retry started (publish lost?); the retry was given back": (
            Reason.LEASE_EXPIRED_NOT_STARTED
        ),
        "lease expired: the retry started at 2026-01-01T00:00:00 and never finished": Reason.LEASE_EXPIRED,
        "the stored call cannot be sent to t: bad": Reason.UNSENDABLE,
        "retry could not be sent: OperationalError()": Reason.PUBLISH_FAILED,
        "marked dead by operator in the admin": Reason.OPERATOR_MARKED_DEAD,
        "something nobody can tell": Reason.NONE,
    }
    jobs = {make_failed_job(status=Status.DEAD, status_reason=text).pk: code for text, code in sentences.items()}
    jobs[make_failed_job(status=Status.DISCARDED, status_reason="no longer needed").pk] = Reason.OPERATOR_DISCARDED
    jobs[make_failed_job(status=Status.FAILED, next_retry_at=now + timedelta(minutes=1)).pk] = Reason.NONE

    migration.fill(apps, None)

    assert dict(FailedJob.objects.values_list("pk", "reason_code")) == jobs
