"""Failure groups and pauses where an operator looks: the status API, the group and pause endpoints,
``check_queue``, ``/metrics``, ``retry_all_failed --group`` and ``pause_auto_retry``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import Client

from queueing import sweep
from queueing.models import FailedJob, FailureGroup, QueuePause
from tests.test_groups import SECOND, record

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "groups-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Status = FailedJob.Status


@pytest.fixture(autouse=True)
def settings_for_groups(configure: Any) -> None:
    configure(
        API_TOKEN=TOKEN,
        STATUS_COUNTS_CACHE_SECONDS=0,
        STATUS_INSPECT_TIMEOUT_SECONDS=0.2,
        RETRY_DELAY=60,
        LEASE_SECONDS=3600,
        BREAKER_CANARIES=2,
    )


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json", headers=AUTH)


def an_open_group(now: datetime, jobs: int = 4) -> FailureGroup:
    for n in range(jobs):
        record(n, at=now)
    return FailureGroup.objects.get()


def test_the_status_shows_each_failing_group_with_its_state_counts_and_share(
    client: Client, broker: redis.Redis, now: datetime
) -> None:
    # Given four jobs of one cause, probed: two canaries out, the group probing
    group = an_open_group(now)
    sweep.sweep(now=now + 61 * SECOND)

    answer = client.get("/api/queue/status", headers=AUTH).json()

    [shown] = answer["groups"]
    assert shown["id"] == group.pk
    assert shown["state"] == "probing" and shown["stateText"].startswith("probing until")
    assert (shown["task"], shown["queue"]) == ("tests.tasks.succeed", "default")
    assert shown["messagePattern"] == "gateway answered <n> for <n>"
    assert shown["jobs"]["failed"] == 2 and shown["jobs"]["retrying"] == 2
    assert (shown["failures"], shown["probes"], shown["shareStillFailing"]) == (4, 1, 1.0)
    assert answer["autoRetryPaused"] == {"queues": [], "groups": []}


def test_a_group_is_paused_resumed_retried_and_discarded_through_the_api(
    client: Client, broker: redis.Redis, now: datetime
) -> None:
    group = an_open_group(now, jobs=3)
    base = f"/api/queue/groups/{group.pk}"

    paused = post(client, f"{base}/pause", {"reason": "vendor incident"})
    assert paused.status_code == 200 and paused.json()["changed"] is True
    assert post(client, f"{base}/pause", {}).json()["changed"] is False
    assert client.get("/api/queue/status", headers=AUTH).json()["autoRetryPaused"]["groups"] == [group.pk]
    assert post(client, f"{base}/resume", {}).json() == {
        "success": True,
        "paused": False,
        "changed": True,
        "group": group.pk,
        "queueName": None,
    }

    retried = post(client, f"{base}/retry", {})
    assert retried.json() == {"success": True, "group": group.pk, "total": 3, "retried": 3}

    FailedJob.objects.update(status=Status.DEAD, claim_token=None)
    discarded = post(client, f"{base}/discard", {"reason": "wrong template"})
    assert discarded.json() == {"success": True, "group": group.pk, "discarded": 3}
    assert set(FailedJob.objects.values_list("status", flat=True)) == {Status.DISCARDED}

    listed = client.get("/api/queue/groups?all=true", headers=AUTH).json()
    assert [g["id"] for g in listed["groups"]] == [group.pk]
    assert listed["groups"][0]["shareStillFailing"] == 0.0
    assert client.get("/api/queue/groups", headers=AUTH).json()["groups"] == []  # closed and nothing failing


def test_an_unknown_group_is_a_404_naming_where_to_look(client: Client) -> None:
    response = post(client, "/api/queue/groups/999/retry", {})
    assert response.status_code == 404
    assert "unknown failure group 999" in response.json()["error"]


def test_a_queue_is_paused_and_resumed_through_the_api(client: Client, broker: redis.Redis) -> None:
    paused = post(client, "/api/queue/pause-auto-retry", {"queueName": "whatsapp-send", "reason": "maintenance"})
    assert paused.json() == {
        "success": True,
        "paused": True,
        "changed": True,
        "group": None,
        "queueName": "whatsapp-send",
    }
    assert QueuePause.objects.get().reason == "maintenance"
    assert client.get("/api/queue/status", headers=AUTH).json()["autoRetryPaused"]["queues"] == ["whatsapp-send"]
    assert post(client, "/api/queue/resume-auto-retry", {"queueName": "whatsapp-send"}).json()["changed"] is True
    assert not QueuePause.objects.exists()
    unknown = post(client, "/api/queue/pause-auto-retry", {"queueName": "whatsap-send"})
    assert unknown.status_code == 404 and "known queues" in unknown.json()["error"]


def test_check_queue_lists_the_failing_groups_and_the_pauses(broker: redis.Redis, now: datetime) -> None:
    group = an_open_group(now)
    call_command("pause_auto_retry", "--queue", "default", stdout=StringIO())

    out = StringIO()
    call_command("check_queue", stdout=out)
    text = out.getvalue()

    assert "Failure groups:" in text
    assert f"#{group.pk} open until" in text
    assert "GatewayUnavailable: gateway answered <n> for <n>" in text
    assert "(4 still failing of 4, 100%)" in text
    assert "Automatic retries paused: queue default" in text


def test_metrics_show_each_groups_state_and_the_paused_queues(
    client: Client, broker: redis.Redis, now: datetime
) -> None:
    group = an_open_group(now)
    call_command("pause_auto_retry", "--group", str(group.pk), stdout=StringIO())
    call_command("pause_auto_retry", "--queue", "whatsapp-send", stdout=StringIO())

    text = client.get("/metrics", headers=AUTH).content.decode()

    labels = f'group="{group.pk}",state="open",task="tests.tasks.succeed"'
    assert f"queueing_failure_group_state{{{labels}}} 1.0" in text
    assert f'queueing_failure_group_jobs{{group="{group.pk}",task="tests.tasks.succeed"}} 4.0' in text
    assert 'queueing_auto_retry_paused{queue="whatsapp-send"} 1.0' in text
    assert 'queueing_auto_retry_paused{queue="default"} 0.0' in text


def test_retry_all_failed_takes_one_group(broker: redis.Redis, now: datetime) -> None:
    group = an_open_group(now, jobs=2)
    record(7, at=now, message="another cause")

    out = StringIO()
    call_command("retry_all_failed", "--group", str(group.pk), stdout=out)

    assert f"failure group {group.pk}: found 2 failed or dead job(s), sent 2" in out.getvalue()
    assert FailedJob.objects.filter(status=Status.RETRYING).count() == 2
    with pytest.raises(CommandError, match="unknown failure group 999"):
        call_command("retry_all_failed", "--group", "999", stdout=StringIO())


def test_pause_auto_retry_pauses_resumes_and_tells_what_is_paused(broker: redis.Redis, now: datetime) -> None:
    group = an_open_group(now, jobs=1)

    def run(*args: str) -> str:
        out = StringIO()
        call_command("pause_auto_retry", *args, stdout=out)
        return out.getvalue().strip()

    assert run("--queue", "default", "--reason", "deploy") == "automatic retries of queue 'default' paused"
    assert run("--queue", "default") == "automatic retries of queue 'default' were already paused"
    assert run("--group", str(group.pk)) == f"automatic retries of failure group {group.pk} paused"
    assert run() == f"automatic retries paused: queue default, group #{group.pk}"
    assert run("--queue", "default", "--resume") == "automatic retries of queue 'default' resumed"
    assert run("--group", str(group.pk), "--resume") == f"automatic retries of failure group {group.pk} resumed"
    assert run() == "automatic retries paused: nothing"
    with pytest.raises(CommandError, match="known queues"):
        run("--queue", "nope")
    assert FailureGroup.objects.get().open_until == now + timedelta(seconds=60)
