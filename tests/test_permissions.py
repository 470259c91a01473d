"""Least privilege: each verb its own permission, read and write tokens, and who acted in the job's history."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Group, Permission, User
from django.core import checks as django_checks
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from queueing import operations
from queueing.models import FailedJob

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status
CHANGELIST = "admin:queueing_failedjob_changelist"
READ, WRITE, LEGACY = "read-secret-0123456789", "write-secret-0123456789", "legacy-secret-0123456789"
VERBS = ("retry_failedjob", "discard_failedjob", "mark_dead_failedjob")


@pytest.fixture(autouse=True)
def tokens(configure: Any) -> None:
    configure(
        API_TOKEN=LEGACY,
        API_TOKENS=f"grafana:read:{READ},deployer:write:sha256:{hashlib.sha256(WRITE.encode()).hexdigest()}",
        STATUS_COUNTS_CACHE_SECONDS=0,
        STATUS_INSPECT_TIMEOUT_SECONDS=0.05,
    )


def staff(username: str, *codenames: str, groups: tuple[str, ...] = ()) -> Client:
    user = User.objects.create_user(username, password="pw-for-tests", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="queueing", codename__in=codenames))
    user.groups.set(Group.objects.filter(name__in=groups))
    client = Client()
    client.force_login(user)
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def retry_all(client: Client, **kwargs: Any) -> Any:
    body = json.dumps({"queueName": "default"})
    return client.post("/api/queue/retry-all-failed", body, content_type="application/json", **kwargs)


# --- the groups -------------------------------------------------------------------------------------------------


def test_the_migration_makes_a_viewers_and_an_operators_group() -> None:
    def codenames(name: str) -> set[str]:
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    assert "view_failedjob" in codenames("queueing viewers")
    assert not codenames("queueing viewers") & {*VERBS, "pause_retries", "change_failedjob"}
    assert {"view_failedjob", *VERBS, "pause_retries"} <= codenames("queueing operators")


def test_who_could_change_failed_jobs_before_the_upgrade_keeps_the_verbs() -> None:
    # Given a user and a group that held change_failedjob (which let them act before the verbs had their own)
    change = Permission.objects.get(codename="change_failedjob")
    user = User.objects.create_user("old-operator", is_staff=True)
    user.user_permissions.add(change)
    group = Group.objects.create(name="old operators")
    group.permissions.add(change)

    # When the migration's step runs
    migration = importlib.import_module("queueing.migrations.0010_guard_verb_permissions")
    state = MigrationExecutor(connection).loader.project_state(("queueing", "0010_guard_verb_permissions"))
    with connection.schema_editor() as editor:
        migration.forwards(state.apps, editor)

    # Then both have the three verbs
    user = User.objects.get(pk=user.pk)
    assert all(user.has_perm(f"queueing.{codename}") for codename in VERBS)
    assert set(VERBS) <= set(group.permissions.values_list("codename", flat=True))


# --- the admin ---------------------------------------------------------------------------------------------------


def test_a_viewer_reads_everything_and_can_act_on_nothing(
    make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    job = make_failed_job()
    viewer = staff("viewer", groups=("queueing viewers",))

    listed = viewer.get(reverse(CHANGELIST))
    detail = viewer.get(reverse("admin:queueing_failedjob_change", args=[job.pk]))
    for verb in ("retry", "discard", "mark_dead"):
        response = viewer.post(
            reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": verb, "post": "yes"}
        )
        assert response.status_code == 403
    action = viewer.post(
        reverse(CHANGELIST), {"action": "retry_selected", "_selected_action": [str(job.pk)], "post": "yes"}
    )

    assert listed.status_code == detail.status_code == 200
    assert 'name="action"' not in listed.content.decode()  # no action offered
    assert 'name="verb"' not in detail.content.decode()  # no button
    assert action.status_code in (200, 302)
    assert FailedJob.objects.get(pk=job.pk).status == Status.FAILED
    assert broker.llen("default") == 0


def test_each_verb_needs_its_own_permission(make_failed_job: Callable[..., FailedJob], broker: redis.Redis) -> None:
    job = make_failed_job()
    retrier = staff("retrier", "view_failedjob", "retry_failedjob")

    changelist = retrier.get(reverse(CHANGELIST)).content.decode()
    detail = retrier.get(reverse("admin:queueing_failedjob_change", args=[job.pk])).content.decode()
    discard = retrier.post(
        reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": "discard", "post": "yes"}
    )
    retry = retrier.post(reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": "retry", "post": "yes"})

    assert 'value="retry_selected"' in changelist
    assert 'value="discard_selected"' not in changelist and 'value="mark_dead_selected"' not in changelist
    assert 'value="retry"' in detail and 'value="discard"' not in detail
    assert discard.status_code == 403
    assert retry.status_code == 302
    assert FailedJob.objects.get(pk=job.pk).status == Status.RETRYING
    assert broker.llen("default") == 1


def test_the_admin_writes_who_acted_in_the_history(
    make_failed_job: Callable[..., FailedJob], broker: redis.Redis
) -> None:
    retried, discarded, marked = make_failed_job(), make_failed_job(), make_failed_job()
    alice = staff("alice", groups=("queueing operators",))

    for job, verb in ((retried, "retry"), (discarded, "discard"), (marked, "mark_dead")):
        alice.post(reverse("admin:queueing_failedjob_operate", args=[job.pk]), {"verb": verb, "post": "yes"})

    for job, event in ((retried, "retry_requested"), (discarded, "discarded"), (marked, "dead")):
        job.refresh_from_db()
        assert (job.history[-1]["event"], job.history[-1]["by"]) == (event, "user:alice")


# --- the API: read and write tokens, sessions ----------------------------------------------------------------


def test_a_read_token_reads_and_may_not_act(client: Client, broker: redis.Redis, make_failed_job: Any) -> None:
    make_failed_job()
    body = json.dumps({"sessionId": "default", "to": "+15550001", "message": "hi"})

    status = client.get("/api/queue/status", headers=bearer(READ))
    metrics = client.get("/metrics", headers=bearer(READ))
    retry = retry_all(client, headers=bearer(READ))
    send = client.post("/api/send-message", body, content_type="application/json", headers=bearer(READ))

    assert (status.status_code, metrics.status_code) == (200, 200)
    assert (retry.status_code, send.status_code) == (403, 403)
    assert retry.json()["error"] == (
        "forbidden: token 'grafana' may only read; send a token with the write scope (QUEUEING_API_TOKENS: "
        "name:write:<token>)"
    )
    assert broker.llen("default") == broker.llen("whatsapp-send") == 0


def test_a_write_token_reads_and_acts_and_is_named_in_the_history(
    client: Client, broker: redis.Redis, make_failed_job: Any
) -> None:
    job = make_failed_job()

    status = client.get("/api/queue/status", headers=bearer(WRITE))
    retry = retry_all(client, headers=bearer(WRITE))

    assert status.status_code == 200
    assert retry.json() == {"success": True, "queueName": "default", "total": 1, "retried": 1}
    job.refresh_from_db()
    assert job.history[-1]["event"] == "retry_requested"
    assert job.history[-1]["by"] == "token:deployer"


def test_the_single_api_token_still_reads_and_writes(client: Client, broker: redis.Redis, make_failed_job: Any) -> None:
    job = make_failed_job()

    assert client.get("/api/queue/status", headers=bearer(LEGACY)).status_code == 200
    assert retry_all(client, headers=bearer(LEGACY)).status_code == 200
    job.refresh_from_db()
    assert job.history[-1]["by"] == "token:api-token"


@pytest.mark.parametrize("token", ["wrong", READ + "x", "sha256:" + hashlib.sha256(WRITE.encode()).hexdigest(), ""])
def test_an_unknown_token_or_a_digest_sent_as_the_token_is_a_401(client: Client, token: str) -> None:
    assert client.get("/api/queue/status", headers=bearer(token)).status_code == 401


def test_a_staff_session_needs_the_retry_permission_to_retry(
    broker: redis.Redis, make_failed_job: Callable[..., FailedJob]
) -> None:
    job = make_failed_job()
    viewer = staff("viewer", "view_failedjob")
    operator = staff("bob", "view_failedjob", "retry_failedjob")

    refused = retry_all(viewer)
    allowed = retry_all(operator)

    assert viewer.get("/api/queue/status").status_code == 200
    assert refused.status_code == 403
    assert "lacks the permission 'queueing.retry_failedjob'" in refused.json()["error"]
    assert allowed.status_code == 200
    job.refresh_from_db()
    assert job.history[-1]["by"] == "user:bob"


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ("grafana:admin:secret", "scope must be read or write"),
        ("grafana:read:", "the token is empty"),
        ("bad name:read:secret", "token name 'bad name'"),
        ("a:read:sha256:xyz", "64 hex digits"),
        ("a:read:one,a:write:two", "used twice"),
    ],
)
def test_a_malformed_token_entry_is_a_system_check_error_and_lets_no_one_in(
    client: Client, configure: Any, entries: str, problem: str
) -> None:
    configure(API_TOKEN="", API_TOKENS=entries)

    errors = [m for m in django_checks.run_checks() if m.id == "queueing.E110"]

    assert len(errors) == 1 and problem in errors[0].msg
    assert "secret" not in errors[0].msg.split(":", 1)[1].replace("the token is empty", "")
    assert client.get("/api/queue/status", headers=bearer("secret")).status_code == 401


# --- commands and the Python API -----------------------------------------------------------------------------


def test_the_command_and_the_python_api_name_themselves(broker: redis.Redis, make_failed_job: Any) -> None:
    from queueing.retry import get_retry_manager

    by_command = make_failed_job()
    call_command("retry_all_failed", queue="default", stdout=open("/dev/null", "w"))  # noqa: SIM115
    by_python = make_failed_job()
    get_retry_manager().retry_all_failed("default")

    by_command.refresh_from_db()
    by_python.refresh_from_db()
    assert by_command.history[-1]["by"].startswith("command:retry_all_failed (os user ")
    assert by_python.history[-1]["by"] == "python-api"


def test_an_operator_verb_without_an_actor_writes_no_by(make_failed_job: Any) -> None:
    job = make_failed_job()

    operations.discard(ids=[job.pk])

    job.refresh_from_db()
    assert "by" not in job.history[-1]
