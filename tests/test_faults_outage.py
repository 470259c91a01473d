# ruff: noqa: F811  (the fixtures imported from tests/faults.py are parameters of the tests)
"""Fault scenarios: the database and the broker go down (each its own private server, really stopped).

The scenario table is in docs/reliability.md; each test names its row (F-number).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
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
    history,
    ledger,
    private_redis,
    send,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _key() -> str:
    return uuid.uuid4().hex


def _spooled(env: dict[str, str]) -> int:
    spool = Path(env["QUEUEING_SPOOL_DIR"])
    if not spool.exists():
        return 0
    return sum(len(p.read_text().splitlines()) for p in spool.glob("*.jsonl") if not p.name.startswith("corrupt-"))


def test_f8_a_failure_while_the_database_and_the_broker_are_both_down_is_spooled_then_written_once(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any, tmp_path: Path
) -> None:
    workers()
    key, release = _key(), tmp_path / "release"

    # Given a call running on a worker
    origin = send(fault_env, "tests.fault_tasks.fail_when_released", key, str(release))
    wait_for(lambda: ledger(fault_env, key), what="the call to start")

    # When the database and the broker both go down, and then the call fails for good
    database.down()
    private_redis.kill()
    release.touch()

    # Then the failure is kept in the worker's local spool
    wait_for(lambda: _spooled(fault_env) == 1, timeout=30, what="the failure to be spooled")
    assert len(ledger(fault_env, key)) == 2

    # When both come back, the worker replays its spool by itself: one row, the failure counted once
    private_redis.start()
    database.up()
    wait_for(lambda: database.jobs(), timeout=30, what="the spooled failure to be written")
    time.sleep(1.5)  # a few more replay intervals: nothing may be written twice
    [row] = database.jobs()
    assert (row["origin_task_id"], row["status"], row["attempts"]) == (origin, "failed", 1)
    assert row["exception_class"] == "tests.tasks.Boom"
    assert [e["event"] for e in history(row)] == ["failed"]
    assert _spooled(fault_env) == 0
    assert check_invariants(database, origins=[origin]) == {origin: "failed"}


def test_f7_a_failure_while_the_database_is_down_waits_on_the_broker_and_is_written_once(
    fault_env: dict[str, str], database: Database, workers: Any, tmp_path: Path
) -> None:
    workers()
    key, release = _key(), tmp_path / "release"
    origin = send(fault_env, "tests.fault_tasks.fail_when_released", key, str(release))
    wait_for(lambda: ledger(fault_env, key), what="the call to start")

    # When the database goes down and the call fails for good
    database.down()
    release.touch()
    wait_for(lambda: len(ledger(fault_env, key)) == 2, what="the call to fail")
    time.sleep(2)  # the hand-over meets the outage a few times (record_failed_job's own retries)

    # Then, once the database is back, the failure is written once; nothing was spooled
    database.up()
    row = wait_for(lambda: database.jobs(), timeout=60, what="the failure to be written")[0]
    time.sleep(1)
    assert len(database.jobs()) == 1
    assert (row["origin_task_id"], row["attempts"]) == (origin, 1)
    assert _spooled(fault_env) == 0
    assert check_invariants(database, origins=[origin]) == {origin: "failed"}


def test_f9_a_database_restarted_while_the_workers_idle_records_the_next_failure_at_once(
    fault_env: dict[str, str], database: Database, workers: Any
) -> None:
    workers()
    key = _key()
    send(fault_env, "tests.fault_tasks.hold", key, 0, "ok")
    wait_for(lambda: len(ledger(fault_env, key)) == 2, what="a first call to run (the worker has connected)")

    # When the database restarts while the worker is idle
    database.down()
    database.up()

    # Then the next failure is written straight away (no stale connection, no hand-over needed)
    failing = _key()
    origin = send(fault_env, "tests.fault_tasks.hold", failing, 0, "fail")
    row = wait_for(lambda: database.jobs(), timeout=30, what="the failure to be written")[0]
    assert row["origin_task_id"] == origin
    assert check_invariants(database, origins=[origin]) == {origin: "failed"}


def _due_job(database: Database, env: dict[str, str], key: str) -> int:
    code = (
        "import tests.fault_tasks\n"
        "from django.utils import timezone\n"
        "from queueing.models import FailedJob\n"
        "now = timezone.now()\n"
        f"job = FailedJob.objects.create(origin_task_id='{key}', task_name='tests.fault_tasks.hold', queue='default',"
        f" args=['{key}', 0, 'ok'], first_failed_at=now, last_failed_at=now, next_retry_at=now)\n"
        "print(job.pk)\n"
    )
    return int(database.execute_python(env, code).split()[-1])


SWEEP = "import tests.fault_tasks\nfrom queueing import sweep\nprint(sweep.sweep())\n"


def test_f5_a_sweep_whose_broker_is_down_gives_its_claim_back_without_hanging(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis
) -> None:
    key = _key()
    _due_job(database, fault_env, key)

    # When the sweep runs while the broker is down
    private_redis.kill()
    started = time.monotonic()
    out = database.execute_python(fault_env, SWEEP, timeout=60)
    elapsed = time.monotonic() - started

    # Then it returns within seconds (bounded publish retries), the claim and the retry given back
    assert elapsed < 30, f"the sweep took {elapsed:.1f}s with the broker down"
    assert "sent=0" in out, out
    [row] = database.jobs()
    assert (row["status"], row["retry_count"], row["claim_token"]) == ("failed", 0, None)
    assert row["reason_code"] == "publish_failed"
    assert check_invariants(database, origins=[key]) == {key: "failed"}


def test_f6_a_retry_lost_with_a_broker_restart_is_sent_again_once_its_lease_expires(
    fault_env: dict[str, str], database: Database, private_redis: PrivateRedis, workers: Any
) -> None:
    env = {**fault_env, "QUEUEING_LEASE_SECONDS": "2"}
    key = _key()
    _due_job(database, env, key)

    # Given a retry published while no worker consumes (it waits in the broker)
    assert "sent=1" in database.execute_python(env, SWEEP)
    assert private_redis.client().llen("default") == 1

    # When the broker restarts without persistence: the message is gone
    private_redis.kill()
    private_redis.start()
    assert private_redis.client().llen("default") == 0
    [row] = database.jobs()
    assert row["status"] == "retrying"

    # Then after the lease the sweep takes the job back, the retry given back, and sends it again, once
    time.sleep(2.5)
    out = database.execute_python(env, SWEEP)
    assert "recovered=1" in out and "sent=1" in out, out
    workers(env=env)
    row = wait_for(lambda: (r := database.jobs()[0])["status"] == "resolved" and r, timeout=30, what="the retry")
    assert row["retry_count"] == 1  # the lost retry was given back; the one that ran counts
    assert ledger(env, key) and len([e for e in ledger(env, key) if e.startswith("start")]) == 1
    assert check_invariants(database, origins=[key]) == {key: "resolved"}
