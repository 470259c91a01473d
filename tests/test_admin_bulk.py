"""The admin's bulk retry (issue 8 item 6): a confirmation that shows the dry run per failure group before
anything is sent, and a selection above the API's threshold run as a background operation, linked from the
message, whose report says what was not sent and why."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from queueing import bulkops, groups
from queueing.models import BulkOperation, FailedJob, FailureGroup

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status
CHANGELIST = "/admin/queueing/failedjob/"


@pytest.fixture
def operator() -> Client:
    """A staff user who may view failed jobs and bulk operations, and retry."""
    user = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    codenames = ("view_failedjob", "retry_failedjob", "view_bulkoperation")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="queueing", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def gateway_group() -> FailureGroup:
    """The failure group of a gateway outage, its breaker open."""
    cause = groups.group_for(
        task_name="tests.tasks.succeed",
        queue="default",
        exception_class="app.GatewayDown",
        message="gateway answered 503",
        now=timezone.now(),
    )
    opened = {"state": "open", "open_until": timezone.now() + timedelta(minutes=5)}
    FailureGroup.objects.filter(pk=cause.group_id).update(**opened)
    return FailureGroup.objects.get(pk=cause.group_id)


def _ask(client: Client, jobs: list[FailedJob], *, select_across: bool = False) -> Any:
    """Pick "Retry selected now" on the jobs (or on all matching the filter): the confirmation page."""
    return client.post(
        CHANGELIST,
        {
            "action": "retry_selected",
            "_selected_action": [str(job.pk) for job in jobs],
            "index": "0",
            "select_across": "1" if select_across else "0",
        },
    )


def _confirm(client: Client, jobs: list[FailedJob], *, select_across: bool = False, rate: str = "") -> Any:
    return client.post(
        CHANGELIST,
        {
            "action": "retry_selected",
            "_selected_action": [str(job.pk) for job in jobs],
            "select_across": "1" if select_across else "0",
            "rate_per_second": rate,
            "post": "yes",
        },
    )


def test_the_retry_confirmation_shows_the_dry_run_per_failure_group_before_anything_is_sent(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis, gateway_group: FailureGroup
) -> None:
    # Given jobs of an open failure group (one of them expired, one whose call no longer fits) and of a gone task
    outage = {"group": gateway_group, "exception_class": "app.GatewayDown"}
    jobs = [make_failed_job(**outage) for _ in range(2)]
    jobs.append(make_failed_job(**outage, options={"expires": "2020-01-01T00:00:00+00:00"}))
    jobs.append(make_failed_job(**outage, kwargs={"argument_removed_since": 1}))
    jobs.append(make_failed_job(task_name="tests.tasks.renamed_long_ago"))

    # When the operator picks "Retry selected now" on them
    response = _ask(operator, jobs)

    # Then the confirmation lists each group with its breaker, what would be sent, what not and why
    assert response.status_code == 200
    page = response.content.decode()
    table = page[page.index('id="queueing-dry-run"') :]
    row = re.search(rf"<td>#{gateway_group.pk}</td>.*?</tr>", table, re.S)
    assert row is not None
    cells = [re.sub(r"\s+", " ", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", row.group(0), re.S)]
    open_until = gateway_group.open_until.isoformat(timespec="seconds")
    assert cells[1:] == [
        "tests.tasks.succeed",
        "app.GatewayDown",
        "gateway answered &lt;n&gt;",
        "default",
        f"open until {open_until}",
        "4",
        "2",
        "1 call unsendable, 1 call expired",
    ]
    assert "<td>none</td>" in table and "1 task not registered" in table
    assert "2 jobs will be sent again now" in page
    assert "1 would not be sent because its task is not registered in this project" in page
    assert "1 would not be sent because its stored call cannot be sent as it stands" in page
    assert "1 would not be sent because its call has expired" in page
    # And nothing was sent or changed yet
    assert broker.llen("default") == 0
    assert set(FailedJob.objects.values_list("status", flat=True)) == {Status.FAILED}

    # When the operator confirms, then the message says what was not sent and why, reason by reason
    final = _confirm(operator, jobs)
    [message] = [str(m) for m in get_messages(final.wsgi_request)]
    assert message.startswith(
        "2 jobs sent again; 1 not sent because its task is not registered in this project; 1 not sent because the "
        "stored call no longer fits its task (it is dead now: see its status reason); 1 not sent because its call "
        "had expired (it is dead now)."
    )
    assert broker.llen("default") == 2


def test_a_retry_above_the_threshold_runs_in_the_background_and_links_to_its_progress(
    operator: Client,
    make_failed_job: Callable[..., FailedJob],
    broker: redis.Redis,
    celery_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given more jobs matching the filter than the API sends while the caller waits (here 2), one of a gone task
    monkeypatch.setattr(bulkops, "SYNC_MAX_JOBS", 2)
    jobs = [make_failed_job(kwargs={"key": f"bulk-{i}"}) for i in range(3)]
    jobs.append(make_failed_job(task_name="tests.tasks.renamed_long_ago"))

    # When the operator selects them all, is told it will run in the background, and confirms
    confirmation = _ask(operator, jobs[:1], select_across=True)
    assert "they will be sent in the background by a worker" in confirmation.content.decode()
    assert 'name="rate_per_second"' in confirmation.content.decode()
    final = _confirm(operator, jobs[:1], select_across=True, rate="50")

    # Then the message links to the operation, which a worker runs: every job sent once, the gone task's told
    assert final.status_code == 302
    operation = BulkOperation.objects.get()
    [message] = [str(m) for m in get_messages(final.wsgi_request)]
    link = reverse("admin:queueing_bulkoperation_change", args=[operation.pk])
    assert f'<a href="{link}">bulk operation #{operation.pk}</a> shows its progress' in message
    assert message.startswith("4 jobs are being retried in the background (more than 2 at once)")
    assert operation.selection["ids"] == sorted(job.pk for job in jobs)
    assert operation.rate_per_second == 50
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        operation.refresh_from_db()
        if operation.state == BulkOperation.State.DONE and not FailedJob.objects.filter(status=Status.RETRYING):
            break
        time.sleep(0.1)
    assert (operation.state, operation.total, operation.sent) == (BulkOperation.State.DONE, 4, 3)
    assert operation.report["notSent"]["unknownTask"] == 1
    assert sorted(FailedJob.objects.values_list("status", flat=True)) == [Status.DEAD] + [Status.RESOLVED] * 3
    assert FailedJob.objects.filter(status=Status.RESOLVED, manual_retry_count=1).count() == 3
    # And the operation's admin page shows its progress and what was not sent and why
    page = operator.get(link).content.decode()
    assert "4 of 4 (100%)" not in page and "3 of 4 (75%)" in page
    assert "found 4, sent 3; 1 not sent: the task is not registered in this project" in page
    assert "jobsSelected&quot;: 4" in page


def test_a_retry_at_or_below_the_threshold_is_sent_at_once_without_an_operation(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulkops, "SYNC_MAX_JOBS", 2)
    jobs = [make_failed_job() for _ in range(2)]

    final = _confirm(operator, jobs)

    [message] = [str(m) for m in get_messages(final.wsgi_request)]
    assert message.startswith("2 jobs sent again.")
    assert not BulkOperation.objects.exists()
    assert broker.llen("default") == 2


def test_the_confirmation_can_throttle_the_retry(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    jobs = [make_failed_job() for _ in range(4)]

    started = time.monotonic()
    final = _confirm(operator, jobs, rate="10")

    assert time.monotonic() - started >= 0.3  # 4 jobs at 10 a second: one batch a job, each waiting its turn
    [message] = [str(m) for m in get_messages(final.wsgi_request)]
    assert message.startswith("4 jobs sent again.")
    assert broker.llen("default") == 4
