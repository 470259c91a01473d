"""The admin's grouped view (failure groups and their breakers) and the paused queues."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from queueing import sweep
from queueing.models import FailedJob, FailureGroup, QueuePause
from tests.test_groups import SECOND, record

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


@pytest.fixture(autouse=True)
def settings_for_groups(configure: Any) -> None:
    configure(RETRY_DELAY=60, LEASE_SECONDS=3600, BREAKER_CANARIES=2)


@pytest.fixture
def operator() -> Client:
    user = User.objects.create_user("operator", is_staff=True)
    codenames = ["view_failuregroup", "view_failedjob", "view_queuepause", "add_queuepause"]
    codenames += ["retry_failedjob", "discard_failedjob", "pause_retries"]  # each verb its own permission
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="queueing", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def act(client: Client, action: str, ids: list[int]) -> Any:
    url = reverse("admin:queueing_failuregroup_changelist")
    return client.post(url, {"action": action, "_selected_action": ids, "index": "0"}, follow=True)


def test_the_grouped_view_shows_each_cause_with_its_breaker_and_links_to_its_jobs(
    operator: Client, broker: redis.Redis, now: datetime
) -> None:
    for n in range(4):
        record(n, at=now)
    record(9, at=now, message="another cause")
    sweep.sweep(now=now + 61 * SECOND)
    group = FailureGroup.objects.get(message_pattern="gateway answered <n> for <n>")

    page = operator.get(reverse("admin:queueing_failuregroup_changelist")).content.decode()

    assert "GatewayUnavailable: gateway answered &lt;n&gt; for &lt;n&gt;" in page
    assert "probing until" in page
    assert f"?group__id__exact={group.pk}" in page and "4 of 4" in page and "100%" in page
    jobs = operator.get(reverse("admin:queueing_failedjob_changelist") + f"?group__id__exact={group.pk}")
    assert jobs.status_code == 200
    assert jobs.context["cl"].result_count == 4
    detail = operator.get(reverse("admin:queueing_failuregroup_change", args=[group.pk])).content.decode()
    assert "failed 2, retrying 2" in detail


def test_groups_are_paused_resumed_retried_and_discarded_from_the_admin(
    operator: Client, broker: redis.Redis, now: datetime
) -> None:
    for n in range(3):
        record(n, at=now)
    group = FailureGroup.objects.get()

    assert "Paused the automatic retries of 1 group(s)." in act(operator, "pause_groups", [group.pk]).content.decode()
    group.refresh_from_db()
    assert group.paused_at is not None
    assert "Resumed" in act(operator, "resume_groups", [group.pk]).content.decode()
    confirmation = act(operator, "retry_groups", [group.pk]).content.decode()
    assert "Dry run, per failure group" in confirmation and f"<td>#{group.pk}</td>" in confirmation
    assert FailedJob.objects.filter(status=Status.RETRYING).count() == 0  # nothing sent before confirming
    confirmed = operator.post(
        reverse("admin:queueing_failuregroup_changelist"),
        {"action": "retry_groups", "_selected_action": [group.pk], "post": "yes"},
        follow=True,
    )
    assert "3 jobs sent again." in confirmed.content.decode()
    assert FailedJob.objects.filter(status=Status.RETRYING).count() == 3

    FailedJob.objects.update(status=Status.DEAD, claim_token=None)
    assert "Discarded 3 jobs." in act(operator, "discard_groups", [group.pk]).content.decode()
    assert set(FailedJob.objects.values_list("status", flat=True)) == {Status.DISCARDED}


def test_a_queue_is_paused_by_adding_a_row_and_resumed_by_deleting_it(broker: redis.Redis) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root"))
    add = reverse("admin:queueing_queuepause_add")

    refused = client.post(add, {"queue": "whatsap-send", "reason": ""})
    assert "unknown queue" in refused.content.decode()

    client.post(add, {"queue": "whatsapp-send", "reason": ""})
    pause = QueuePause.objects.get()
    assert pause.reason == "paused in the admin by root"

    client.post(reverse("admin:queueing_queuepause_delete", args=[pause.pk]), {"post": "yes"})
    assert not QueuePause.objects.exists()
