"""Fault scenarios: sweeps, operators and the API claiming the same rows at the same moment (F13, F14).

The scenario table is in docs/reliability.md.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client

from queueing import lifecycle, operations, sweep
from queueing.models import FailedJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

TOKEN = "faults-token"


def _due_rows(count: int, now: datetime) -> list[int]:
    past = now - timedelta(minutes=10)
    FailedJob.objects.bulk_create(
        [
            FailedJob(
                origin_task_id=str(uuid.uuid4()),
                task_name="tests.tasks.succeed",
                queue="default",
                args=[],
                first_failed_at=past,
                last_failed_at=past,
                next_retry_at=past,
            )
            for _ in range(count)
        ],
        batch_size=2000,
    )
    return list(FailedJob.objects.values_list("id", flat=True))


def _in_threads(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once, each in its own thread with its own database connection; re-raise a failure."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001  (handed to the test below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=200)
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SKIP LOCKED is PostgreSQL's; SQLite has one writer")
def test_f13_four_sweeps_at_once_over_10000_due_rows_each_claim_a_full_disjoint_batch(
    broker: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _due_rows(10_000, now)
    # Hold each sweep between its SELECT … FOR UPDATE SKIP LOCKED and its UPDATE until all four have selected:
    # with SKIP LOCKED each selects rows the others hold no lock on; without it the second blocks on the
    # first's locks (the barrier breaks), and without the lock all four pick the same rows (three claim none).
    barrier = threading.Barrier(4, timeout=20)
    real_claim = lifecycle.claim

    def claim_when_all_have_selected(*args: Any, **kwargs: Any) -> int:
        barrier.wait()
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "claim", claim_when_all_have_selected)

    # When four sweeps run at once, each with a batch of a quarter of the due rows
    results = _in_threads(*[lambda: sweep.sweep(batch_size=2_500)] * 4)

    # Then each claimed and sent a full batch, no row twice, every row once
    assert [r.claimed for r in results] == [2_500] * 4
    assert sum(r.sent for r in results) == 10_000
    assert broker.llen("default") == 10_000
    counts = FailedJob.objects.filter(pk__in=ids, status=FailedJob.Status.RETRYING, retry_count=1).count()
    assert counts == 10_000
    assert FailedJob.objects.values("claim_token").distinct().count() == 4


def test_f14_an_operator_the_api_and_the_sweep_racing_on_the_same_rows_claim_each_row_once(
    broker: redis.Redis, now: datetime, configure: Any
) -> None:
    configure(API_TOKEN=TOKEN)
    ids = _due_rows(300, now)
    client = Client(headers={"Authorization": f"Bearer {TOKEN}"})
    start = threading.Barrier(3, timeout=20)

    def operator() -> int:  # the admin's retry action and the retry_all_failed command call this verb
        start.wait()
        return operations.retry_now(ids=ids).retried

    def api() -> int:
        start.wait()
        response = client.post("/api/queue/retry-all-failed", {"queueName": "default"}, content_type="application/json")
        assert response.status_code == 200, response.content
        return int(response.json()["retried"])

    def sweeper() -> int:
        start.wait()
        return sweep.sweep().sent

    # When the three claim the same 300 due rows at the same moment
    sent = _in_threads(operator, api, sweeper)

    # Then every row was claimed and sent exactly once, by one of them
    assert sum(sent) == 300, sent
    assert broker.llen("default") == 300
    rows = list(FailedJob.objects.filter(pk__in=ids).values_list("status", "retry_count", "manual_retry_count"))
    assert all(status == FailedJob.Status.RETRYING and auto + manual == 1 for status, auto, manual in rows)
