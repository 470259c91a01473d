"""GET /api/queue/status: the figures of each queue, where they come from, and what it does when a source is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messaging.tasks import send_whatsapp_message
from queueing import breaker, status
from queueing.models import FailedJob
from queueing.status import StatusOut, counter_store, jobs, workers
from queueing.status import broker as status_broker
from tests import tasks
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "test-token-0123456789"
Status = FailedJob.Status


@pytest.fixture
def settings_for_status(configure: Any) -> Callable[..., None]:
    """The fast settings, the API token, fresh counts on every request; more keys as arguments."""

    def apply(**overrides: Any) -> None:
        configure(
            **{"API_TOKEN": TOKEN, "STATUS_COUNTS_CACHE_SECONDS": 0, "STATUS_INSPECT_TIMEOUT_SECONDS": 0.3, **overrides}
        )

    apply()
    return apply


def get_status(client: Client, query: str = "") -> Any:
    response = client.get(f"/api/queue/status{query}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    return response.json()


def test_status_answers_every_known_queue_in_the_seeds_shape(
    client: Client, broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    # Given failed, dead, retrying and resolved jobs on whatsapp-send, and one failed job on default
    send = {"queue": "whatsapp-send", "task_name": "messaging.tasks.send_whatsapp_message"}
    make_failed_job(status=Status.FAILED, **send)
    make_failed_job(status=Status.FAILED, **send)
    make_failed_job(status=Status.DEAD, **send)
    make_failed_job(status=Status.RETRYING, **send)
    make_failed_job(status=Status.RESOLVED, **send)
    make_failed_job(queue="default")

    # When the status is asked for
    body = get_status(client)

    # Then each queue has the seed's figures, failed and dead counted from the table
    StatusOut.model_validate(body)
    assert set(body["queues"]) == {"default", "whatsapp-send"}
    whatsapp = body["queues"]["whatsapp-send"]
    assert {k: whatsapp[k] for k in ("waiting", "completed", "failed", "dead", "retrying")} == {
        "waiting": 0,
        "completed": 0,
        "failed": 2,
        "dead": 1,
        "retrying": 1,
    }
    assert len(whatsapp["recentFailed"]) == 3
    assert body["queues"]["default"]["failed"] == 1


def test_recent_failed_lists_the_ten_newest_failed_and_dead_jobs_never_those_being_retried(
    client: Client, broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    now = timezone.now()
    # Given 12 failed or dead jobs a minute apart, and a job being retried that failed most recently of all
    jobs = [
        make_failed_job(
            status=Status.DEAD if i % 3 == 0 else Status.FAILED,
            last_failed_at=now - timedelta(minutes=i),
            attempts=4 + i,
            exception_class="messaging.gateway.GatewayUnavailable",
            exception_message=f"gateway answered 503 ({i})",
        )
        for i in range(1, 13)
    ]
    make_failed_job(status=Status.RETRYING, last_failed_at=now)

    recent = get_status(client, "?queueName=default")["queues"]["default"]["recentFailed"]

    # Then the ten newest are listed, newest first, with the seed's fields
    assert [item["id"] for item in recent] == [job.pk for job in jobs[:10]]
    first = recent[0]
    assert first["name"] == "tests.tasks.succeed"
    assert first["failedReason"] == "messaging.gateway.GatewayUnavailable: gateway answered 503 (1)"
    assert first["attemptsMade"] == 5
    assert first["timestamp"] == round(jobs[0].last_failed_at.timestamp() * 1000)
    assert first["status"] == "failed"
    assert first["retryCount"] == 0
    assert first["nextRetryAt"] == round(jobs[0].next_retry_at.timestamp() * 1000)
    assert recent[2]["status"] == "dead"


def test_waiting_counts_the_messages_on_the_broker_priority_lists_included(
    client: Client, broker: redis.Redis, settings_for_status: Any
) -> None:
    # Given three messages on whatsapp-send and no worker, one of them with a priority
    tasks.succeed.apply_async(args=["a"], queue="whatsapp-send")
    tasks.succeed.apply_async(args=["b"], queue="whatsapp-send")
    tasks.succeed.apply_async(args=["c"], queue="whatsapp-send", priority=9)

    body = get_status(client)

    # Then kombu kept the prioritized one in a list of its own, and waiting counts all three
    assert broker.llen("whatsapp-send") == 2
    assert broker.llen("whatsapp-send\x06\x169") == 1
    assert body["queues"]["whatsapp-send"]["waiting"] == 3
    assert body["queues"]["default"]["waiting"] == 0


def test_without_a_worker_active_and_delayed_are_null_and_the_workers_are_asked_once_per_period(
    client: Client, broker: redis.Redis, settings_for_status: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_for_status(STATUS_WORKERS_CACHE_SECONDS=30, STATUS_INSPECT_TIMEOUT_SECONDS=1.0)
    asked, answered, go_on = threading.Event(), threading.Event(), threading.Event()
    calls: list[dict[str, Any]] = []
    real_ask = workers.ask_workers

    def ask_when_let(**kwargs: Any) -> workers.WorkersReport:
        # The broadcast waits for the test's word: a request that waited for it would hang here
        calls.append(kwargs)
        asked.set()
        go_on.wait(timeout=30)
        report = real_ask(**kwargs)
        answered.set()
        return report

    monkeypatch.setattr(workers, "ask_workers", ask_when_let)

    # When a dashboard polls with no worker up, the first answer comes while the workers are still being asked
    first = get_status(client)
    assert asked.wait(timeout=10), "the workers were never asked"
    assert not answered.is_set()  # the answer did not wait for the broadcast
    go_on.set()
    assert first["queues"]["default"]["active"] is None
    assert "being asked" in first["unavailable"]["active"]

    # Then, once nobody answered, that is the answer: null, named, with the reason, and cached
    body = wait_for(
        lambda: (b := get_status(client))["workers"]["reportedAt"] and b, what="the workers' (empty) report"
    )
    for _ in range(20):
        body = get_status(client)
    for name in ("default", "whatsapp-send"):
        queue = body["queues"][name]
        assert queue["active"] is None and queue["delayed"] is None
        assert queue["unavailable"] == ["active", "delayed"]
    assert body["unavailable"] == {
        "active": "no worker answered within 1 s",
        "delayed": "no worker answered within 1 s",
    }
    assert body["workers"]["names"] == []
    assert len(calls) == 1


def test_failed_and_dead_counts_are_cached_for_the_configured_seconds(
    client: Client, broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=60)
    before = get_status(client)

    # When a job fails within the cache period
    make_failed_job(queue="whatsapp-send")
    during = get_status(client)

    # Then the cached counts are answered, with the time they were taken; without the cache it is seen
    assert during["queues"]["whatsapp-send"]["failed"] == before["queues"]["whatsapp-send"]["failed"] == 0
    assert during["countsAsOf"] == before["countsAsOf"]
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=0)
    assert get_status(client)["queues"]["whatsapp-send"]["failed"] == 1


def test_completed_counts_the_tasks_that_succeeded_on_each_queue(
    client: Client, celery_worker: Any, broker: redis.Redis, settings_for_status: Any
) -> None:
    key = uuid.uuid4().hex
    tasks.succeed.apply_async(args=[key], queue="whatsapp-send")
    tasks.succeed.apply_async(args=[key], queue="whatsapp-send")
    tasks.succeed.apply_async(args=[key], queue="default")

    wait_for(lambda: broker.get(f"runs:{key}") == b"3", what="the three tasks")
    body = wait_for(
        lambda: (b := get_status(client))["queues"]["whatsapp-send"]["completed"] == 2 and b, what="completed"
    )
    assert body["queues"]["default"]["completed"] == 1


def test_an_unknown_queue_is_a_404_listing_the_known_ones(
    client: Client, broker: redis.Redis, settings_for_status: Any
) -> None:
    response = client.get("/api/queue/status?queueName=whatsap-send", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 404
    assert response.json()["error"] == "unknown queue 'whatsap-send'; known queues: default, whatsapp-send"
    assert response.json()["knownQueues"] == ["default", "whatsapp-send"]


def test_a_queue_known_only_from_old_rows_can_be_asked_for(
    client: Client, broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    make_failed_job(queue="reports", status=Status.RESOLVED)

    body = get_status(client, "?queueName=reports")

    assert list(body["queues"]) == ["reports"]
    assert body["queues"]["reports"]["failed"] == 0


# --- a real worker process ------------------------------------------------------------------------------------


@pytest.fixture
def silent_server(silent_port: int) -> str:
    """A hung gateway: it accepts connections and never answers."""
    return f"http://127.0.0.1:{silent_port}"


@pytest.fixture
def worker_process(subprocess_env: dict[str, str], silent_server: str) -> Iterator[subprocess.Popen[str]]:
    """``celery -A project worker`` (prefork, 2 processes: one busy, the main process still answers)."""
    env = {
        **subprocess_env,
        "WHATSAPP_GATEWAY_URL": silent_server,
        "WHATSAPP_GATEWAY_TIMEOUT_SECONDS": "60",
        "QUEUEING_BACKOFF_BASE": "60",  # an immediate retry is held by the worker for a minute: delayed
        "QUEUEING_LEASE_SECONDS": "600",  # longer than the hard limit plus a 240 s countdown (queueing/checks.py)
    }
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-I", "tests.tasks"]
    command += ["-Q", "default,whatsapp-send", "-c", "2", "-n", f"status-{uuid.uuid4().hex[:8]}@%h", "-l", "INFO"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its tasks are stuck on purpose: no warm shutdown
        process.wait(timeout=30)


@pytest.mark.slow
def test_active_and_delayed_come_from_a_real_worker(
    client: Client, broker: redis.Redis, worker_process: subprocess.Popen[str], settings_for_status: Any
) -> None:
    settings_for_status(STATUS_WORKERS_CACHE_SECONDS=0.2, STATUS_INSPECT_TIMEOUT_SECONDS=1.0)

    # Given a message stuck on a gateway that never answers, and a task waiting for its immediate retry
    send_whatsapp_message.delay("default", "+15550001", "hi")
    tasks.always_fail.delay(uuid.uuid4().hex)

    # Then the worker's report shows one active on whatsapp-send and one delayed (and none active) on default.
    # (For a moment the failing call can be active and its retry already delayed: wait for the steady state.)
    def seen() -> Any:
        body = get_status(client)
        queues = body["queues"]
        steady = queues["default"]["active"] == 0 and queues["default"]["delayed"] == 1
        return queues["whatsapp-send"]["active"] == 1 and steady and body

    body = wait_for(seen, timeout=60, interval=0.2, what="the worker's active and delayed tasks")
    assert body["queues"]["whatsapp-send"]["waiting"] == 0
    assert body["unavailable"] == {}
    assert len(body["workers"]["names"]) == 1
    assert worker_process.poll() is None


def test_the_status_json_matches_its_openapi_schema(
    client: Client, broker: redis.Redis, settings_for_status: Any
) -> None:
    schema = json.loads(client.get("/api/openapi.json").content)

    operation = schema["paths"]["/api/queue/status"]["get"]
    assert operation["parameters"][0]["name"] == "queueName"
    assert "StatusOut" in json.dumps(operation["responses"]["200"])
    assert {"waiting", "active", "completed", "failed", "delayed", "dead", "recentFailed"} <= set(
        schema["components"]["schemas"]["QueueStatusOut"]["properties"]
    )


# --- the parts: one grouped count, typed copies, one "did not answer" ---------------------------------------


def test_job_counts_has_every_known_queue_with_zeros_in_one_query(
    make_failed_job: Any, django_assert_num_queries: Any
) -> None:
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    make_failed_job(queue="reports", status=Status.RESOLVED)

    with django_assert_num_queries(1):
        counts = status.job_counts()

    assert list(counts) == ["default", "reports", "whatsapp-send"]
    assert counts["default"] == dict.fromkeys(Status.values, 0)
    assert counts["whatsapp-send"] == {**dict.fromkeys(Status.values, 0), "dead": 1}
    assert counts["reports"]["resolved"] == 1
    # Naming statuses leaves the others out, and a queue with none of them is only there if declared
    assert status.job_counts(statuses=(Status.FAILED, Status.DEAD)) == {
        "default": {"failed": 0, "dead": 0},
        "whatsapp-send": {"failed": 0, "dead": 1},
    }


def test_the_shared_copy_of_the_counts_comes_back_as_typed_records(
    broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=60)
    job = make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    client = status.broker_redis()
    computed = jobs.job_snapshot(client=client)

    # When another request reads the copy kept in Redis
    read = jobs.job_snapshot(client=client)

    # Then it is the same snapshot, with its records typed (datetimes, not epoch numbers in dicts)
    assert broker.exists("queueing:status:jobs:v4") and broker.exists("queueing:status:groups:v1")
    assert read == computed
    (recent,) = read.recent["whatsapp-send"]
    assert isinstance(recent, status.RecentFailure)
    assert recent.id == job.pk and recent.status == "dead"
    assert recent.last_failed_at == job.last_failed_at


def test_the_failure_groups_counts_are_part_of_the_shared_copy_not_counted_per_request(
    broker: redis.Redis, make_failed_job: Any, make_failure_group: Any, settings_for_status: Any
) -> None:
    # Given a failing group whose jobs were counted into the shared copy
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=60)
    group = make_failure_group()
    make_failed_job(group=group)
    client = status.broker_redis()
    computed = jobs.job_snapshot(client=client)

    # When another request reads the status
    with CaptureQueriesContext(connection) as queries:
        read = jobs.job_snapshot(client=client)

    # Then the groups come typed from the copy, without a count of their jobs
    assert not [q["sql"] for q in queries.captured_queries if "queueing_failedjob" in q["sql"]]
    assert read.groups == computed.groups
    (figures,) = read.groups
    assert isinstance(figures, status.GroupFigures)
    assert (figures.id, figures.jobs[Status.FAILED], figures.state) == (group.pk, 1, breaker.State.CLOSED)


def test_the_failure_groups_are_counted_again_less_often_than_the_status_counts(
    broker: redis.Redis, make_failed_job: Any, make_failure_group: Any, settings_for_status: Any
) -> None:
    # Given the counts kept a moment and the groups' counts (which read every job of a group) a minute
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=0.05, STATUS_GROUPS_CACHE_SECONDS=60)
    group = make_failure_group()
    make_failed_job(group=group)
    client = status.broker_redis()
    jobs.job_snapshot(client=client)

    # When another job of that group fails, and the counts' copy is refreshed
    make_failed_job(group=group)
    read = wait_for(
        lambda: (s := jobs.job_snapshot(client=client)).counts["default"][Status.FAILED] == 2 and s,
        what="the counts' copy refreshed",
    )

    # Then the groups come from their own copy, not counted again yet
    (figures,) = read.groups
    assert (figures.id, figures.jobs[Status.FAILED]) == (group.pk, 1)


def test_every_read_of_a_broker_that_does_not_answer_says_so_the_same_way(
    silent_port: int, configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(STATUS_BROKER_TIMEOUT_SECONDS=0.1)
    silent = redis.Redis(port=silent_port, socket_timeout=0.1, socket_connect_timeout=0.1)
    monkeypatch.setattr(counter_store, "broker_redis", lambda: silent)

    reads = {
        "queue lengths": lambda: status_broker.RedisBroker(silent).queue_lengths(["default"]),
        "counters": status.counters,
        "one counter": lambda: counter_store.counter("completed", ["default"]),
        "sweep durations": status.sweep_durations,
    }
    for what, read in reads.items():
        with pytest.raises(status.Unavailable, match=r"^the broker did not answer: TimeoutError"):
            read()
            pytest.fail(f"{what} answered")


def test_a_shared_copy_of_another_shape_is_computed_again_not_a_500(
    client: Client, broker: redis.Redis, make_failed_job: Any, settings_for_status: Any
) -> None:
    settings_for_status(STATUS_COUNTS_CACHE_SECONDS=60)
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    # Given a fresh copy in a shape this release does not read (an older release's rows, say)
    stale_shape = {"at": time.time(), "counts": {}, "recent": {"whatsapp-send": [{"timestamp_ms": 1}]}}
    broker.set("queueing:status:jobs:v2", json.dumps(stale_shape))

    body = get_status(client)

    assert body["queues"]["whatsapp-send"]["dead"] == 1
    assert body["queues"]["whatsapp-send"]["recentFailed"][0]["status"] == "dead"
