"""Workflows survive an outage (docs/workflows.md): real worker, real broker, a real result backend.

A job the system will still retry is pending for its workflow; a clone that succeeds goes on with it as if
the first call had; a job given up fails it then.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.result import AsyncResult
from django.conf import settings
from django.utils import timezone

from queueing import operations, sweep
from queueing.models import FailedJob
from tests import workflow_tasks as wt
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


def result_backend_url() -> str:
    """A real result backend of the test run's own: TEST_RESULT_BACKEND, else the test Redis db."""
    return os.environ.get("TEST_RESULT_BACKEND") or settings.REDIS_URL


def _forget_backend(app: Celery) -> None:
    app._backend_cache = None  # a thread-safe backend is cached app-wide, the others per thread
    if hasattr(app._local, "backend"):
        del app._local.backend


@pytest.fixture
def results(celery_app: Celery) -> Iterator[Celery]:
    """Results stored in a real backend for this test (the worker started after this reads it too)."""
    before = celery_app.conf.result_backend
    celery_app.conf.result_backend = result_backend_url()
    _forget_backend(celery_app)
    yield celery_app
    celery_app.conf.result_backend = before
    _forget_backend(celery_app)


@pytest.fixture
def outage(broker: Any) -> Iterator[Any]:
    """``outage.start(key, name)`` / ``outage.end(key, name)``: the service step ``name`` calls is down, then back."""

    class Outage:
        def start(self, key: str, name: str) -> None:
            wt.store().set(f"down:{key}:{name}", 1)

        def end(self, key: str, name: str) -> None:
            wt.store().delete(f"down:{key}:{name}")

    yield Outage()


def _key() -> str:
    return uuid.uuid4().hex


def _row(origin_task_id: str) -> FailedJob | None:
    return FailedJob.objects.filter(origin_task_id=origin_task_id).first()


def _settled(origin_task_id: str, *, retry_count: int, status: str) -> Any:
    return wait_for(
        lambda: (j := _row(origin_task_id)) and j.retry_count == retry_count and j.status == status and j,
        what=f"job {origin_task_id} {status} after {retry_count} retries",
    )


def _list(name: str) -> list[str]:
    return [item.decode() for item in wt.store().lrange(name, 0, -1)]


def _quiet(seconds: float = 0.5) -> None:
    """Give a worker the time to do what must not happen (a second run, an early callback)."""
    time.sleep(seconds)


# --- chain -------------------------------------------------------------------------------------------------


def test_a_chain_whose_middle_link_fails_through_an_outage_goes_on_once_after_the_recovery(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    # Given a chain of three whose middle link calls a service that is down
    middle_id, last_id = str(uuid.uuid4()), str(uuid.uuid4())
    outage.start(key, "second")
    workflow = chain(
        wt.step.si(key, "first"),
        wt.step.si(key, "second").set(task_id=middle_id),
        wt.step.si(key, "third").set(task_id=last_id),
    ).apply_async()
    assert workflow.id == last_id

    # When the middle link fails its immediate retries and is recorded
    job = _settled(middle_id, retry_count=0, status=Status.FAILED)

    # Then, for the workflow, it is pending: the chain waits and nothing is ready
    assert job.options["chain"], "the rest of the chain is kept on the row"
    _quiet()
    assert _list(f"steps:{key}") == ["first"]
    assert not AsyncResult(middle_id, app=results).ready()
    assert not AsyncResult(last_id, app=results).ready()

    # When the sweep re-sends it while the outage lasts, it fails again: still pending
    assert sweep.sweep().sent == 1
    _settled(middle_id, retry_count=1, status=Status.FAILED)
    _quiet()
    assert _list(f"steps:{key}") == ["first"]
    assert not AsyncResult(middle_id, app=results).ready()

    # When the service is back and the sweep re-sends it
    outage.end(key, "second")
    assert sweep.sweep().sent == 1

    # Then the chain goes on from the middle link: the third link runs once, after the recovery
    assert AsyncResult(last_id, app=results).get(timeout=20) == "third"
    _quiet()
    assert _list(f"steps:{key}") == ["first", "second", "third"]
    assert int(wt.store().get(f"runs:{key}:third")) == 1
    assert AsyncResult(middle_id, app=results).get(timeout=5) == "second"
    _settled(middle_id, retry_count=2, status=Status.RESOLVED)


# --- chord -------------------------------------------------------------------------------------------------


def test_a_chord_whose_header_task_fails_and_is_retried_fires_its_body_once(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    # Given a chord of two header tasks, one of which calls a service that is down
    flaky_id = str(uuid.uuid4())
    outage.start(key, "b")
    header = [wt.step.si(key, "a"), wt.step.si(key, "b").set(task_id=flaky_id)]
    body = chord(header, wt.collect.s(key)).apply_async()

    # When that header task fails for good and is recorded
    job = _settled(flaky_id, retry_count=0, status=Status.FAILED)
    assert job.options["chord"] and job.options["group_id"]

    # Then the chord neither fires its body nor errors: it waits
    _quiet()
    assert _list(f"bodies:{key}") == []
    assert not body.ready()

    # When the service is back and the sweep re-sends the header task
    outage.end(key, "b")
    assert sweep.sweep().sent == 1

    # Then the chord counts the part and fires its body once, with both results
    assert body.get(timeout=20) == ["a", "b"]
    _quiet()
    assert _list(f"bodies:{key}") == ["['a', 'b']"]
    _settled(flaky_id, retry_count=1, status=Status.RESOLVED)


def test_a_chord_whose_header_task_is_given_up_errors_without_running_its_body(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    flaky_id = str(uuid.uuid4())
    outage.start(key, "b")
    header = [wt.step.si(key, "a"), wt.step.si(key, "b").set(task_id=flaky_id)]
    body = chord(header, wt.collect.s(key).on_error(wt.note_error.s(key))).apply_async()
    job = _settled(flaky_id, retry_count=0, status=Status.FAILED)
    _quiet()
    assert not body.ready()

    # When an operator gives the header task up
    operations.discard(ids=[job.pk])

    # Then the chord errors: its body never runs, its error callback runs once
    wait_for(lambda: _list(f"errors:{key}"), what="the chord's error callback")
    assert body.state == "FAILURE"
    _quiet()
    assert _list(f"bodies:{key}") == []
    assert _list(f"errors:{key}") == [body.id]


def test_a_group_waits_for_its_retried_member_and_gets_every_result(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    outage.start(key, "b")
    members = group(wt.step.si(key, "a"), wt.step.si(key, "b")).apply_async()
    flaky_id = members.results[1].id
    _settled(flaky_id, retry_count=0, status=Status.FAILED)
    assert not members.ready()

    outage.end(key, "b")
    assert sweep.sweep().sent == 1

    assert members.get(timeout=20) == ["a", "b"]


# --- callbacks ---------------------------------------------------------------------------------------------


def test_a_callback_runs_once_after_the_recovery_never_while_the_job_is_pending(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    outage.start(key, "send")
    # Given a call with a callback (link), to a service that is down
    origin = wt.step.apply_async((key, "send"), link=wt.step.si(key, "callback"))
    job = _settled(origin.id, retry_count=0, status=Status.FAILED)
    assert job.options["link"]
    _quiet()
    assert _list(f"steps:{key}") == []

    # When the service is back and the sweep re-sends the call
    outage.end(key, "send")
    assert sweep.sweep().sent == 1

    # Then the callback runs once, after the call
    wait_for(lambda: len(_list(f"steps:{key}")) == 2, what="the call and its callback")
    _quiet()
    assert _list(f"steps:{key}") == ["send", "callback"]


# --- error callbacks ---------------------------------------------------------------------------------------


def test_an_error_callback_runs_only_when_the_job_dies(
    results: Celery, celery_worker: Any, outage: Any, configure: Any
) -> None:
    configure(MAX_RETRIES=1)
    key = _key()
    outage.start(key, "only")
    # Given a call with an error callback, to a service that stays down
    origin = wt.step.apply_async((key, "only"), link_error=wt.note_error.s(key))

    # When it fails for good and is recorded: no error callback yet, no failure stored
    _settled(origin.id, retry_count=0, status=Status.FAILED)
    _quiet()
    assert _list(f"errors:{key}") == []
    assert not AsyncResult(origin.id, app=results).ready()

    # When its one automatic retry fails too, so that it is dead
    assert sweep.sweep().sent == 1
    job = _settled(origin.id, retry_count=1, status=Status.DEAD)

    # Then the error callback runs, once, for the original call, and the result is failed with the last error
    wait_for(lambda: _list(f"errors:{key}"), what="the error callback")
    _quiet()
    assert _list(f"errors:{key}") == [origin.id]
    failed = AsyncResult(origin.id, app=results)
    assert failed.state == "FAILURE"
    assert "gateway down" in str(failed.result)
    assert job.reason_code == FailedJob.Reason.RETRIES_USED_UP


def test_a_discarded_job_runs_its_error_callback_once_and_fails_its_result(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    outage.start(key, "only")
    origin = wt.step.apply_async((key, "only"), link_error=wt.note_error.s(key))
    job = _settled(origin.id, retry_count=0, status=Status.FAILED)
    assert _list(f"errors:{key}") == []

    # When an operator gives the job up
    operations.discard(ids=[job.pk])

    # Then the workflow sees the failure then
    wait_for(lambda: _list(f"errors:{key}"), what="the error callback")
    assert AsyncResult(origin.id, app=results).state == "FAILURE"
    _quiet()
    assert _list(f"errors:{key}") == [origin.id]


def test_a_permanent_error_fails_the_workflow_at_once(results: Celery, celery_worker: Any) -> None:
    key = _key()
    origin = wt.give_up.apply_async((key,), link_error=wt.note_error.s(key))

    wait_for(lambda: _list(f"errors:{key}"), what="the error callback")
    assert _row(origin.id).status == Status.DEAD
    assert AsyncResult(origin.id, app=results).state == "FAILURE"


# --- results -----------------------------------------------------------------------------------------------


def test_the_original_id_gives_the_result_of_the_clone(results: Celery, celery_worker: Any, outage: Any) -> None:
    key = _key()
    outage.start(key, "describe")
    origin = wt.describe_call.apply_async(
        (key,),
        headers={"order_ref": "order-42"},
        time_limit=300,
        soft_time_limit=240,
        priority=3,
        expires=timezone.now() + timedelta(hours=1),
    )
    job = _settled(origin.id, retry_count=0, status=Status.FAILED)
    assert not origin.ready()

    outage.end(key, "describe")
    assert sweep.sweep().sent == 1

    # The caller's AsyncResult (the original id) gets the clone's result; the clone was the same call
    seen = origin.get(timeout=20)
    assert seen["id"] == origin.id
    assert seen["root_id"] == origin.id
    assert seen["timelimit"] == [300, 240]
    assert seen["order_ref"] == "order-42"
    assert job.options["headers"] == {"order_ref": "order-42"}
    assert seen["priority"] == 3
    assert seen["expires"] == job.options["expires"]
    _settled(origin.id, retry_count=1, status=Status.RESOLVED)  # the result is stored before on_success


# --- expiry ------------------------------------------------------------------------------------------------


def test_an_expired_job_is_not_sent_again_and_ends_with_that_reason(
    results: Celery, celery_worker: Any, outage: Any
) -> None:
    key = _key()
    outage.start(key, "late")
    deadline = timezone.now() + timedelta(minutes=5)
    origin = wt.step.apply_async((key, "late"), expires=deadline, link_error=wt.note_error.s(key))
    _settled(origin.id, retry_count=0, status=Status.FAILED)
    runs = int(wt.store().get(f"runs:{key}:late"))

    # When the sweep runs after the call's deadline
    outage.end(key, "late")
    outcome = sweep.sweep(now=deadline + timedelta(seconds=1))

    # Then the job is not sent: it is dead, expired, its retry given back, and its workflow failed
    assert outcome.sent == 0
    job = _row(origin.id)
    assert job.status == Status.DEAD
    assert job.reason_code == FailedJob.Reason.EXPIRED
    assert "expired" in job.status_reason
    assert job.retry_count == 0
    wait_for(lambda: _list(f"errors:{key}"), what="the error callback")
    _quiet()
    assert int(wt.store().get(f"runs:{key}:late")) == runs
