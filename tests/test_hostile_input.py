"""Hostile input at every entry point: NUL bytes, control characters, 10 MB strings, tampered rows.

Each entry point (the API, the admin's forms, filters and search, the commands' options, rows as stored) answers
with a clear error or does its job; never a 500 or a traceback, and nothing is enqueued by mistake.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.urls import reverse

from queueing import operations, sweep
from queueing.models import FailedJob

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "hostile-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TEN_MB = "x" * (10 * 1024 * 1024)
CONTROL = "".join(map(chr, [*range(1, 32), 127])) + "\u202e\ufeff"
HOSTILE = {
    "nul": "whatsapp-send\x00; DROP TABLE queueing_failedjob",
    "control": f"a{CONTROL}b",
    "ten_mb": TEN_MB,
    "html": "<script>alert(1)</script>",
    "percent": "%00%ff%",
}
QUEUES = ("default", "whatsapp-send")

Status = FailedJob.Status


@pytest.fixture(autouse=True)
def api_token(configure: Any) -> None:
    configure(API_TOKEN=TOKEN, STATUS_COUNTS_CACHE_SECONDS=0, STATUS_INSPECT_TIMEOUT_SECONDS=0.05)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests"))
    return client


def nothing_enqueued(broker: redis.Redis) -> bool:
    return all(broker.llen(queue) == 0 for queue in QUEUES)


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def storable(text: str) -> str:
    """PostgreSQL refuses NUL in text columns: the nearest text a row there can hold."""
    return text.replace("\x00", "") if is_postgres() else text


# --- the API --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_queue_name_in_the_status_query_is_a_json_4xx(client: Client, broker: redis.Redis, name: str) -> None:
    response = client.get("/api/queue/status", {"queueName": HOSTILE[name]}, headers=BEARER)

    assert response.status_code in (400, 404), response.content[:300]
    assert "error" in response.json()


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_queue_name_to_retry_all_failed_is_refused_and_sends_nothing(
    client: Client, broker: redis.Redis, make_failed_job: Callable[..., FailedJob], name: str
) -> None:
    job = make_failed_job(queue="whatsapp-send")

    response = client.post(
        "/api/queue/retry-all-failed",
        json.dumps({"queueName": HOSTILE[name]}),
        content_type="application/json",
        headers=BEARER,
    )

    assert response.status_code in (400, 404, 413), response.content[:300]
    assert "error" in response.json()
    assert nothing_enqueued(broker)
    assert FailedJob.objects.get(pk=job.pk).status == Status.FAILED


@pytest.mark.parametrize("field", ["sessionId", "to", "message"])
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_message_field_is_refused_and_queues_nothing(
    client: Client, broker: redis.Redis, field: str, name: str
) -> None:
    body = {"sessionId": "default", "to": "+15550001", "message": "hi", field: HOSTILE[name]}
    if field == "message" and name in ("control", "html", "percent"):
        pytest.skip("a message may hold any printable text and line breaks; the gateway gets it as JSON")

    response = client.post("/api/send-message", json.dumps(body), content_type="application/json", headers=BEARER)

    assert response.status_code in (400, 413), response.content[:300]
    assert "error" in response.json()
    assert nothing_enqueued(broker)


@pytest.mark.parametrize(
    "body",
    [b"\x00\x00\x00", b'{"queueName": "default\xff"}', b'{"queueName": "\\u0000"}', b"[" * 100_000, b'"x"'],
    ids=["nul-bytes", "invalid-utf8", "escaped-nul", "deep-nesting", "not-an-object"],
)
def test_a_malformed_body_is_a_400(client: Client, broker: redis.Redis, body: bytes) -> None:
    response = client.post("/api/queue/retry-all-failed", body, content_type="application/json", headers=BEARER)

    assert response.status_code in (400, 404), response.content[:300]
    assert "error" in response.json()
    assert nothing_enqueued(broker)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_bearer_token_is_a_401(client: Client, name: str) -> None:
    token = HOSTILE[name][:100_000]
    response = client.get("/api/queue/status", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


# --- the admin ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["q", "queue", "task", "error", "status", "status__exact", "o", "p", "e"])
@pytest.mark.parametrize("name", ["nul", "control", "html", "percent"])
def test_the_admin_list_survives_hostile_search_and_filters(
    admin_client: Client, make_failed_job: Callable[..., FailedJob], param: str, name: str
) -> None:
    make_failed_job()

    response = admin_client.get(reverse("admin:queueing_failedjob_changelist"), {param: HOSTILE[name]})

    assert response.status_code in (200, 302, 400), response.content[:300]


def test_the_admin_list_survives_a_search_of_a_megabyte(
    admin_client: Client, make_failed_job: Callable[..., FailedJob]
) -> None:
    make_failed_job()

    response = admin_client.get(reverse("admin:queueing_failedjob_changelist"), {"q": "x" * 1024 * 1024})

    assert response.status_code in (200, 400)


@pytest.mark.parametrize("object_id", ["\x00", "1\x00", "%00", "-1", "9" * 40, "x" * 5000])
def test_the_admin_detail_and_verbs_survive_a_hostile_object_id(admin_client: Client, object_id: str) -> None:
    change = admin_client.get(f"/admin/queueing/failedjob/{object_id}/change/")
    operate = admin_client.post(f"/admin/queueing/failedjob/{object_id}/operate/", {"verb": "retry"})

    assert change.status_code in (302, 404), change.content[:300]
    assert operate.status_code in (302, 400, 404), operate.content[:300]


@pytest.mark.parametrize("name", ["nul", "control", "ten_mb"])
def test_the_admin_verb_and_selection_survive_hostile_values(
    admin_client: Client, broker: redis.Redis, make_failed_job: Callable[..., FailedJob], name: str
) -> None:
    job = make_failed_job()
    value = HOSTILE[name][:100_000]

    operate = admin_client.post(reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": value})
    action = admin_client.post(
        reverse("admin:queueing_failedjob_changelist"),
        {"action": "retry_selected", "_selected_action": [value, str(job.pk)], "post": "yes"},
    )
    bad_action = admin_client.post(
        reverse("admin:queueing_failedjob_changelist"), {"action": value, "_selected_action": [str(job.pk)]}
    )

    assert operate.status_code == 400
    assert action.status_code in (200, 302, 400), action.content[:300]
    assert bad_action.status_code in (200, 302, 400), bad_action.content[:300]
    assert nothing_enqueued(broker) or FailedJob.objects.get(pk=job.pk).status == Status.RETRYING


# --- the commands ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["retry_all_failed", "check_queue"])
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_queue_option_is_a_command_error(broker: redis.Redis, command: str, name: str) -> None:
    with pytest.raises(CommandError, match="unknown queue"):
        call_command(command, queue=HOSTILE[name])

    assert nothing_enqueued(broker)


# --- rows as stored -------------------------------------------------------------------------------------------


@pytest.fixture
def hostile_row(make_failed_job: Callable[..., FailedJob]) -> FailedJob:
    """A row with control characters, markup and long text in every text field (NUL too where it can be stored)."""
    text = storable(f"\x00{CONTROL}<b>bold</b>")
    return make_failed_job(
        task_name=f"tests.tasks.succeed{text}",
        queue=f"default{text}"[:200],
        args=[text, "y" * 100_000],
        kwargs={text: text},
        options={"note": text},
        exception_class=f"Boom{text}",
        exception_message=text * 100,
        traceback=text + "z" * 1_000_000,
        status_reason=text,
        history=[{"event": text, "at": "not a time", "by": text}],
    )


def test_a_hostile_row_shows_in_the_admin_the_api_the_command_and_the_metrics(
    admin_client: Client, client: Client, broker: redis.Redis, hostile_row: FailedJob
) -> None:
    listed = admin_client.get(reverse("admin:queueing_failedjob_changelist"))
    detail = admin_client.get(reverse("admin:queueing_failedjob_change", args=[hostile_row.pk]))
    status = client.get("/api/queue/status", headers=BEARER)
    metrics = client.get("/metrics", headers=BEARER)
    call_command("check_queue", stdout=open("/dev/null", "w"))  # noqa: SIM115

    assert (listed.status_code, detail.status_code, status.status_code, metrics.status_code) == (200, 200, 200, 200)
    assert b"<b>bold</b>" not in detail.content  # shown as text, never as markup
    assert b"&lt;b&gt;bold&lt;/b&gt;" in detail.content


def test_a_hostile_row_is_marked_dead_by_the_sweep_never_sent(broker: redis.Redis, hostile_row: FailedJob) -> None:
    result = sweep.sweep()

    hostile_row.refresh_from_db()
    assert (result.sent, result.unknown) == (0, 1)
    assert hostile_row.status == Status.DEAD
    assert nothing_enqueued(broker)


# --- tampered rows --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"args": {"a": 1}}, "cannot be sent"),
        ({"args": "a string"}, "cannot be sent"),
        ({"kwargs": ["not", "a", "dict"]}, "cannot be sent"),
        ({"kwargs": {"unexpected": 1}}, "cannot be sent"),
        ({"options": {"priority": "high"}}, "cannot be sent"),
        ({"options": "not a dict"}, "cannot be sent"),
        ({"options": {"expires": "2026-01-01T00:00:00"}}, "with a time zone"),
        ({"options": {"headers": "x"}}, "headers must be a JSON object"),
        ({"options": {"time_limit": "soon"}}, "positive number of seconds"),
        ({"queue": "no-such-queue"}, "unknown queue 'no-such-queue'"),
        ({"task_name": "os.system", "args": ["rm -rf /"]}, "unregistered task"),
        ({"task_name": "queueing.record_failed_job", "args": [{}]}, "unregistered task"),
        ({"task_name": "queueing.sweep_failed_jobs"}, "unregistered task"),
        ({"task_name": "celery.backend_cleanup"}, "unregistered task"),
    ],
    ids=[
        "args-dict",
        "args-string",
        "kwargs-list",
        "kwargs-unknown",
        "priority-text",
        "options-string",
        "expires-naive",
        "headers-string",
        "time-limit-text",
        "unknown-queue",
        "unregistered-task",
        "internal-recorder",
        "internal-sweep",
        "celery-builtin",
    ],
)
@pytest.mark.parametrize("by", ["sweep", "operator"])
def test_a_tampered_row_is_dead_with_a_clear_reason_and_nothing_is_enqueued(
    broker: redis.Redis, make_failed_job: Callable[..., FailedJob], fields: dict[str, Any], reason: str, by: str
) -> None:
    job = make_failed_job(**fields)

    if by == "sweep":
        sweep.sweep()
    else:
        operations.retry_now(ids=[job.pk], actor="user:test")

    job.refresh_from_db()
    assert job.status == Status.DEAD, job.status_reason
    assert reason in job.status_reason
    assert nothing_enqueued(broker)
    # and it stays so: the next sweep sends nothing either
    sweep.sweep()
    assert nothing_enqueued(broker)


def test_an_admin_retry_of_tampered_rows_is_a_message_not_a_500(
    admin_client: Client, broker: redis.Redis, make_failed_job: Callable[..., FailedJob]
) -> None:
    jobs = [make_failed_job(args={"a": 1}), make_failed_job(queue="no-such-queue"), make_failed_job(task_name="x.y")]

    response = admin_client.post(
        reverse("admin:queueing_failedjob_changelist"),
        {"action": "retry_selected", "_selected_action": [str(j.pk) for j in jobs], "post": "yes"},
        follow=True,
    )

    assert response.status_code == 200
    assert "0 jobs sent again" in response.content.decode()
    assert nothing_enqueued(broker)


# --- what a failing task hands over -------------------------------------------------------------------------


def test_a_failure_with_nul_and_control_characters_everywhere_is_recorded(broker: redis.Redis) -> None:
    from queueing.recording import Failure, record_failure

    # Given a call whose arguments, error and traceback hold NUL bytes and control characters
    text = f"\x00{CONTROL}"
    failure = Failure.from_exception(
        RuntimeError(f"bad {text}"),
        traceback=f"Traceback {text}" + "t" * 1_000_000,
        task_name="tests.tasks.succeed",
        task_id="t-1",
        origin_task_id="t-1",
        queue="default",
        args=[text],
        kwargs={"key": text},
        attempts=4,
    )

    # When it is recorded
    job = record_failure(failure)

    # Then one row holds it, with the arguments exactly as they were (they are sent again as they are)
    assert job is not None
    job.refresh_from_db()
    assert job.args == [text] and job.kwargs == {"key": text}
    # And the error's text with the NUL shown as U+FFFD, the traceback cut to its last 10,000 characters
    assert job.exception_message.startswith("bad \ufffd\x01")
    assert "\x00" not in job.exception_message + job.traceback
    assert len(job.traceback) == 10_000


def test_a_nul_in_an_argument_is_sent_again_exactly(broker: redis.Redis, make_failed_job: Any) -> None:
    args, kwargs = ["a\x00b"], {"reason": "\x00 and \ufdd0\ufdd2, which is not a NUL"}
    job = make_failed_job(task_name="tests.tasks.always_fail", args=args, kwargs=kwargs)

    assert sweep.sweep().sent == 1

    message = json.loads(broker.lpop("default"))
    sent_args, sent_kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (sent_args, sent_kwargs) == (args, kwargs)
    assert (FailedJob.objects.get(pk=job.pk).args, FailedJob.objects.get(pk=job.pk).kwargs) == (args, kwargs)


@pytest.mark.parametrize(
    "value",
    [
        ["\x00"],
        {"\x00k": "\x00"},
        ["\ufdd0", "\ufdd0\ufdd2", "\ufdd0\ufdd1", "\ufdd0\x00\ufdd2"],
        [1, None, 2.5, "plain"],
    ],
)
def test_the_nul_safe_json_gives_back_exactly_what_it_was_given(value: Any) -> None:
    from queueing.jsoncodec import NulSafeDecoder, NulSafeEncoder

    text = json.dumps(value, cls=NulSafeEncoder)

    assert "\\u0000" not in text
    assert json.loads(text, cls=NulSafeDecoder) == value


# --- the admin's forms: the sweep's schedule ------------------------------------------------------------------


@pytest.mark.parametrize(
    "every", ["\x00", "1\x00", str(10**30), "-5", "0", "1e9", CONTROL, "9" * 100_000], ids=lambda v: repr(v)[:20]
)
def test_the_interval_form_refuses_hostile_values_without_a_500(admin_client: Client, every: str) -> None:
    response = admin_client.post(
        reverse("admin:django_celery_beat_intervalschedule_add"), {"every": every, "period": "seconds"}
    )

    assert response.status_code == 200, response.content[:300]  # the form again, with its error
    assert b"errornote" in response.content or b"errorlist" in response.content


@pytest.mark.parametrize("name", ["nul", "control", "html"])
def test_the_periodic_task_form_refuses_or_escapes_hostile_text(admin_client: Client, name: str) -> None:
    from queueing.schedule import SWEEP_TASK_NAME, ensure_sweep_schedule

    sweep = ensure_sweep_schedule()
    url = reverse("admin:django_celery_beat_periodictask_change", args=[sweep.pk])
    form = {
        "name": HOSTILE[name],
        "regtask": "queueing.sweep_failed_jobs",
        "task": "",
        "interval": sweep.interval_id,
        "args": HOSTILE[name],
        "kwargs": "{}",
        "enabled": "on",
    }

    response = admin_client.post(url, form)
    listed = admin_client.get(reverse("admin:django_celery_beat_periodictask_changelist"), {"q": HOSTILE[name]})

    assert response.status_code in (200, 302), response.content[:300]
    assert listed.status_code in (200, 302)
    sweep.refresh_from_db()
    assert sweep.name == SWEEP_TASK_NAME  # the sweep is never renamed
