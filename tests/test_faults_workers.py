# ruff: noqa: F811  (the fixtures imported from tests/faults.py are parameters of the tests)
"""Fault scenarios: worker processes stopped, killed, timed out and recycled (real signals, real workers).

The scenario table is in docs/reliability.md; each test names its row (F-number).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.faults import (  # noqa: F401  (fixtures)
    Database,
    PrivateRedis,
    check_invariants,
    database,
    database_template,
    fault_env,
    ledger,
    private_redis,
    send,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _key() -> str:
    return uuid.uuid4().hex


def _events(env: dict[str, str], key: str, event: str) -> list[str]:
    return [e for e in ledger(env, key) if e.startswith(f"{event}:")]


def test_f1_a_worker_child_sigkilled_mid_send_is_retried_and_the_gateway_delivers_once(
    fault_env: dict[str, str], database: Database, workers: Any
) -> None:
    from messaging.fake_gateway import FakeGateway

    gateway = FakeGateway(port=0).start()
    try:
        gateway.set_mode("slow", slow_seconds=1.0)
        # The retry of a lost call waits BACKOFF_BASE: longer than the slow send, so the first send has landed
        env = {**fault_env, "WHATSAPP_GATEWAY_URL": gateway.url, "QUEUEING_BACKOFF_BASE": "3"}
        worker = workers(env=env, queues="whatsapp-send")
        [child] = worker.children()

        # When the child process is SIGKILLed while it waits for the gateway's answer
        origin = send(env, "messaging.tasks.send_whatsapp_message", "default", "+15550100", "hi", queue="whatsapp-send")
        wait_for(lambda: gateway.attempts(), what="the send to reach the gateway")
        os.kill(child, signal.SIGKILL)

        # Then Celery retries the call (task_retry_on_worker_lost) and it succeeds: no FailedJob
        wait_for(lambda: len(gateway.attempts()) == 2 and gateway.attempts()[1]["status"], timeout=30, what="retry")
        attempts = gateway.attempts()
    finally:
        gateway.stop()
    # Two attempts with the call's idempotency key; one delivery, the second answered from it (counted at the
    # gateway's attempts, not its deliveries)
    assert [a["idempotencyKey"] for a in attempts] == [origin, origin]
    assert [(a["status"], a["replayed"]) for a in attempts] == [(200, False), (200, True)]
    assert check_invariants(database, origins=[origin], gateway_attempts=attempts) == {origin: "ok"}


def test_f3_a_warm_shutdown_finishes_the_running_call_and_leaves_the_waiting_one_to_the_next_worker(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any
) -> None:
    worker = workers()
    running, waiting = _key(), _key()
    origins = [
        send(fault_env, "tests.fault_tasks.hold", running, 2),
        send(fault_env, "tests.fault_tasks.hold", waiting, 0),
    ]
    wait_for(lambda: _events(fault_env, running, "start"), what="the first call to start")

    # When the worker is asked to stop (SIGTERM) while a call runs and another waits
    worker.terminate()

    # Then the running call finished, and the waiting one is still in the broker, not taken
    assert len(_events(fault_env, running, "end")) == 1
    assert ledger(fault_env, waiting) == []
    assert private_redis.client().llen("default") == 1

    # And the next worker runs the waiting call, and does not run the finished one again
    workers()
    wait_for(lambda: _events(fault_env, waiting, "end"), what="the waiting call to run")
    time.sleep(1)
    assert len(_events(fault_env, running, "start")) == 1
    assert len(_events(fault_env, waiting, "start")) == 1
    assert check_invariants(database, origins=origins) == dict.fromkeys(origins, "ok")


def test_f4_a_call_past_its_hard_time_limit_is_killed_and_recorded_once_under_its_own_id(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any
) -> None:
    env = {**fault_env, "CELERY_TASK_SOFT_TIME_LIMIT": "1", "CELERY_TASK_TIME_LIMIT": "2"}
    workers(env=env, concurrency=2)
    keys = [_key(), _key()]

    # When two calls ignore their soft time limit and run into the hard one
    origins = [send(env, "tests.fault_tasks.overrun", key, 10) for key in keys]

    # Then each is killed and recorded once, under its own call's id, as a time limit
    wait_for(lambda: len(database.jobs()) == 2, timeout=30, what="both calls to be recorded")
    rows = {row["origin_task_id"]: row for row in database.jobs()}
    assert set(rows) == set(origins)
    assert {row["exception_class"] for row in rows.values()} == {"billiard.exceptions.TimeLimitExceeded"}
    for key in keys:
        assert len(_events(env, key, "start")) == 1
        assert len(_events(env, key, "soft")) == 1
        assert _events(env, key, "end") == []
    # And the message was acknowledged: nothing comes back to run again
    assert private_redis.client().llen("default") == 0
    assert check_invariants(database, origins=origins) == dict.fromkeys(origins, "failed")


def test_f10_a_whole_node_killed_with_calls_running_and_prefetched_loses_none_of_them(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any
) -> None:
    # A visibility timeout of seconds, longer than a call runs (the order the settings keep in production)
    env = {**fault_env, "FAULTS_VISIBILITY_TIMEOUT": "8"}
    node = workers(env=env, concurrency=2)
    keys = [_key() for _ in range(4)]
    origins = [send(env, "tests.fault_tasks.hold", key, 3) for key in keys[:2]]
    origins += [send(env, "tests.fault_tasks.hold", key, 0) for key in keys[2:]]
    wait_for(lambda: all(_events(env, key, "start") for key in keys[:2]), what="two calls to run")

    # When the whole node dies at once (SIGKILL to the main process and every child)
    node.kill_node()

    # Then the calls it held come back once the visibility timeout has passed, and every call ends once
    workers(env={**env}, concurrency=2)
    for key in keys:
        wait_for(lambda key=key: _events(env, key, "end"), timeout=90, what=f"call {key} to end")
    time.sleep(1)
    for key in keys:
        assert len(_events(env, key, "end")) == 1, ledger(env, key)
    # The two that were running when the node died ran twice (at least once: not lost, not yet idempotent)
    assert [len(_events(env, key, "start")) for key in keys[:2]] == [2, 2]
    assert check_invariants(database, origins=origins) == dict.fromkeys(origins, "ok")


def test_f11_a_worker_child_recycled_for_memory_mid_batch_loses_and_repeats_nothing(
    fault_env: dict[str, str], database: Database, workers: Any
) -> None:
    env = {**fault_env, "FAULTS_MAX_MEMORY_PER_CHILD_KB": "1"}  # every call leaves the child over the limit
    workers(env=env, concurrency=1)
    keys = [_key() for _ in range(5)]

    # When a batch of calls each leave their child process bigger than worker_max_memory_per_child
    origins = [send(env, "tests.fault_tasks.hog", key, 20) for key in keys]

    # Then the children are replaced between calls, and each call ran once
    for key in keys:
        wait_for(lambda key=key: _events(env, key, "end"), timeout=60, what=f"call {key} to end")
    pids = {event.split(":")[1] for key in keys for event in _events(env, key, "start")}
    assert len(pids) >= 2, "the child was never replaced"
    assert [len(_events(env, key, "start")) for key in keys] == [1] * 5
    assert check_invariants(database, origins=origins) == dict.fromkeys(origins, "ok")


SWEEP = "import tests.fault_tasks\nfrom queueing import sweep\nprint(sweep.sweep())\n"


def test_f12_a_second_delivery_of_the_current_retry_while_the_first_still_runs_does_not_run(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any
) -> None:
    key = _key()
    code = (
        "from django.utils import timezone\n"
        "from queueing.models import FailedJob\n"
        "now = timezone.now()\n"
        f"FailedJob.objects.create(origin_task_id='{key}', task_name='tests.fault_tasks.hold', queue='default',"
        f" args=['{key}', 2, 'ok'], first_failed_at=now, last_failed_at=now, next_retry_at=now)\n"
    )
    database.execute_python(fault_env, code)

    # Given the sweep sent the job's retry, and the broker holds a second copy of that very message
    assert "sent=1" in database.execute_python(fault_env, SWEEP)
    client = private_redis.client()
    message = client.lindex("default", 0)
    assert message is not None
    client.lpush("default", message)

    # When two worker processes take both copies at once
    workers(concurrency=2)

    # Then one copy runs and resolves the job; the other is refused at its start
    row = wait_for(
        lambda: (r := database.jobs()[0])["status"] == "resolved" and r, timeout=30, what="the retry to resolve"
    )
    time.sleep(1)
    assert len(_events(fault_env, key, "start")) == 1, ledger(fault_env, key)
    assert row["retry_count"] == 1
    assert client.llen("default") == 0
    assert check_invariants(database, origins=[key]) == {key: "resolved"}
