"""The Django admin for failed jobs (an operator's console) and the sweep's schedule in django-celery-beat's admin."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from queueing import autoretry, operations
from queueing.admin import filters
from queueing.models import FailedJob, FailureGroup
from queueing.schedule import SWEEP_TASK, SWEEP_TASK_NAME, ensure_sweep_schedule, set_sweep_interval

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status
CHANGELIST = "admin:queueing_failedjob_changelist"
#: The verbs' own permissions (tests/test_permissions.py tests each apart).
OPERATOR_VERBS = ("retry_failedjob", "discard_failedjob", "mark_dead_failedjob")


# --- fixtures and helpers -----------------------------------------------------------------------------------


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw-for-tests", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="queueing", codename__in=codenames))
    return user


@pytest.fixture
def operator() -> Client:
    """A logged-in staff user who may view and act on failed jobs (but is not a superuser)."""
    client = Client()
    client.force_login(_staff("operator", "view_failedjob", *OPERATOR_VERBS))
    return client


@pytest.fixture
def viewer() -> Client:
    client = Client()
    client.force_login(_staff("viewer", "view_failedjob"))
    return client


@pytest.fixture
def superuser_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests"))
    return client


def _messages(response: HttpResponse) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _run_action(
    client: Client,
    action: str,
    jobs: list[FailedJob],
    *,
    query: str = "",
    select_across: bool = False,
    expect_confirmation: bool = True,
) -> tuple[HttpResponse | None, HttpResponse]:
    """Pick ``action`` on the changelist (at ``?query``), confirm it, and return (confirmation, final response)."""
    url = reverse(CHANGELIST) + (f"?{query}" if query else "")
    selected = [str(job.pk) for job in jobs]
    across = "1" if select_across else "0"
    first = client.post(url, {"action": action, "_selected_action": selected, "index": "0", "select_across": across})
    if not expect_confirmation:
        assert first.status_code == 302, first.content[:500]
        return None, first
    assert first.status_code == 200, first.content[:500]
    assert b'name="post" value="yes"' in first.content
    final = client.post(url, {"action": action, "_selected_action": selected, "select_across": across, "post": "yes"})
    assert final.status_code == 302, final.content[:500]
    assert final["Location"] == url
    return first, final


def _status(job: FailedJob) -> str:
    return FailedJob.objects.get(pk=job.pk).status


# --- the list -------------------------------------------------------------------------------------------------


def test_the_list_shows_task_queue_status_error_and_retry_counts(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    ensure_sweep_schedule()
    make_failed_job(
        task_name="messaging.tasks.send_whatsapp",
        queue="whatsapp-send",
        exception_class="requests.exceptions.ConnectionError",
        exception_message="gateway down " + "x" * 300,
        retry_count=2,
        manual_retry_count=1,
        attempts=12,
    )

    response = operator.get(reverse(CHANGELIST))

    assert response.status_code == 200
    page = response.content.decode()
    assert '<span title="messaging.tasks.send_whatsapp">send_whatsapp</span>' in page
    assert "whatsapp-send" in page
    assert "<strong>ConnectionError</strong>: gateway down " + "x" * 46 + "…</span>" in page  # cut short
    assert ">Failed</span>" in page
    assert '<td class="field-auto_retries">2</td>' in page
    assert '<td class="field-attempts">12</td>' in page
    assert "does not count against the automatic limit" in page


def test_the_list_links_to_the_sweeps_periodic_task(operator: Client) -> None:
    sweep = ensure_sweep_schedule()

    response = operator.get(reverse(CHANGELIST))

    url = reverse("admin:django_celery_beat_periodictask_change", args=[sweep.pk])
    assert f'href="{url}" id="sweep-schedule-link"' in response.content.decode()


def test_the_list_runs_as_many_queries_for_fifty_jobs_as_for_two(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    ensure_sweep_schedule()
    for _ in range(2):
        make_failed_job()
    url = reverse(CHANGELIST) + "?status__exact=failed"
    operator.get(url)  # warm the session, content types and Celery's task registry
    with CaptureQueriesContext(connection) as few:
        assert operator.get(url).status_code == 200

    for i in range(48):
        make_failed_job(task_name=f"tests.tasks.t{i % 5}", queue=["default", "whatsapp-send"][i % 2])
    with CaptureQueriesContext(connection) as many:
        response = operator.get(url)

    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 50
    assert len(many.captured_queries) <= len(few.captured_queries), [q["sql"] for q in many.captured_queries]
    assert not any('"traceback"' in q["sql"] for q in many.captured_queries)


def test_the_filters_offer_each_queue_task_and_error_class_and_narrow_the_list(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    a = make_failed_job(queue="whatsapp-send", task_name="tests.tasks.a", exception_class="builtins.ValueError")
    b = make_failed_job(queue="default", task_name="tests.tasks.b", exception_class="builtins.KeyError")
    c = make_failed_job(queue="default", task_name="tests.tasks.a", status=Status.DEAD)

    page = operator.get(reverse(CHANGELIST)).content.decode()
    for choice in ("?queue=whatsapp-send", "?task=tests.tasks.b", "?error=builtins.KeyError", "?status__exact=dead"):
        assert choice in page

    def listed(query: str) -> set[int]:
        response = operator.get(reverse(CHANGELIST) + query)
        assert response.status_code == 200
        return {job.pk for job in response.context["cl"].result_list}

    assert listed("?queue=whatsapp-send") == {a.pk}
    assert listed("?task=tests.tasks.a") == {a.pk, c.pk}
    assert listed("?error=builtins.KeyError") == {b.pk}
    assert listed("?status__exact=dead") == {c.pk}
    assert listed("?queue=default&task=tests.tasks.a") == {c.pk}


def test_the_queue_filter_offers_the_queues_the_celery_app_declares_even_without_jobs(operator: Client) -> None:
    page = operator.get(reverse(CHANGELIST)).content.decode()

    assert "?queue=whatsapp-send" in page and "?queue=default" in page


def test_the_filters_read_their_choices_in_one_query_never_a_distinct_over_the_table(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    make_failed_job(queue="whatsapp-send", task_name="tests.tasks.a", exception_class="builtins.ValueError")
    make_failed_job(queue="default", task_name="tests.tasks.b", exception_class="builtins.KeyError")

    with CaptureQueriesContext(connection) as queries:
        operator.get(reverse(CHANGELIST))

    choices = [q["sql"] for q in queries.captured_queries if "exception_class" in q["sql"] and "UNION" in q["sql"]]
    assert len(choices) == 1, choices
    # The rows come in only through the (group, status) index: those in no failure group
    assert '"group_id" IS NULL' in choices[0]
    assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"] and "exception_class" in q["sql"]]


def test_the_filters_offer_the_task_and_error_class_of_each_failure_group(
    operator: Client, make_failed_job: Callable[..., FailedJob], make_failure_group: Callable[..., FailureGroup]
) -> None:
    # Given a job recorded in its failure group (as every failure is)
    group = make_failure_group(
        task_name="tests.tasks.grouped", exception_class="builtins.LookupError", message_pattern="no such thing"
    )
    grouped = make_failed_job(task_name="tests.tasks.grouped", exception_class="builtins.LookupError", group=group)

    # When the operator opens the list, Then its task and error class are offered, and each narrows the list
    page = operator.get(reverse(CHANGELIST)).content.decode()
    assert "?task=tests.tasks.grouped" in page and "?error=builtins.LookupError" in page
    response = operator.get(reverse(CHANGELIST), {"error": "builtins.LookupError"})
    assert [job.pk for job in response.context["cl"].result_list] == [grouped.pk]


def test_the_date_links_come_from_the_first_and_last_failure_without_reading_every_row(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    march = [datetime(2025, 3, day, 12, tzinfo=UTC) for day in (3, 5)]
    jobs = [make_failed_job(first_failed_at=at, last_failed_at=at) for at in march]

    with CaptureQueriesContext(connection) as queries:
        page = operator.get(reverse(CHANGELIST)).content.decode()
    by_day = operator.get(
        reverse(CHANGELIST), {"last_failed_at__year": 2025, "last_failed_at__month": 3, "last_failed_at__day": 5}
    )

    # Both days and the one between are offered (one MIN/MAX query, no DISTINCT over the dates)
    for day in (3, 4, 5):
        assert f"last_failed_at__day={day}&amp;last_failed_at__month=3&amp;last_failed_at__year=2025" in page
    assert "March 3" in page and "March 5" in page
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"] and "last_failed_at" in q["sql"]]
    assert [job.pk for job in by_day.context["cl"].result_list] == [jobs[1].pk]


def test_the_search_finds_jobs_by_task_error_task_id_and_number(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    by_task = make_failed_job(task_name="messaging.tasks.send_whatsapp")
    by_error = make_failed_job(exception_message="the gateway said: service unavailable")
    by_class = make_failed_job(exception_class="requests.exceptions.Timeout")
    by_latest = make_failed_job(latest_task_id=str(uuid.uuid4()))
    others = [make_failed_job() for _ in range(3)]

    def found(term: str, **filters: str) -> set[int]:
        response = operator.get(reverse(CHANGELIST), {"q": term, **filters})
        return {job.pk for job in response.context["cl"].result_list}

    assert found("send_whatsapp") == {by_task.pk}
    assert found("service unavail") == {by_error.pk}
    assert found("Timeout") == {by_class.pk}
    assert found(by_latest.latest_task_id) == {by_latest.pk}
    assert found(others[1].origin_task_id) == {others[1].pk}
    assert found(str(others[2].pk)) == {others[2].pk}
    # the job's number is searched within the current filter
    assert found(str(others[2].pk), status__exact="dead") == set()


# --- read-only --------------------------------------------------------------------------------------------------


def test_failed_jobs_cannot_be_added_edited_or_deleted_in_the_admin(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    job = make_failed_job()
    change_url = reverse("admin:queueing_failedjob_change", args=[job.pk])

    assert operator.get(reverse("admin:queueing_failedjob_add")).status_code == 403
    assert operator.post(change_url, {"task_name": "hacked", "status": "resolved"}).status_code == 403
    assert operator.get(reverse("admin:queueing_failedjob_delete", args=[job.pk])).status_code == 403
    page = operator.get(change_url).content.decode()
    assert 'name="_save"' not in page
    assert "delete_selected" not in operator.get(reverse(CHANGELIST)).content.decode()
    assert FailedJob.objects.get(pk=job.pk).task_name == job.task_name


def test_a_user_who_may_only_view_failed_jobs_sees_them_but_no_actions(
    viewer: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    job = make_failed_job()

    page = viewer.get(reverse(CHANGELIST)).content.decode()
    detail = viewer.get(reverse("admin:queueing_failedjob_change", args=[job.pk])).content.decode()
    attempt = viewer.post(
        reverse(CHANGELIST), {"action": "retry_selected", "_selected_action": [job.pk], "index": "0", "post": "yes"}
    )
    button = viewer.post(reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": "retry", "post": "yes"})

    assert job.task_name in page
    assert "retry_selected" not in page
    assert 'name="verb"' not in detail
    assert attempt.status_code == 200  # no actions for this user: the POST just shows the list again
    assert _status(job) == Status.FAILED
    assert button.status_code == 403


# --- the detail page --------------------------------------------------------------------------------------------


def test_the_detail_page_shows_the_call_the_traceback_the_history_and_links_to_flower(
    operator: Client, make_failed_job: Callable[..., FailedJob], settings: Any, now: datetime
) -> None:
    settings.FLOWER_URL = "http://flower.example:5555/"
    job = make_failed_job(
        args=["+15550001", {"lang": "pt"}],
        kwargs={"text": "olá <b>", "retry": True},
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: <boom>',
        latest_task_id="clone-1",
        retry_count=1,
        manual_retry_count=2,
    )
    job.add_event("failed", now, task_id=job.origin_task_id, attempts=4, error="builtins.RuntimeError: boom")
    job.add_event("retry_started", now, task_id="clone-1", by="sweep")
    job.save()

    page = operator.get(reverse("admin:queueing_failedjob_change", args=[job.pk])).content.decode()

    assert "&quot;text&quot;: &quot;olá &lt;b&gt;&quot;" in page  # pretty JSON, escaped
    assert "  &quot;+15550001&quot;,\n  {\n    &quot;lang&quot;: &quot;pt&quot;\n  }" in page
    assert "RuntimeError: &lt;boom&gt;" in page and "File &quot;x.py&quot;, line 1\n" in page
    assert f'href="http://flower.example:5555/task/{job.origin_task_id}"' in page
    assert 'href="http://flower.example:5555/task/clone-1"' in page
    assert "retry_started" in page and "builtins.RuntimeError: boom" in page
    assert "1 of 3 automatic retries used; 2 manual retries." in page
    assert "do not count against the automatic limit" in page


def test_the_detail_page_links_to_the_clone_sent_under_the_current_claim(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    job = make_failed_job(status=Status.RETRYING, claim_token=uuid.uuid4(), latest_task_id="older-clone")

    page = operator.get(reverse("admin:queueing_failedjob_change", args=[job.pk])).content.decode()

    assert f"/task/{job.clone_task_id()}" in page
    assert "/task/older-clone" not in page


#: Every time the admin shows: to the second, one format, with the time zone.
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def test_every_time_is_shown_to_the_second_with_its_time_zone_in_one_format(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    # Given a job that failed on the hour (Django's own format would say "Dec. 1, 2026, 8 p.m.")
    at = datetime(2026, 12, 1, 20, 0, 14, tzinfo=UTC)
    job = make_failed_job(first_failed_at=at - timedelta(hours=1), last_failed_at=at, next_retry_at=at)
    job.add_event("failed", at, task_id=job.origin_task_id)
    job.save()
    _run_action(operator, "mark_dead_selected", [job])

    # When the operator reads the list, the job's page and its admin history
    listed = operator.get(reverse(CHANGELIST)).content.decode()
    detail = operator.get(reverse("admin:queueing_failedjob_change", args=[job.pk])).content.decode()
    history = operator.get(reverse("admin:queueing_failedjob_history", args=[job.pk])).content.decode()

    # Then each time is told as 2026-12-01 20:00:14 UTC, never in Django's default format
    assert '2026-12-01 <span class="queueing-clock">20:00:14 UTC</span>' in listed  # last failed, on two lines
    for label, shown in (("First failed at", "19:00:14"), ("Last failed at", "20:00:14")):
        assert re.search(rf"{label}:</label>\s*<div class=\"readonly\"><time [^>]*>2026-12-01 {shown} UTC<", detail)
    assert "<tr><td>2026-12-01 20:00:14 UTC</td><td>failed</td>" in detail  # the history of attempts
    assert re.search(r"<th scope=\"row\">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</th>", history)
    for page in (listed, detail, history):
        assert "p.m." not in page and "a.m." not in page and "midnight" not in page and "noon" not in page
    assert len(TIME.findall(detail)) >= 5  # first and last failed, dead, created, updated, the history


# --- the actions ------------------------------------------------------------------------------------------------


def test_retry_selected_now_asks_first_then_sends_failed_and_dead_jobs_and_skips_the_others(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    # Given jobs in every state
    failed = make_failed_job(retry_count=2)
    dead = make_failed_job(status=Status.DEAD, retry_count=3)
    busy = make_failed_job(status=Status.RETRYING)
    resolved = make_failed_job(status=Status.RESOLVED)
    discarded = make_failed_job(status=Status.DISCARDED)

    # When the operator picks "Retry selected now" on all of them and confirms
    confirmation, final = _run_action(operator, "retry_selected", [failed, dead, busy, resolved, discarded])

    # Then the confirmation said what would happen, and that manual retries do not use up automatic ones
    page = confirmation.content.decode()
    assert "2 jobs will be sent again now" in page
    assert "1 skipped because it is being retried" in page
    assert "Manual retries do not count against the automatic limit" in page
    # And the failed and dead jobs were sent again, the others left alone
    assert _messages(final) == [
        "2 jobs sent again; 1 skipped because it is being retried; 1 skipped because it is resolved; "
        "1 skipped because it is discarded. Manual retries do not count against the automatic limit: the sweep "
        "still makes up to 3 automatic retries of each failed job, whatever the manual retries. A dead job that "
        "fails again after a manual retry goes back to dead."
    ]
    assert broker.llen("default") == 2
    for job, status in ((busy, Status.RETRYING), (resolved, Status.RESOLVED), (discarded, Status.DISCARDED)):
        assert _status(job) == status
    for job, automatic in ((failed, 2), (dead, 3)):
        job.refresh_from_db()
        assert job.status == Status.RETRYING
        assert job.claimed_by == FailedJob.ClaimedBy.OPERATOR
        assert (job.retry_count, job.manual_retry_count) == (automatic, 1)


def test_nothing_is_retried_until_the_operator_confirms(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    job = make_failed_job()

    response = operator.post(
        reverse(CHANGELIST), {"action": "retry_selected", "_selected_action": [job.pk], "index": "0"}
    )

    assert response.status_code == 200
    assert _status(job) == Status.FAILED
    assert broker.llen("default") == 0


def test_one_job_is_told_in_the_singular(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    jobs = [make_failed_job(), make_failed_job(status=Status.RETRYING)]

    _, final = _run_action(operator, "retry_selected", jobs)

    assert _messages(final)[0].startswith("1 job sent again; 1 skipped because it is being retried.")


def test_a_selection_with_nothing_to_retry_says_so_without_asking(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    jobs = [make_failed_job(status=Status.RETRYING), make_failed_job(status=Status.RETRYING)]

    _, final = _run_action(operator, "retry_selected", jobs, expect_confirmation=False)

    assert _messages(final) == ["0 jobs sent again; 2 skipped because they are being retried."]
    assert broker.llen("default") == 0


def test_retry_with_select_all_acts_on_every_job_matching_the_current_filter(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis, configure: Any
) -> None:
    configure(BATCH_SIZE=2)  # more matching jobs than one claim batch
    # Given failed jobs in two queues, more of them than one page shows
    whatsapp = [make_failed_job(queue="whatsapp-send") for _ in range(5)]
    default = [make_failed_job(queue="default") for _ in range(3)]
    query = "queue=whatsapp-send&status__exact=failed"

    # When the operator filters on one queue, selects all (only one row is ticked on the page) and retries
    confirmation, final = _run_action(operator, "retry_selected", whatsapp[:1], query=query, select_across=True)

    # Then every job of the filter, and only those, was sent
    assert "All 5 jobs matching the current filter (queue = whatsapp-send; status = failed)." in (
        confirmation.content.decode()
    )
    assert _messages(final)[0].startswith("5 jobs sent again.")
    assert {_status(job) for job in whatsapp} == {Status.RETRYING}
    assert {_status(job) for job in default} == {Status.FAILED}
    assert broker.llen("whatsapp-send") == 5


def test_one_run_of_an_action_is_bounded_and_says_how_many_are_left(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("queueing.admin.verbs.ACTION_MAX_JOBS", 2)
    jobs = [make_failed_job() for _ in range(3)]

    confirmation, final = _run_action(operator, "retry_selected", jobs)

    assert "2 jobs will be sent again now" in confirmation.content.decode()
    assert _messages(final)[0].startswith(
        "2 jobs sent again; 1 left for another run of the action (one run handles at most 2 jobs)."
    )
    assert sorted(_status(job) for job in jobs) == [Status.FAILED, Status.RETRYING, Status.RETRYING]
    assert [m.level_tag for m in get_messages(final.wsgi_request)] == ["warning"]


def test_jobs_that_cannot_be_sent_are_told_apart_in_the_message(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    # Given a job that can be sent, one whose task is gone, and one whose stored call no longer fits its task
    sendable = make_failed_job()
    orphan = make_failed_job(task_name="tests.tasks.renamed_long_ago")
    misfit = make_failed_job(kwargs={"argument_removed_since": 1})

    # When the operator retries all three
    _, final = _run_action(operator, "retry_selected", [sendable, orphan, misfit])

    # Then one was sent, and the message says why each of the others was not
    assert _messages(final)[0].startswith(
        "1 job sent again; 1 not sent because its task is not registered in this project; "
        "1 not sent because the stored call no longer fits its task (it is dead now: see its status reason)."
    )
    for job, reason in ((orphan, "not registered"), (misfit, "cannot be sent")):
        job.refresh_from_db()
        assert job.status == Status.DEAD
        assert reason in job.status_reason
    assert broker.llen("default") == 1
    assert _status(sendable) == Status.RETRYING


def test_discard_selected_discards_failed_and_dead_jobs_only(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    failed, dead = make_failed_job(), make_failed_job(status=Status.DEAD)
    busy, resolved = make_failed_job(status=Status.RETRYING), make_failed_job(status=Status.RESOLVED)

    confirmation, final = _run_action(operator, "discard_selected", [failed, dead, busy, resolved])

    assert "Discarding is final" in confirmation.content.decode()
    assert _messages(final) == [
        "2 jobs discarded; 1 skipped because it is being retried; 1 skipped because it is resolved."
    ]
    assert [_status(j) for j in (failed, dead, busy, resolved)] == [
        Status.DISCARDED,
        Status.DISCARDED,
        Status.RETRYING,
        Status.RESOLVED,
    ]
    assert FailedJob.objects.get(pk=failed.pk).discarded_at is not None


def test_mark_selected_dead_marks_failed_jobs_only(operator: Client, make_failed_job: Callable[..., FailedJob]) -> None:
    failed = [make_failed_job(), make_failed_job()]
    dead = make_failed_job(status=Status.DEAD)

    _, final = _run_action(operator, "mark_dead_selected", [*failed, dead])

    assert _messages(final) == ["2 jobs marked dead; 1 skipped because it is already dead."]
    for job in failed:
        job.refresh_from_db()
        assert job.status == Status.DEAD
        assert job.next_retry_at is None
        assert job.status_reason == "marked dead by operator in the admin"


def test_each_action_is_recorded_in_the_jobs_admin_history(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    job, skipped = make_failed_job(), make_failed_job(status=Status.RESOLVED)

    _run_action(operator, "mark_dead_selected", [job, skipped])

    entries = LogEntry.objects.filter(object_id__in=[str(job.pk), str(skipped.pk)])
    assert [(e.object_id, e.user.username, e.change_message) for e in entries] == [
        (str(job.pk), "operator", "Marked dead by an operator.")
    ]


def test_a_retry_is_recorded_in_the_admin_history_of_exactly_the_jobs_it_sent(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    # Given a failed and a dead job that can be sent, one whose task is gone, one whose call no longer fits its
    # task (both become dead at the moment of the retry), and one being retried
    failed, dead = make_failed_job(), make_failed_job(status=Status.DEAD)
    orphan = make_failed_job(task_name="tests.tasks.renamed_long_ago")
    misfit = make_failed_job(kwargs={"argument_removed_since": 1})
    busy = make_failed_job(status=Status.RETRYING)

    # When the operator retries all five
    _run_action(operator, "retry_selected", [failed, dead, orphan, misfit, busy])

    # Then the history has one entry for each job sent, and none for the jobs not sent or skipped
    entries = LogEntry.objects.filter(object_id__in=[str(j.pk) for j in (failed, dead, orphan, misfit, busy)])
    assert sorted((e.object_id, e.user.username, e.change_message) for e in entries) == sorted(
        (
            str(job.pk),
            "operator",
            "Retried now by an operator (a manual retry: not counted against the automatic limit).",
        )
        for job in (failed, dead)
    )
    assert broker.llen("default") == 2


def test_the_history_records_the_jobs_the_service_says_it_changed(
    operator: Client, make_failed_job: Callable[..., FailedJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two failed jobs, of which the service discards only the first (the other changed state meanwhile)
    first, second = make_failed_job(), make_failed_job()
    discard = operations.discard
    monkeypatch.setattr(operations, "discard", lambda *, ids, now, **kw: discard(ids=[first.pk], now=now, **kw))

    # When the operator discards both
    _, final = _run_action(operator, "discard_selected", [first, second])

    # Then only the first is logged, and the message tells the other apart
    assert list(LogEntry.objects.values_list("object_id", "change_message")) == [
        (str(first.pk), "Discarded by an operator.")
    ]
    assert _messages(final) == ["1 job discarded; 1 not changed because it changed state meanwhile."]


def test_the_detail_page_buttons_act_on_one_job_after_confirming(
    operator: Client, make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    job = make_failed_job(status=Status.DEAD)
    detail = reverse("admin:queueing_failedjob_change", args=[job.pk])
    operate = reverse("admin:queueing_failedjob_operate", args=[job.pk])

    # Given the detail page of a dead job offers "Retry now" and "Discard", not "Mark dead"
    page = operator.get(detail).content.decode()
    assert 'value="retry"' in page and 'value="discard"' in page and 'value="mark_dead"' not in page

    # When the operator presses "Retry now", then confirms
    confirmation = operator.post(operate, {"verb": "retry"})
    assert "1 job will be sent again now" in confirmation.content.decode()
    assert _status(job) == Status.DEAD
    final = operator.post(operate, {"verb": "retry", "post": "yes"})

    # Then the job was sent once, and the operator is back on its page
    assert final.status_code == 302 and final["Location"] == detail
    assert _messages(final)[0].startswith("1 job sent again.")
    assert _status(job) == Status.RETRYING
    assert broker.llen("default") == 1
    assert operator.get(operate).status_code == 405


# --- the sweep's schedule ---------------------------------------------------------------------------------------


def _periodic_task_form(periodic: PeriodicTask, /, **changes: Any) -> dict[str, Any]:
    """The POST data of django-celery-beat's change form for ``periodic``, with some fields changed."""
    data = {
        "name": periodic.name,
        "regtask": periodic.task,
        "task": periodic.task,
        "enabled": "on" if periodic.enabled else "",
        "description": periodic.description,
        "interval": str(periodic.interval_id or ""),
        "crontab": str(periodic.crontab_id or ""),
        "solar": "",
        "clocked": "",
        "start_time_0": "",
        "start_time_1": "",
        "args": periodic.args,
        "kwargs": periodic.kwargs,
        "expires_0": "",
        "expires_1": "",
        "expire_seconds": "",
        "queue": "",
        "exchange": "",
        "routing_key": "",
        "priority": "",
        "headers": "{}",
        "_save": "Save",
        **changes,
    }
    return {k: v for k, v in data.items() if v != "" or k in ("name", "task", "regtask")}


def _save_periodic_task(client: Client, periodic: PeriodicTask, /, **changes: Any) -> HttpResponse:
    response = client.post(
        reverse("admin:django_celery_beat_periodictask_change", args=[periodic.pk]),
        _periodic_task_form(periodic, **changes),
    )
    if response.status_code != 302:
        errors = response.context["adminform"].form.errors if response.context else response.content[:500]
        raise AssertionError(f"the change form was not saved: {errors}")
    return response


def test_editing_the_sweeps_interval_in_the_admin_changes_the_check_interval_for_good(
    superuser_client: Client, now: datetime
) -> None:
    # Given the sweep every second (from settings), and Beat's change marker an hour old
    sweep = ensure_sweep_schedule()
    assert autoretry.current_policy().check_interval_seconds == 1
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": now - timedelta(hours=1)})
    every_two_minutes, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.MINUTES)

    # When an operator gives it an interval of two minutes in django-celery-beat's admin
    response = _save_periodic_task(superuser_client, sweep, interval=str(every_two_minutes.pk))

    # Then that is the check interval of the running system, a running Beat is told, and restarts keep it
    assert autoretry.current_policy().check_interval_seconds == 120
    assert PeriodicTasks.last_change() > now - timedelta(minutes=1)
    assert any("every 120 s" in m for m in _messages(response))
    ensure_sweep_schedule()
    sweep.refresh_from_db()
    assert timedelta(**{sweep.interval.period: sweep.interval.every}) == timedelta(seconds=120)
    assert autoretry.current_policy().check_interval_seconds == 120


def test_the_admin_writes_the_sweeps_interval_through_set_sweep_interval(
    superuser_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = ensure_sweep_schedule()
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    calls: list[int] = []
    real = set_sweep_interval
    monkeypatch.setattr(
        "queueing.admin.beat.set_sweep_interval", lambda seconds: calls.append(seconds) or real(seconds)
    )

    _save_periodic_task(superuser_client, sweep, interval=str(every_minute.pk))

    assert calls == [60]


def test_editing_the_interval_the_sweep_uses_records_it_too(superuser_client: Client) -> None:
    sweep = ensure_sweep_schedule()

    response = superuser_client.post(
        reverse("admin:django_celery_beat_intervalschedule_change", args=[sweep.interval_id]),
        {
            "every": "45",
            "period": IntervalSchedule.SECONDS,
            "periodictask_set-TOTAL_FORMS": "0",
            "periodictask_set-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.content[:500]
    assert autoretry.current_policy().check_interval_seconds == 45
    ensure_sweep_schedule()
    sweep.refresh_from_db()
    assert (sweep.interval.every, sweep.interval.period) == (45, IntervalSchedule.SECONDS)


def test_switching_the_sweep_to_a_crontab_records_nothing_and_warns(superuser_client: Client) -> None:
    sweep = ensure_sweep_schedule()
    crontab = CrontabSchedule.objects.create(minute="*/5")

    response = _save_periodic_task(superuser_client, sweep, interval="", crontab=str(crontab.pk))

    assert autoretry.current_policy().check_interval_seconds == 1
    [warning] = [m for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
    assert "Only an interval can be recorded" in str(warning)
    assert "puts the sweep back on an interval of 1 s" in str(warning)


def test_the_sweep_cannot_be_renamed_in_the_admin(superuser_client: Client) -> None:
    sweep = ensure_sweep_schedule()

    response = superuser_client.post(
        reverse("admin:django_celery_beat_periodictask_change", args=[sweep.pk]),
        _periodic_task_form(sweep, name="my sweep", regtask="", task="other.task"),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "must keep the name" in errors["name"][0]
    assert SWEEP_TASK in errors["task"][0]
    assert PeriodicTask.objects.filter(name=SWEEP_TASK_NAME).exists()


def test_the_periodic_tasks_times_are_shown_in_the_admins_one_format(superuser_client: Client) -> None:
    sweep = ensure_sweep_schedule()
    PeriodicTask.objects.filter(pk=sweep.pk).update(last_run_at=datetime(2026, 12, 1, 20, 0, 14, tzinfo=UTC))

    listed = superuser_client.get(reverse("admin:django_celery_beat_periodictask_changelist")).content.decode()
    detail = superuser_client.get(reverse("admin:django_celery_beat_periodictask_change", args=[sweep.pk]))

    assert ">2026-12-01 20:00:14 UTC</time>" in listed
    assert ">2026-12-01 20:00:14 UTC</time>" in detail.content.decode()
    assert "start_time_0" in detail.content.decode()  # the start time is still an input


def test_other_periodic_tasks_are_edited_as_before(superuser_client: Client) -> None:
    ensure_sweep_schedule()
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    other = PeriodicTask.objects.create(name="cleanup", task="tests.tasks.succeed", interval=every_minute)
    every_hour, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)

    _save_periodic_task(superuser_client, other, interval=str(every_hour.pk))

    other.refresh_from_db()
    assert other.interval_id == every_hour.pk
    assert autoretry.current_policy().check_interval_seconds == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimates are PostgreSQL's statistics")
def test_the_unfiltered_list_of_a_large_table_is_counted_from_the_statistics_not_with_count(
    operator: Client, make_failed_job: Callable[..., FailedJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a table the statistics say is large (here: 3 rows, and "large" from 1 row on)
    for _ in range(3):
        make_failed_job()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE queueing_failedjob")
    monkeypatch.setattr(filters, "ESTIMATE_ABOVE_ROWS", 1)

    with CaptureQueriesContext(connection) as queries:
        response = operator.get(reverse(CHANGELIST))

    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts == [], counts
    assert response.context["cl"].result_count == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimates are PostgreSQL's planner's")
def test_a_filtered_list_counts_its_rows_only_up_to_a_limit_then_takes_the_estimate(
    operator: Client, make_failed_job: Callable[..., FailedJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        make_failed_job()
    monkeypatch.setattr(filters, "EXACT_COUNT_MAX_ROWS", 2)

    with CaptureQueriesContext(connection) as queries:
        response = operator.get(reverse(CHANGELIST), {"status__exact": "failed"})

    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "LIMIT 3" in counts[0], counts
    assert response.context["cl"].result_count >= 3  # at least what was counted; the planner's estimate above
    assert len(response.context["cl"].result_list) == 3


def test_a_filtered_list_below_the_limit_is_counted_exactly(
    operator: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    for _ in range(3):
        make_failed_job()
    make_failed_job(status=Status.DEAD, next_retry_at=None)

    response = operator.get(reverse(CHANGELIST), {"status__exact": "failed"})

    assert response.context["cl"].result_count == 3
