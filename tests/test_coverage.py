"""Tasks that are not RetryableTask (queueing/coverage.py): covered by base class or by name, and said so."""

from __future__ import annotations

import logging
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from queueing import coverage, sweep
from queueing.models import FailedJob
from tests import workflow_tasks as wt
from tests.conftest import wait_for

Status = FailedJob.Status


def _row(origin_task_id: str) -> FailedJob | None:
    return FailedJob.objects.filter(origin_task_id=origin_task_id).first()


def test_coverage_lists_retryable_tasks_named_tasks_and_the_rest(celery_app: Celery, configure: Any) -> None:
    configure(RECORD_FAILURES_OF=["tests.thirdparty.fl*"])

    found = coverage.coverage(celery_app)

    assert {"tests.workflow_tasks.step", "tests.workflow_tasks.own_base_covered"} <= set(found.covered)
    assert "tests.thirdparty.flaky" in found.covered
    assert "tests.thirdparty.uncovered" in found.not_covered
    assert {"queueing.sweep_failed_jobs", "queueing.record_failed_job"} <= set(found.opted_out)
    assert not [name for name in found.covered + found.not_covered if name.startswith("celery.")]


def test_the_worker_says_at_start_which_tasks_are_covered_and_which_are_not(
    celery_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="queueing.coverage"):
        coverage._log_coverage(sender=SimpleNamespace(app=celery_app))

    [line] = [r.getMessage() for r in caplog.records if r.name == "queueing.coverage"]
    assert "failures recorded and retried for" in line
    assert "tests.thirdparty.uncovered" in line.split("NOT for")[1]
    assert "RECORD_FAILURES_OF" in line


@pytest.mark.django_db(transaction=True)
def test_a_task_with_its_own_base_class_and_retryable_task_first_is_recorded_and_pending(
    celery_worker: Any, broker: Any
) -> None:
    key = uuid.uuid4().hex
    wt.store().set(f"down:{key}:own", 1)

    result = wt.own_base_covered.delay(key)

    job = wait_for(lambda: _row(result.id), what="the row")
    assert job.status == Status.FAILED
    assert job.attempts == 4  # RetryableTask's immediate retries
    # pending: its own on_failure (a failure handler) has not run yet
    assert wt.store().get(f"own_on_failure:{key}") is None


@pytest.mark.django_db(transaction=True)
def test_a_third_party_task_named_in_the_setting_is_recorded_retried_and_resolved(
    celery_worker: Any, broker: Any, configure: Any
) -> None:
    configure(RECORD_FAILURES_OF=["tests.thirdparty.*"])
    key = uuid.uuid4().hex
    wt.store().set(f"down:{key}:thirdparty", 1)

    # Given a plain celery.Task that fails once (it has no immediate retries of its own)
    result = wt.thirdparty_flaky.delay(key)
    job = wait_for(lambda: _row(result.id), what="the row")
    assert (job.status, job.attempts, job.exception_class) == (Status.FAILED, 1, "tests.workflow_tasks.GatewayDown")

    # When the service is back and the sweep re-sends it
    wt.store().delete(f"down:{key}:thirdparty")
    assert sweep.sweep().sent == 1

    # Then the clone runs and the row is resolved through the signals
    wait_for(lambda: (j := _row(result.id)) and j.status == Status.RESOLVED, what="resolved")
    assert int(wt.store().get(f"runs:{key}:thirdparty")) == 2


@pytest.mark.django_db(transaction=True)
def test_a_task_neither_retryable_nor_named_is_not_recorded(celery_worker: Any, broker: Any) -> None:
    key = uuid.uuid4().hex

    wt.thirdparty_uncovered.delay(key)

    wait_for(lambda: wt.store().get(f"runs:{key}:uncovered"), what="the run")
    time.sleep(0.3)  # the time its failure would take to be recorded
    assert not FailedJob.objects.exists()
