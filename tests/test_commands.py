"""python manage.py retry_all_failed"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command

from queueing.models import FailedJob
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("retry_all_failed", *args, stdout=out)
    return out.getvalue()


def test_it_sends_every_failed_and_dead_job_of_the_queue(make_failed_job: Any, broker: redis.Redis) -> None:
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send", status=FailedJob.Status.DEAD)

    assert "queue 'whatsapp-send': found 2 failed or dead job(s), sent 2" in run("--queue", "whatsapp-send")
    assert broker.llen("whatsapp-send") == 2


def test_without_a_queue_it_covers_all_queues(make_failed_job: Any, broker: redis.Redis) -> None:
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="default")

    assert "all queues: found 2 failed or dead job(s), sent 2" in run()


def test_a_dry_run_counts_and_sends_nothing(make_failed_job: Any, broker: redis.Redis) -> None:
    make_failed_job(queue="whatsapp-send")

    assert "found 1 failed or dead job(s); dry run, none sent" in run("--queue", "whatsapp-send", "--dry-run")
    assert broker.llen("whatsapp-send") == 0
    assert FailedJob.objects.get().status == FailedJob.Status.FAILED


def test_an_unknown_queue_fails_and_lists_the_known_ones(make_failed_job: Any) -> None:
    make_failed_job(queue="reports")

    with pytest.raises(
        CommandError, match="unknown queue 'whatsap-send'; known queues: default, reports, whatsapp-send"
    ):
        run("--queue", "whatsap-send")


def test_an_unknown_queue_exits_non_zero_from_the_shell(subprocess_env: dict[str, str]) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "manage.py", "retry_all_failed", "--queue", "nope"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "unknown queue 'nope'; known queues: default, whatsapp-send" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["manage.py", "retry_all_failed", "--queue", "whatsapp-send"],
        # A bare script using the Python API: no URL checks import the tasks on its behalf here.
        [
            "-c",
            "import django; django.setup(); from queueing.retry import get_retry_manager; "
            "print(get_retry_manager().retry_all_failed('whatsapp-send'))",
        ],
    ],
    ids=["command", "python-api"],
)
def test_a_fresh_process_knows_the_projects_tasks(
    command: list[str], make_failed_job: Any, broker: redis.Redis, subprocess_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    # Celery's autodiscovery is lazy outside the worker: the process must load the task modules itself
    make_failed_job(
        queue="whatsapp-send",
        task_name="messaging.tasks.send_whatsapp_message",
        args=["default", "+15550001", "hi"],
    )

    done = subprocess.run(
        [sys.executable, *command], env=subprocess_env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert done.returncode == 0, done.stderr
    assert "sent 1" in done.stdout or "'retried': 1" in done.stdout, done.stdout
    assert broker.llen("whatsapp-send") == 1
    assert FailedJob.objects.get().status == FailedJob.Status.RETRYING
