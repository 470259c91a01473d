"""How fast the sweep drains a backlog of due failed jobs, against a plain Celery publish loop, in the same run.

    createdb -h 127.0.0.1 -U postgres h_drain
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_drain REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python bench/drain.py --jobs 10000 100000

For each size N: writes N due ``failed`` rows (bulk insert, not timed), then times

- **plain publish**: the same N calls (task, args, queue, task id, headers) sent with ``apply_async`` over one
  producer, in one loop: the broker's publish rate from this process, the ceiling of any re-send;
- **sweep**: ``sweep.sweep()`` called until nothing is due (each call claims and publishes batch after batch of
  ``BATCH_SIZE`` within its time budget), and how many calls that took.

Nothing consumes the queue (no worker): both measure the sending side only. Prints jobs/second and the ratio.
It flushes the Redis db it is given and deletes every ``FailedJob`` row of that database: point it at scratch ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# One INFO line per job sent would be timed too (and floods the terminal).
os.environ.setdefault("QUEUEING_LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000], help="backlog sizes, one run each")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per size; medians are printed")
    parser.add_argument("--batch-size", type=int, default=None, help="BATCH_SIZE of the sweep (default: setting)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per sweep call (default: SWEEP_BUDGET)")
    args = parser.parse_args()

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from queueing.autoretry import current_policy
    from queueing.conf import get_settings
    from queueing.sweep import budget

    call_command("migrate", verbosity=0)
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    batch = args.batch_size or get_settings().batch_size
    per_call = args.budget if args.budget is not None else budget(current_policy())

    rows = []
    for n in args.jobs:
        plain_rates, sweep_rates, calls = [], [], []
        for _ in range(args.rounds):
            client.flushdb()
            plain_rates.append(_plain(n))
            client.flushdb()
            rate, sweeps = _sweep(n, batch=batch, budget_seconds=per_call)
            sweep_rates.append(rate)
            calls.append(sweeps)
            if client.llen("drain") != n:
                raise SystemExit(f"the sweep left {client.llen('drain')} messages on the broker, not {n}")
        rows.append((n, statistics.median(plain_rates), statistics.median(sweep_rates), max(calls)))
    client.flushdb()

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"database: {engine}; broker: {settings.CELERY_BROKER_URL}; BATCH_SIZE {batch}; budget {per_call:g} s")
    print(f"{'jobs':>7} {'plain publish/s':>16} {'sweep/s':>8} {'ratio':>6} {'sweep calls':>12} {'drained in':>11}")
    for n, plain_rate, sweep_rate, sweeps in rows:
        print(
            f"{n:>7} {plain_rate:>16.0f} {sweep_rate:>8.0f} {sweep_rate / plain_rate:>6.2f} {sweeps:>12}"
            f" {n / sweep_rate:>10.1f}s"
        )


def _backlog(n: int) -> list[int]:
    """N due ``failed`` rows of ``bench.retryable_ok`` on queue ``drain``; returns their ids."""
    from django.utils import timezone

    from queueing.models import FailedJob

    FailedJob.objects.all().delete()
    now = timezone.now()
    past = now - timedelta(minutes=10)
    jobs = [
        FailedJob(
            origin_task_id=str(uuid.uuid4()),
            task_name="bench.retryable_ok",
            queue="drain",
            args=[f"drain-{i}"],
            kwargs={},
            exception_class="builtins.RuntimeError",
            exception_message="boom",
            attempts=4,
            first_failed_at=past,
            last_failed_at=past,
            next_retry_at=past,
        )
        for i in range(n)
    ]
    FailedJob.objects.bulk_create(jobs, batch_size=5000)
    return list(FailedJob.objects.values_list("id", flat=True))


def _plain(n: int) -> float:
    """The same calls as the sweep sends (args, queue, a task id, the three headers), in one publish loop."""
    from bench import tasks
    from project.celery import app
    from queueing.registry import HEADER_CLAIM, HEADER_JOB_ID, HEADER_ORIGIN

    ids = _backlog(n)
    token = str(uuid.uuid4())
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for job_id in ids:
            tasks.retryable_ok.apply_async(
                args=[f"drain-{job_id}"],
                kwargs={},
                task_id=str(uuid.uuid4()),
                queue="drain",
                priority=None,
                headers={HEADER_JOB_ID: job_id, HEADER_CLAIM: token, HEADER_ORIGIN: str(uuid.uuid4())},
                producer=producer,
            )
    return n / (time.perf_counter() - started)


def _sweep(n: int, *, batch: int, budget_seconds: float) -> tuple[float, int]:
    """Time ``sweep.sweep()`` calls until nothing is due. Returns (jobs sent per second, sweep calls)."""
    from queueing import sweep

    _backlog(n)
    sent = calls = 0
    started = time.perf_counter()
    while True:
        result = sweep.sweep(batch_size=batch, budget_seconds=budget_seconds)
        calls += 1
        sent += result.sent
        if result.stopped is not sweep.Stop.BUDGET:
            break
    elapsed = time.perf_counter() - started
    if sent != n:
        raise SystemExit(f"the sweep sent {sent} of {n} ({result})")
    return n / elapsed, calls


if __name__ == "__main__":
    main()
