"""The call kept on the row and sent again (queueing/workflow.py, claims.publish), without a worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from celery.signals import before_task_publish

from queueing import sweep, workflow
from queueing.models import FailedJob
from tests import workflow_tasks as wt

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status

#: A call as ``capture_call`` stores it: every part of a workflow, all JSON.
STORED: dict[str, Any] = {
    "root_id": "root-1",
    "parent_id": "parent-1",
    "group_id": "group-1",
    "group_index": 1,
    "chord": {"task": "tests.workflow_tasks.collect", "args": [], "kwargs": {"key": "k"}, "options": {}},
    "chain": [{"task": "tests.workflow_tasks.step", "args": ["k", "third"], "kwargs": {}, "options": {}}],
    "link": [{"task": "tests.workflow_tasks.note_error", "args": ["ok"], "kwargs": {}, "options": {}}],
    "link_error": [{"task": "tests.workflow_tasks.note_error", "args": ["k"], "kwargs": {}, "options": {}}],
    "time_limit": 300,
    "soft_time_limit": 240,
    "priority": 3,
    "ignore_result": False,
    "headers": {"order_ref": "order-42"},
}


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The messages published while the test runs (headers and body), read from Celery's signal: any broker."""
    seen: list[dict[str, Any]] = []

    def note(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append({"headers": dict(headers or {}), "body": body})

    before_task_publish.connect(note, weak=False)
    yield seen
    before_task_publish.disconnect(note)


def test_capture_keeps_the_whole_call_as_json_and_names_what_json_cannot_hold(celery_app: Celery) -> None:
    request = Context(
        id="t-1",
        root_id="root-1",
        parent_id="parent-1",
        group="group-1",
        group_index=0,
        chord=STORED["chord"],
        chain=STORED["chain"],
        callbacks=STORED["link"],
        errbacks=STORED["link_error"],
        expires="2030-01-01T00:00:00+00:00",
        timelimit=[300, 240],
        delivery_info={"priority": 3, "exchange": "", "routing_key": "default"},
        order_ref="order-42",
        not_json=object(),
        queueing_job_id=7,
    )

    call = workflow.capture_call(wt.step, request)

    assert call["root_id"] == "root-1" and call["parent_id"] == "parent-1"
    assert (call["group_id"], call["group_index"]) == ("group-1", 0)
    assert call["chord"] == STORED["chord"] and call["chain"] == STORED["chain"]
    assert call["link"] == STORED["link"] and call["link_error"] == STORED["link_error"]
    assert call["expires"] == "2030-01-01T00:00:00+00:00"
    assert (call["time_limit"], call["soft_time_limit"]) == (300, 240)
    assert call["priority"] == 3 and call["routing_key"] == "default" and "exchange" not in call
    assert call["ignore_result"] is False  # the task keeps its results
    # the caller's own headers, not the retry system's; what JSON cannot hold is named, never stored
    assert "queueing_job_id" not in call.get("headers", {})
    assert call["dropped"] == ["headers"]
    json.dumps(call)


def test_the_sweep_sends_the_stored_call_again_under_the_original_id(
    make_failed_job: Any, published: list[dict[str, Any]], now: datetime
) -> None:
    job = make_failed_job(task_name="tests.workflow_tasks.step", args=["k", "second"], options=STORED)

    assert sweep.sweep(now=now).sent == 1

    [message] = published
    headers, (args, _kwargs, embed) = message["headers"], message["body"]
    job.refresh_from_db()
    assert headers["id"] == job.origin_task_id == job.clone_task_id()
    assert (headers["root_id"], headers["parent_id"]) == ("root-1", "parent-1")
    assert (headers["group"], headers["group_index"]) == ("group-1", 1)
    assert headers["timelimit"] == [300, 240]
    assert headers["ignore_result"] is False
    assert headers["order_ref"] == "order-42"
    assert headers["queueing_job_id"] == job.pk and headers["queueing_claim"] == str(job.claim_token)
    assert args == ["k", "second"]
    assert embed["chain"] == STORED["chain"]
    assert embed["callbacks"] == STORED["link"] and embed["errbacks"] == STORED["link_error"]
    assert embed["chord"]["task"] == "tests.workflow_tasks.collect"


def test_a_row_stored_before_workflows_were_kept_is_sent_as_before(
    make_failed_job: Any, published: list[dict[str, Any]], now: datetime
) -> None:
    make_failed_job(options={"priority": 5})

    assert sweep.sweep(now=now).sent == 1

    [message] = published
    assert message["body"][2]["callbacks"] is None and message["body"][2]["errbacks"] is None
    assert message["body"][2]["chain"] is None


def test_a_job_whose_call_expired_is_dead_with_that_reason_and_never_sent(
    make_failed_job: Any, published: list[dict[str, Any]], now: datetime
) -> None:
    job = make_failed_job(options={"expires": (now - timedelta(seconds=1)).isoformat()})
    later = make_failed_job(options={"expires": (now + timedelta(hours=1)).isoformat()})

    assert sweep.sweep(now=now).sent == 1

    assert [m["headers"]["id"] for m in published] == [later.origin_task_id]
    job.refresh_from_db()
    assert (job.status, job.reason_code, job.retry_count) == (Status.DEAD, FailedJob.Reason.EXPIRED, 0)
    assert job.dead_at == now


def test_telling_a_workflow_it_failed_does_nothing_when_nothing_waits(make_failed_job: Any) -> None:
    job = make_failed_job(options={"priority": 3})

    assert not workflow.has_workflow(job.options)
    workflow.fail_workflow(job)  # no backend call, no error


def test_the_failure_context_is_the_original_request(make_failed_job: Any) -> None:
    job = make_failed_job(options=STORED, exception_class="tests.workflow_tasks.GatewayDown")

    context = workflow.failure_context(job)
    exc = workflow.stored_exception(job)

    assert context.id == job.origin_task_id and context.group == "group-1" and context.chord == STORED["chord"]
    assert context.errbacks == STORED["link_error"] and context.chain == STORED["chain"]
    assert type(exc).__name__ == "GatewayDown" and str(exc) == "boom"


# --- the failure side of a job given up while no call of it runs ---------------------------------------------

#: A stored call with only an error callback: telling its workflow publishes the callback, nothing else.
WITH_ERRBACK: dict[str, Any] = {"link_error": STORED["link_error"]}


def _errbacks(published: list[dict[str, Any]]) -> list[list[Any]]:
    """The error callbacks sent: their args (the failed task's id first)."""
    return [list(m["body"][0]) for m in published if m["headers"]["task"] == "tests.workflow_tasks.note_error"]


def test_a_job_whose_last_retry_vanished_tells_its_workflow_once(
    make_failed_job: Any, published: list[dict[str, Any]], now: datetime
) -> None:
    import uuid

    # Given a job on its last automatic retry, whose clone started and never reported back
    job = make_failed_job(
        status=Status.RETRYING,
        claim_token=uuid.uuid4(),
        claimed_by=FailedJob.ClaimedBy.SWEEP,
        claimed_from=Status.FAILED,
        retry_count=3,
        retry_started_at=now - timedelta(hours=1),
        lease_expires_at=now - timedelta(seconds=1),
        options=WITH_ERRBACK,
    )

    sweep.sweep(now=now)

    job.refresh_from_db()
    assert job.status == Status.DEAD
    assert _errbacks(published) == [[job.origin_task_id, "k"]]
    assert sweep.sweep(now=now).sent == 0
    assert len(_errbacks(published)) == 1


def test_marking_a_failed_job_dead_tells_its_workflow_and_discarding_it_then_does_not_again(
    make_failed_job: Any, published: list[dict[str, Any]]
) -> None:
    from queueing import operations

    job = make_failed_job(options=WITH_ERRBACK)

    operations.mark_dead(ids=[job.pk])
    operations.discard(ids=[job.pk])

    assert _errbacks(published) == [[job.origin_task_id, "k"]]


def test_a_job_still_to_be_retried_tells_its_workflow_nothing(
    make_failed_job: Any, published: list[dict[str, Any]], now: datetime
) -> None:
    job = make_failed_job(task_name="tests.workflow_tasks.step", args=["k", "x"], options=WITH_ERRBACK)

    sweep.sweep(now=now)

    assert _errbacks(published) == []
    assert [m["headers"]["id"] for m in published] == [job.origin_task_id]
