"""Draining a backlog: a sweep claims and sends batch after batch, within its budget, at each queue's rate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Task
from django.db import connection
from django.test.utils import CaptureQueriesContext
from kombu.exceptions import OperationalError

from queueing import claims, retry_queues, sweep
from queueing.autoretry import current_policy
from queueing.models import FailedJob
from queueing.sweep import Stop
from queueing.throttle import Pacer
from tests.conftest import ROOT, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


def waiting(broker: redis.Redis, queue: str) -> int:
    return int(broker.llen(queue))


def make_due(make_failed_job: Callable[..., FailedJob], n: int, *, queue: str = "default") -> list[FailedJob]:
    return [make_failed_job(queue=queue) for _ in range(n)]


class FakeClock:
    """The sweep's clock, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- the loop ------------------------------------------------------------------------------------------------


def test_one_sweep_sends_batch_after_batch_until_nothing_is_due(
    broker: redis.Redis, make_failed_job: Any, now: Any
) -> None:
    # Given 25 due jobs and batches of 10
    make_due(make_failed_job, 25)

    # When one sweep runs
    result = sweep.sweep(now=now, batch_size=10)

    # Then it sent all 25, in 3 batches, and stopped because nothing was left
    assert (result.claimed, result.sent, result.batches, result.stopped) == (25, 25, 3, Stop.NOTHING_DUE)
    assert waiting(broker, "default") == 25
    assert not FailedJob.objects.filter(status=Status.FAILED).exists()


def test_a_sweep_stops_when_its_time_budget_is_spent(
    broker: redis.Redis, make_failed_job: Any, now: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 100 due jobs, and each batch taking one second to publish
    make_due(make_failed_job, 100)
    clock = FakeClock()
    monkeypatch.setattr(sweep, "_monotonic", clock)
    real_publish = claims.publish

    def slow_publish(*args: Any, **kwargs: Any) -> claims.PublishResult:
        clock.now += 1.0
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(sweep, "publish", slow_publish)

    # When a sweep with a 2.5 s budget runs
    result = sweep.sweep(now=now, batch_size=10, budget_seconds=2.5)

    # Then it sent 3 batches (the one that crossed the budget included), and left the rest due for the next
    assert (result.sent, result.batches, result.stopped) == (30, 3, Stop.BUDGET)
    assert FailedJob.objects.filter(status=Status.FAILED).count() == 70
    assert sweep.sweep(now=now, batch_size=10, budget_seconds=2.5).sent == 30


def test_the_budget_is_80_percent_of_the_check_interval_unless_set_below_it(configure: Any) -> None:
    configure(CHECK_INTERVAL=60)
    assert sweep.budget(current_policy()) == pytest.approx(48.0)
    configure(CHECK_INTERVAL=60, SWEEP_BUDGET=30)
    assert sweep.budget(current_policy()) == 30.0
    configure(CHECK_INTERVAL=60, SWEEP_BUDGET=90)  # not below the interval: two sweeps would overlap
    assert sweep.budget(current_policy()) == pytest.approx(48.0)


def test_a_sweep_stops_at_the_waves_size(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    make_due(make_failed_job, 30)

    result = sweep.sweep(now=now, batch_size=10, max_jobs=15)

    assert (result.sent, result.batches, result.stopped) == (15, 2, Stop.LIMIT)
    assert FailedJob.objects.filter(status=Status.FAILED).count() == 15


def test_a_claim_limit_narrows_each_claim(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    # Given due jobs in two queues, and a limit (as the breaker's groups give) that lets 3 of whatsapp-send go,
    # none of default
    make_due(make_failed_job, 5, queue="default")
    make_due(make_failed_job, 5, queue="whatsapp-send")

    class OnlyThreeOfQ2:
        left = 3

        def allow(self, candidates: Any, *, limit: int) -> tuple[Any, int]:
            return candidates.filter(queue="whatsapp-send"), min(limit, self.left)

        def count(self, jobs: Any) -> None:
            self.left -= len(jobs)

    # When a sweep runs with it
    result = sweep.sweep(now=now, batch_size=2, limit=OnlyThreeOfQ2())

    # Then exactly those were sent, in batches no larger than the limit allowed
    assert (result.sent, result.batches, result.stopped) == (3, 2, Stop.LIMIT)
    assert (waiting(broker, "default"), waiting(broker, "whatsapp-send")) == (0, 3)


def test_a_sweep_stops_when_the_broker_refuses_and_gives_the_retries_back(
    broker: redis.Redis, make_failed_job: Any, now: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 30 due jobs and a broker that refuses every publish
    make_due(make_failed_job, 30)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(Task, "apply_async", refuse)

    # When a sweep runs
    result = sweep.sweep(now=now, batch_size=10)

    # Then it tried one batch only (the jobs it gave back are due again: no spinning on them), retries given back
    assert (result.claimed, result.sent, result.batches, result.stopped) == (10, 0, 1, Stop.REFUSED)
    assert FailedJob.objects.filter(status=Status.FAILED, retry_count=0).count() == 30


def test_a_sweep_costs_a_fixed_number_of_queries_per_batch_not_per_job(
    broker: redis.Redis, make_failed_job: Any, now: Any
) -> None:
    counts: dict[int, int] = {}
    for n in (15, 35, 55):  # 2, 4 and 6 claims of up to 10 (the last one finds fewer: nothing left)
        FailedJob.objects.all().delete()
        make_due(make_failed_job, n)
        with CaptureQueriesContext(connection) as queries:
            result = sweep.sweep(now=now, batch_size=10)
        assert result.sent == n
        counts[n] = len(queries)

    # Then two more batches always cost the same few queries, whatever the jobs in them
    per_two_batches = counts[35] - counts[15]
    assert counts[55] - counts[35] == per_two_batches, counts
    # per batch: the gate's look at the due groups, the claim (select, update, read back; + begin, commit on SQLite)
    assert per_two_batches <= 2 * 7, counts


# --- the throttle ----------------------------------------------------------------------------------------------


def test_a_throttled_queue_is_sent_at_its_rate_and_others_at_full_speed(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 100 due jobs in default, throttled to 20 per second, and 30 in whatsapp-send, not throttled
    configure(THROTTLE=["default=20"])
    make_due(make_failed_job, 100, queue="default")
    make_due(make_failed_job, 30, queue="whatsapp-send")
    sent_at: dict[str, list[float]] = {"default": [], "whatsapp-send": []}
    real_wait = Pacer.wait

    def wait_and_note(self: Pacer, queue: str) -> None:
        real_wait(self, queue)
        sent_at[queue].append(time.monotonic())

    monkeypatch.setattr(Pacer, "wait", wait_and_note)

    # When a sweep with a 1 s budget runs
    started = time.monotonic()
    result = sweep.sweep(now=now, batch_size=50, budget_seconds=1.0)
    took = time.monotonic() - started

    # Then whatsapp-send went out whole; default got only what 20 per second sends in 1 s, spaced 50 ms apart
    # (up to 20: the budget counts from the sweep's start, and its first queries take a little of it)
    assert waiting(broker, "whatsapp-send") == 30
    assert 15 <= waiting(broker, "default") <= 20
    assert result.sent == 30 + waiting(broker, "default")
    assert result.stopped in (Stop.THROTTLED, Stop.BUDGET)
    # (the n-th send of default comes no sooner than n * 50 ms after the first: a late one does not make the next
    # one late too, so one gap can be shorter, never the pace)
    first = sent_at["default"][0]
    assert all(at - first >= n * 0.05 - 0.002 for n, at in enumerate(sent_at["default"])), sent_at["default"]
    assert 0.9 <= took < 2.0
    assert FailedJob.objects.filter(queue="default", status=Status.FAILED).count() == 100 - waiting(broker, "default")


def test_every_queue_can_be_throttled_at_once(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(THROTTLE=["*=5"])
    clock = FakeClock()
    monkeypatch.setattr(sweep, "_monotonic", clock)
    monkeypatch.setattr(sweep, "_sleep", clock.sleep)
    make_due(make_failed_job, 20, queue="default")
    make_due(make_failed_job, 20, queue="whatsapp-send")

    result = sweep.sweep(now=now, batch_size=100, budget_seconds=2.0)

    # 5 per second for 2 s, per queue, the two queues side by side (not one after the other)
    assert (waiting(broker, "default"), waiting(broker, "whatsapp-send")) == (10, 10)
    assert result.stopped in (Stop.THROTTLED, Stop.BUDGET)
    assert clock.now - 1000.0 < 2.0


def test_the_waves_size_holds_across_the_claims_of_throttled_and_other_queues(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any
) -> None:
    configure(THROTTLE=["default=10000"])
    make_due(make_failed_job, 10, queue="default")
    make_due(make_failed_job, 10, queue="whatsapp-send")

    result = sweep.sweep(now=now, batch_size=4, max_jobs=6)

    assert (result.sent, result.stopped) == (6, Stop.LIMIT)
    assert waiting(broker, "default") + waiting(broker, "whatsapp-send") == 6


def test_a_throttle_that_is_not_queue_equals_rate_is_refused_at_start(configure: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from queueing.conf import get_settings

    configure(THROTTLE=["whatsapp-send:20"])
    with pytest.raises(ImproperlyConfigured, match="whatsapp-send=20"):
        get_settings()


# --- retry queues ----------------------------------------------------------------------------------------------


def test_re_sent_jobs_of_a_retry_queue_go_to_its_retry_queue(
    broker: redis.Redis, make_failed_job: Any, now: Any, configure: Any
) -> None:
    configure(RETRY_QUEUES=["default"])
    [job] = make_due(make_failed_job, 1, queue="default")
    make_due(make_failed_job, 1, queue="whatsapp-send")

    assert sweep.sweep(now=now).sent == 2

    assert (waiting(broker, "default"), waiting(broker, "default.retry"), waiting(broker, "whatsapp-send")) == (0, 1, 1)
    [raw] = broker.lrange("default.retry", 0, -1)
    assert json.loads(raw)["headers"]["queueing_job_id"] == job.pk
    job.refresh_from_db()
    assert job.queue == "default"  # the row keeps its queue; only the clone travels by the retry queue


@pytest.mark.slow
def test_a_worker_consuming_a_queue_consumes_its_retry_queue_too(
    subprocess_env: dict[str, str], broker: redis.Redis, make_failed_job: Any, configure: Any, tmp_path: Path
) -> None:
    # Given a worker started with -Q whatsapp-send only (it knows nothing of RETRY_QUEUES)
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-P", "solo", "-Q", "whatsapp-send"]
    command += ["-l", "info"]
    command += ["--include", "tests.tasks", "-n", f"drain-{uuid.uuid4().hex[:8]}@%h", "--without-gossip"]
    with log.open("w") as out:
        worker = subprocess.Popen(command, env=subprocess_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log.read_text(), timeout=60, what="the worker to start")
        assert "whatsapp-send.retry" in log.read_text()  # the banner lists the queues it consumes
        # When a sweep re-sends a job of whatsapp-send by its retry queue
        configure(RETRY_QUEUES=["whatsapp-send"])
        job = make_failed_job(queue="whatsapp-send", task_name="tests.tasks.succeed", args=[], kwargs={})
        assert sweep.sweep().sent == 1

        # Then that worker runs it and the job is resolved
        wait_for(
            lambda: FailedJob.objects.filter(pk=job.pk, status=Status.RESOLVED).exists(),
            timeout=30,
            what="the job re-sent by whatsapp-send.retry to be resolved",
        )
    finally:
        stop(worker)
    assert waiting(broker, "whatsapp-send.retry") == 0


def test_a_retry_queue_gets_no_retry_queue_of_its_own() -> None:
    assert retry_queues.retry_queue("whatsapp-send") == "whatsapp-send.retry"
    assert retry_queues.retry_queue("whatsapp-send.retry") == "whatsapp-send.retry"


def test_every_queue_can_have_its_retry_queue(configure: Any) -> None:
    configure(RETRY_QUEUES=["*"])
    assert retry_queues.send_to("default") == "default.retry"
    configure(RETRY_QUEUES=[])
    assert retry_queues.send_to("default") == "default"


def test_jobs_not_yet_due_stay_out_of_every_batch(broker: redis.Redis, make_failed_job: Any, now: Any) -> None:
    make_due(make_failed_job, 12)
    make_failed_job(queue="default", next_retry_at=now + timedelta(minutes=1))

    result = sweep.sweep(now=now, batch_size=5)

    assert (result.sent, result.batches) == (12, 3)
    assert FailedJob.objects.filter(status=Status.FAILED).count() == 1


def test_a_clone_sent_by_a_retry_queue_counts_under_its_own_queue() -> None:
    from types import SimpleNamespace

    from queueing import signals

    task = SimpleNamespace(request=SimpleNamespace(delivery_info={"routing_key": "whatsapp-send.retry"}))
    assert signals._queue_of(task) == "whatsapp-send"
