"""Bulk retries that are safe (issue 8 item 6) and large ones in the background (issue 10): the filter, the dry
run per group, the throttle, what was not sent and why, 202 with the progress, the command's report."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from queueing import bulkops, groups, operations
from queueing.models import BulkOperation, FailedJob, FailureGroup

Status = FailedJob.Status
pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "bulk-token"


def post(client: Client, body: dict[str, Any]) -> Any:
    return client.post(
        "/api/queue/retry-all-failed",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def _group(exception_class: str, message: str, **state: Any) -> FailureGroup:
    """The failure group of ``tests.tasks.succeed`` failing with this error, in ``state`` (closed by default)."""
    cause = groups.group_for(
        task_name="tests.tasks.succeed",
        queue="default",
        exception_class=exception_class,
        message=message,
        now=timezone.now(),
    )
    FailureGroup.objects.filter(pk=cause.group_id).update(**state)
    return FailureGroup.objects.get(pk=cause.group_id)


@pytest.fixture
def mixed_selection(make_failed_job: Any) -> dict[str, Any]:
    """Jobs of every kind a bulk retry meets: sendable ones in an open group (one expired, one whose stored
    call is corrupted, one whose arguments no longer fit), one of a paused group, one of an unknown task."""
    now = timezone.now()
    gateway = _group("app.GatewayDown", "gateway answered 503", state="open", open_until=now + timedelta(minutes=5))
    paused = _group("app.Timeout", "timed out after 5 s", paused_at=now)
    for _ in range(2):
        make_failed_job(group=gateway, exception_class="app.GatewayDown")
    make_failed_job(group=gateway, exception_class="app.GatewayDown", options={"expires": "2020-01-01T00:00:00+00:00"})
    make_failed_job(group=gateway, exception_class="app.GatewayDown", args={"not": "a list"})
    make_failed_job(group=gateway, exception_class="app.GatewayDown", kwargs={"argument_removed_since": 1})
    make_failed_job(group=paused, exception_class="app.Timeout", status=Status.DEAD)
    make_failed_job(task_name="tests.tasks.gone", exception_class="app.Timeout")
    return {"gateway": gateway, "paused": paused}


def test_a_dry_run_lists_per_failure_group_what_would_be_sent_and_what_not_and_why_and_sends_nothing(
    broker: redis.Redis, mixed_selection: dict[str, Any]
) -> None:
    gateway, paused = mixed_selection["gateway"], mixed_selection["paused"]

    outcome = operations.retry_now(queue="default", dry_run=True)

    # Then each failure group is listed with its breaker, and what would (not) be sent and why
    assert (outcome.total, outcome.retried, outcome.dry_run) == (7, 0, True)
    listed = {plan.group_id: plan.as_dict() for plan in outcome.groups}
    assert listed[gateway.pk] == {
        "group": gateway.pk,
        "taskName": "tests.tasks.succeed",
        "exceptionClass": "app.GatewayDown",
        "messagePattern": "gateway answered <n>",
        "queue": "default",
        "breaker": "open",
        "breakerText": f"open until {gateway.open_until.isoformat(timespec='seconds')}",
        "autoRetryPaused": False,
        "jobs": 5,
        "wouldSend": 2,
        "notSent": {"unsendable": 2, "expired": 1},
    }
    assert (listed[paused.pk]["breaker"], listed[paused.pk]["autoRetryPaused"]) == ("closed", True)
    assert (listed[paused.pk]["wouldSend"], listed[paused.pk]["notSent"]) == (1, {})
    assert (listed[None]["taskName"], listed[None]["wouldSend"]) == ("tests.tasks.gone", 0)
    assert listed[None]["notSent"] == {"unknownTask": 1}
    report = outcome.report()
    assert (report["total"], report["retried"], report["wouldSend"]) == (7, 0, 3)
    assert report["notSent"] == {"unknownTask": 1, "unsendable": 2, "refused": 0, "expired": 1, "leftAlone": 0}
    # And nothing was sent or changed
    assert broker.llen("default") == 0
    assert FailedJob.objects.filter(status=Status.RETRYING).count() == 0
    assert FailedJob.objects.filter(status=Status.DEAD).count() == 1


def test_a_run_does_what_its_dry_run_said(broker: redis.Redis, mixed_selection: dict[str, Any]) -> None:
    dry = operations.retry_now(queue="default", dry_run=True).report()

    real = operations.retry_now(queue="default").report()

    # An operator's retry sends whatever the breaker and the pauses (they hold back the sweep only)
    assert real["retried"] == dry["wouldSend"] == broker.llen("default") == 3
    assert real["notSent"] == dry["notSent"]


def test_a_bulk_retry_takes_the_filter_and_reports_what_it_did_not_send_and_why(
    broker: redis.Redis, make_failed_job: Any
) -> None:
    timeouts = [make_failed_job(queue="default", exception_class="app.Timeout") for _ in range(2)]
    make_failed_job(queue="default", exception_class="app.Refused")
    make_failed_job(queue="default", exception_class="app.Timeout", task_name="tests.tasks.gone")

    outcome = operations.retry_now(selection=operations.Selection(queue="default", exception_class="app.Timeout"))

    assert (outcome.total, outcome.retried) == (3, 2)
    assert sorted(outcome.retried_ids) == sorted(job.pk for job in timeouts)
    assert outcome.report()["notSent"] == {
        "unknownTask": 1,
        "unsendable": 0,
        "refused": 0,
        "expired": 0,
        "leftAlone": 0,
    }
    assert outcome.as_dict() == {"total": 3, "retried": 2}
    assert FailedJob.objects.get(exception_class="app.Refused").status == Status.FAILED


def test_a_throttled_bulk_retry_sends_no_faster_than_its_rate(broker: redis.Redis, make_failed_job: Any) -> None:
    import time

    for _ in range(6):
        make_failed_job(queue="default")
    progress: list[tuple[int, int]] = []

    started = time.monotonic()
    outcome = operations.retry_now(
        queue="default", rate_per_second=10, on_progress=lambda s, t: progress.append((s, t))
    )

    assert outcome.retried == 6
    assert time.monotonic() - started >= 0.5  # 6 jobs at 10 per second: the last batch waits
    assert progress[-1] == (6, 6)


def test_the_api_answers_the_seeds_shape_when_all_went_and_says_why_when_some_did_not(
    client: Client, configure: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    configure(API_TOKEN=TOKEN)
    make_failed_job(queue="default")
    make_failed_job(queue="default", task_name="tests.tasks.gone")

    dry = post(client, {"queueName": "default", "dryRun": True}).json()
    real = post(client, {"queueName": "default"}).json()

    assert dry["dryRun"] is True and (dry["total"], dry["retried"], dry["wouldSend"]) == (2, 0, 1)
    assert sorted((g["taskName"], g["wouldSend"], g["notSent"]) for g in dry["groups"]) == [
        ("tests.tasks.gone", 0, {"unknownTask": 1}),
        ("tests.tasks.succeed", 1, {}),
    ]
    assert dry["notSent"]["unknownTask"] == 1
    assert real == {
        "success": True,
        "queueName": "default",
        "total": 2,
        "retried": 1,
        "notSent": {"unknownTask": 1, "unsendable": 0, "refused": 0, "expired": 0, "leftAlone": 0},
    }


def test_a_large_bulk_retry_answers_202_at_once_and_its_progress_is_readable(
    client: Client, configure: Any, broker: redis.Redis, make_failed_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given more jobs than are sent while the caller waits
    configure(API_TOKEN=TOKEN)
    monkeypatch.setattr(bulkops, "SYNC_MAX_JOBS", 2)
    sent_tasks: list[int] = []
    monkeypatch.setattr(bulkops.run_bulk_retry, "delay", lambda operation_id: sent_tasks.append(operation_id))
    for _ in range(3):
        make_failed_job(queue="default")

    # When the API is asked to retry them all
    response = post(client, {"queueName": "default"})

    # Then it answers 202 with where to read the progress, and sends nothing itself
    assert response.status_code == 202
    body = response.json()
    assert body["total"] == 3 and body["progressUrl"] == f"/api/queue/operations/{body['operationId']}"
    assert sent_tasks == [body["operationId"]]
    assert broker.llen("default") == 0
    queued = client.get(body["progressUrl"], headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert (queued["state"], queued["sent"], queued["total"]) == ("queued", 0, 3)

    # When a worker runs the operation (here in-process), then it is done with its report, once
    bulkops.run(body["operationId"])
    assert bulkops.run(body["operationId"]) is None
    done = client.get(body["progressUrl"], headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert (done["state"], done["sent"], done["total"]) == ("done", 3, 3)
    assert done["report"]["retried"] == 3
    assert broker.llen("default") == 3
    assert BulkOperation.objects.get().finished_at is not None


def test_an_unknown_operation_is_a_404(client: Client, configure: Any) -> None:
    configure(API_TOKEN=TOKEN)
    response = client.get("/api/queue/operations/999", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404


def test_the_command_dry_run_lists_groups_and_the_run_says_what_was_not_sent(
    broker: redis.Redis, make_failed_job: Any
) -> None:
    make_failed_job(queue="default", exception_class="app.Timeout")
    make_failed_job(queue="default", task_name="tests.tasks.gone", exception_class="app.Timeout")

    dry, real = StringIO(), StringIO()
    call_command("retry_all_failed", "--queue", "default", "--dry-run", stdout=dry)
    call_command("retry_all_failed", "--queue", "default", "--exception", "app.Timeout", stdout=real)

    assert "found 2 failed or dead job(s); dry run, none sent; 1 would be sent" in dry.getvalue()
    assert (
        "no group (no breaker) queue default  tests.tasks.gone  app.Timeout: 1 found, 0 would be sent; would not be "
        "sent: 1 task not registered" in dry.getvalue()
    )
    assert "1 would not be sent because the task is not registered" in dry.getvalue()
    assert "found 2 failed or dead job(s), sent 1" in real.getvalue()
    assert "1 not sent because the task is not registered" in real.getvalue()


def test_the_command_dry_run_of_one_group_shows_its_breaker_and_what_would_not_be_sent(
    broker: redis.Redis, mixed_selection: dict[str, Any]
) -> None:
    gateway = mixed_selection["gateway"]
    out = StringIO()

    call_command("retry_all_failed", "--group", str(gateway.pk), "--dry-run", stdout=out)

    text = out.getvalue()
    assert f"failure group {gateway.pk}: found 5 failed or dead job(s); dry run, none sent; 2 would be sent" in text
    assert f"group #{gateway.pk} (open until " in text
    assert "tests.tasks.succeed  app.GatewayDown: gateway answered <n>: 5 found, 2 would be sent" in text
    assert "would not be sent: 2 call unsendable, 1 call expired" in text
    assert "2 would not be sent because the stored call cannot be sent as it stands" in text
    assert broker.llen("default") == 0


def test_the_api_dry_run_of_a_group_lists_it_and_a_group_filter_narrows_a_queues_retry(
    client: Client, configure: Any, broker: redis.Redis, mixed_selection: dict[str, Any]
) -> None:
    configure(API_TOKEN=TOKEN)
    gateway, paused = mixed_selection["gateway"], mixed_selection["paused"]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    dry = client.post(
        f"/api/queue/groups/{gateway.pk}/retry", {"dryRun": True}, content_type="application/json", headers=auth
    ).json()
    real = post(client, {"queueName": "default", "group": paused.pk, "ratePerSecond": 100})

    assert (dry["group"], dry["total"], dry["retried"], dry["wouldSend"]) == (gateway.pk, 5, 0, 2)
    [listed] = dry["groups"]
    assert (listed["group"], listed["breaker"], listed["notSent"]) == (
        gateway.pk,
        "open",
        {"unsendable": 2, "expired": 1},
    )
    assert dry["notSent"] == {"unknownTask": 0, "unsendable": 2, "refused": 0, "expired": 1, "leftAlone": 0}
    assert real.json() == {"success": True, "queueName": "default", "total": 1, "retried": 1}
    assert broker.llen("default") == 1


def test_the_python_api_reports_the_dry_run_per_group_when_asked(
    broker: redis.Redis, mixed_selection: dict[str, Any]
) -> None:
    from queueing.retry import get_retry_manager

    manager = get_retry_manager()

    report = manager.retry_all_failed("default", dry_run=True, report=True)
    plain = manager.retry_all_failed("default", exception_class="app.Timeout")

    assert (report["total"], report["wouldSend"], len(report["groups"])) == (7, 3, 3)
    assert report["notSent"]["unsendable"] == 2
    assert plain == {"total": 2, "retried": 1}  # the paused group's dead job; the unknown task's is not sent
