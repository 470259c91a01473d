"""python manage.py check_queue: the seed's block per queue, --queue, --json, and a broker that does not answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import Client

from queueing.models import FailedJob
from queueing.status import StatusOut
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


@pytest.fixture(autouse=True)
def quick_inspect(configure: Any) -> None:
    configure(STATUS_INSPECT_TIMEOUT_SECONDS=0.2, STATUS_COUNTS_CACHE_SECONDS=0, API_TOKEN="t0ken")


def run(*args: str) -> str:
    out = StringIO()
    call_command("check_queue", *args, stdout=out)
    return out.getvalue()


def test_it_prints_the_seeds_block_for_each_queue(make_failed_job: Any, broker: redis.Redis) -> None:
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)

    output = run()

    assert (
        "Queue: whatsapp-send\n"
        "  Waiting:   0\n"
        "  Active:    n/a (no worker answered within 0.2 s)\n"
        "  Completed: 0\n"
        "  Failed:    2 ⚠\n"
        "  Delayed:   n/a (no worker answered within 0.2 s)\n"
        "  Dead:      1\n"
    ) in output
    assert "Queue: default\n  Waiting:   0\n" in output
    assert "  Failed:    0\n" in output  # no warning mark without failures


def test_the_queue_option_shows_one_queue(make_failed_job: Any, broker: redis.Redis) -> None:
    output = run("--queue", "default")

    assert output.startswith("Queue: default\n")
    assert "whatsapp-send" not in output


def test_an_unknown_queue_fails_and_lists_the_known_ones(broker: redis.Redis) -> None:
    with pytest.raises(CommandError, match="unknown queue 'whatsap-send'; known queues: default, whatsapp-send"):
        run("--queue", "whatsap-send")


def test_json_has_the_apis_structure(make_failed_job: Any, broker: redis.Redis, client: Client) -> None:
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)

    printed = json.loads(run("--json"))
    answered = client.get("/api/queue/status", headers={"Authorization": "Bearer t0ken"}).json()

    StatusOut.model_validate(printed)
    assert printed["queues"]["whatsapp-send"]["dead"] == 1
    assert printed["queues"]["whatsapp-send"]["recentFailed"][0]["status"] == "dead"
    assert printed.keys() == answered.keys()
    assert printed["queues"]["whatsapp-send"].keys() == answered["queues"]["whatsapp-send"].keys()


@pytest.fixture
def silent_redis(silent_port: int) -> str:
    """A Redis URL whose server accepts connections and never answers."""
    return f"redis://127.0.0.1:{silent_port}/0"


@pytest.mark.slow
def test_a_broker_that_does_not_answer_is_reported_not_waited_for(
    make_failed_job: Any, subprocess_env: dict[str, str], silent_redis: str
) -> None:
    # Given a broker that accepts connections and never answers
    make_failed_job(queue="whatsapp-send")
    env = {**subprocess_env, "REDIS_URL": silent_redis, "QUEUEING_STATUS_BROKER_TIMEOUT_SECONDS": "0.5"}

    # When check_queue runs from the shell
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", "check_queue", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started

    # Then it answers what the database knows and names the rest, after one broker timeout, not a hang
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    queue = body["queues"]["whatsapp-send"]
    assert queue["failed"] == 1
    assert queue["waiting"] is queue["active"] is queue["completed"] is queue["delayed"] is None
    assert queue["unavailable"] == ["waiting", "active", "completed", "delayed"]
    assert body["unavailable"]["waiting"].startswith("the broker did not answer: TimeoutError")
    assert elapsed < 20, elapsed  # the process start-up is most of it; the broker costs one 0.5 s timeout


def test_it_counts_afresh_even_when_the_status_api_has_a_cached_copy(
    make_failed_job: Any, broker: redis.Redis, configure: Any
) -> None:
    configure(STATUS_INSPECT_TIMEOUT_SECONDS=0.2, STATUS_COUNTS_CACHE_SECONDS=60, API_TOKEN="t0ken")
    job = make_failed_job(queue="whatsapp-send")
    # Given a dashboard that just read the counts (now cached for a minute)
    response = Client().get("/api/queue/status", headers={"Authorization": "Bearer t0ken"})
    assert response.json()["queues"]["whatsapp-send"]["failed"] == 1

    # When the job is resolved
    FailedJob.objects.filter(pk=job.pk).update(status=Status.RESOLVED)

    # Then check_queue shows it at once
    assert "  Failed:    0\n" in run("--queue", "whatsapp-send")
