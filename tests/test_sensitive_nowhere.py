"""The done-when of sensitive arguments: a secret never appears in clear in the database, the worker's log, the
admin, the API, the alerts, the history or Flower, while the task sent again still gets the real value.

One call through the real system: a prefork worker subprocess (``-l info``, its output captured, Beat inside so
that the sweep runs), a real Flower subprocess listening to the task events, then every place grepped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from queueing import alerts, sensitive
from queueing.models import FailedJob
from tests import tasks
from tests.conftest import ROOT, free_port, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(240)]

FLOWER_LOGIN = ("flower-user", "flower-pass-0123")


def database_dump() -> str:
    """Every row of every table of the test database, as text."""
    lines = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            lines += [f"{table}: {row!r}" for row in cursor.fetchall()]
    return "\n".join(lines)


@pytest.fixture
def flower(subprocess_env: dict[str, str], broker: redis.Redis) -> Iterator[str]:
    """A real Flower (``celery -A project flower``) on a free port, listening to the task events; its URL."""
    port = free_port()
    env = {**subprocess_env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)}
    command = [sys.executable, "-m", "celery", "-A", "project", "flower", f"--port={port}", "--address=127.0.0.1"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, "Flower exited"
        try:
            return requests.get(url + "/healthcheck", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, timeout=60, interval=0.2, what="Flower to answer")
        yield url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def flower_tasks(url: str) -> dict[str, Any]:
    return dict(requests.get(url + "/api/tasks", auth=FLOWER_LOGIN, timeout=10).json())


def test_a_secret_is_nowhere_in_clear_yet_the_retry_gets_it(
    subprocess_env: dict[str, str], broker: redis.Redis, flower: str, tmp_path: Path, configure: Any
) -> None:
    # Given a prefork worker with Beat (the sweep) whose output is captured, its own encryption key, and Flower
    encryption_key = Fernet.generate_key().decode()
    log_file = tmp_path / "worker.log"
    env = {
        **subprocess_env,
        "QUEUEING_ENCRYPTION_KEYS": encryption_key,
        "QUEUEING_IMMEDIATE_RETRIES": "1",
        "QUEUEING_RETRY_DELAY": "0",
        "QUEUEING_CHECK_INTERVAL": "1",
    }
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info", "-c", "2"]
    command += ["-P", "prefork", "--include", "tests.tasks", "-n", f"secrets-{uuid.uuid4().hex[:8]}@%h"]
    command += ["--without-gossip", "--without-mingle", "-Q", "default,whatsapp-send"]
    with log_file.open("w") as out:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log_file.read_text(), timeout=60, what="the worker to start")
        warm_up: list[str] = []

        def flower_listens() -> bool:  # Flower sees the events from the moment its receiver is connected
            warm_up.append(tasks.succeed.delay("flower-warm-up").id)
            return any(task_id in flower_tasks(flower) for task_id in warm_up)

        wait_for(flower_listens, timeout=60, interval=0.5, what="Flower to list a task")

        # When a task is called with a secret by position (sensitive_args), by name and in a nested dict; it
        # fails for good (the call and its immediate retry), the sweep sends it again, and that retry fails
        # once more before its own immediate retry succeeds
        secret = f"S3cr3t-{uuid.uuid4().hex}"
        pin, token, authorization = f"{secret}-pin", f"{secret}-token", f"Bearer {secret}-auth"
        key = uuid.uuid4().hex
        origin = tasks.use_secrets.delay(key, pin, 3, token=token, headers={"Authorization": authorization}).id

        def resolved() -> FailedJob | None:
            job = FailedJob.objects.filter(origin_task_id=origin).first()
            return job if job is not None and job.status == FailedJob.Status.RESOLVED else None

        job: FailedJob = wait_for(resolved, timeout=90, what="the job resolved by the sweep's retry")

        # Then every run, the sweep's retry included, got the real secrets
        expected = hashlib.sha256("|".join([pin, token, authorization]).encode()).hexdigest()
        assert [seen.decode() for seen in broker.lrange(f"seen:{key}", 0, -1)] == [expected] * 4
        assert job.retry_count == 1

        # And none of them is in clear anywhere people or machines read
        admin = Client()
        admin.force_login(User.objects.create_superuser("root", password="pw-for-tests"))
        change = reverse("admin:queueing_failedjob_change", args=[job.pk])
        pages = {
            "admin list": admin.get(reverse("admin:queueing_failedjob_changelist")),
            "admin change page": admin.get(change),
            "admin history page": admin.get(reverse("admin:queueing_failedjob_history", args=[job.pk])),
            "API status": admin.get("/api/queue/status"),
            "API groups": admin.get("/api/queue/groups"),
            "metrics": admin.get("/metrics"),
        }
        assert {what: page.status_code for what, page in pages.items()} == dict.fromkeys(pages, 200)
        check_queue = io.StringIO()
        call_command("check_queue", "--json", stdout=check_queue)
        configure(ALERT_FAILED_THRESHOLD=1, ALERT_DEAD_THRESHOLD=1)
        fired = alerts.evaluate(sinks=[])

        def flower_saw_it() -> dict[str, Any] | None:
            shown = flower_tasks(flower)
            ours = [task for task in shown.values() if task.get("name") == "tests.tasks.use_secrets"]
            return shown if len(ours) >= 1 and all(task.get("args") for task in ours) else None

        flower_view = wait_for(flower_saw_it, timeout=20, interval=0.5, what="Flower to show the task's args")
        flower_info = requests.get(f"{flower}/api/task/info/{origin}", auth=FLOWER_LOGIN, timeout=10).text

        job.refresh_from_db()
        places = {
            "the database (every table)": database_dump(),
            "the worker's log": log_file.read_text(),
            **{what: page.content.decode() for what, page in pages.items()},
            "check_queue --json": check_queue.getvalue(),
            "the alerts": json.dumps([alert.as_dict() for alert in fired]),
            "the job's history": json.dumps(job.history),
            "Flower's tasks": json.dumps(flower_view),
            "Flower's task info": flower_info,
        }
        assert [where for where, text in places.items() if secret in text] == []
        assert [where for where, text in places.items() if encryption_key in text] == []

        # (and each place was really looked at: the call is there, masked or encrypted)
        assert sensitive.MASK in places["admin change page"]
        assert sensitive.ENCRYPTED in places["the database (every table)"]
        assert f"job {job.pk} (tests.tasks.use_secrets) resolved" in places["the worker's log"]
        ours = [task for task in flower_view.values() if task.get("name") == "tests.tasks.use_secrets"]
        assert all(sensitive.MASK in task["args"] and sensitive.MASK in task["kwargs"] for task in ours), ours
        assert key in json.dumps(ours)
    finally:
        stop(worker)
