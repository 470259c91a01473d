"""Bulk retries that are safe (issue 8 item 6) and large ones in the background (issue 10): the filter, the dry
run per group, the throttle, what was not sent and why, 202 with the progress, the command's report."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.test import Client

from queueing import bulkops, operations
from queueing.models import BulkOperation, FailedJob

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


def test_a_dry_run_lists_what_would_be_sent_per_task_and_error_and_sends_nothing(
    broker: redis.Redis, make_failed_job: Any
) -> None:
    # Given three jobs of one task and error, one of another error, one of a task this project does not know
    for _ in range(3):
        make_failed_job(queue="default", exception_class="app.Timeout")
    make_failed_job(queue="default", exception_class="app.Refused", status=Status.DEAD)
    make_failed_job(queue="default", task_name="tests.tasks.gone", exception_class="app.Timeout")

    outcome = operations.retry_now(queue="default", dry_run=True)

    assert (outcome.total, outcome.retried, outcome.dry_run) == (5, 0, True)
    groups = [group.as_dict() for group in outcome.groups]
    assert groups[0] == {
        "taskName": "tests.tasks.succeed",
        "exceptionClass": "app.Timeout",
        "jobs": 3,
        "wouldSend": 3,
        "notSentBecause": None,
    }
    assert {"taskName": "tests.tasks.gone", "exceptionClass": "app.Timeout", "jobs": 1, "wouldSend": 0,
            "notSentBecause": "unknown task"} in groups  # fmt: skip
    assert broker.llen("default") == 0
    assert FailedJob.objects.filter(status=Status.RETRYING).count() == 0


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

    assert dry["dryRun"] is True and (dry["total"], dry["retried"]) == (2, 0)
    assert [g["jobs"] for g in dry["groups"]] == [1, 1]
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

    assert "found 2 failed or dead job(s); dry run, none sent" in dry.getvalue()
    assert "tests.tasks.gone  app.Timeout  (would NOT be sent: unknown task)" in dry.getvalue()
    assert "found 2 failed or dead job(s), sent 1" in real.getvalue()
    assert "1 not sent because their task is not registered" in real.getvalue()
