"""How fast the sweep drains a backlog of due failed jobs, against a plain Celery publish loop, in the same run.

    createdb -h 127.0.0.1 -U postgres h_drain
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_drain REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python bench/drain.py --jobs 10000 100000 --groups none recovered

For each size N: writes N due ``failed`` rows (bulk insert, not timed), then times

- **plain publish**: the same N calls (task, args, queue, task id, headers) sent with ``apply_async`` over one
  producer, in one loop: the broker's publish rate from this process, the ceiling of any re-send;
- **sweep**: ``sweep.sweep()`` called until nothing is due (each call claims and publishes batch after batch of
  ``BATCH_SIZE`` within its time budget), and how many calls that took. ``--groups``: the rows in no failure
  group (``none``: claimed past the breakers, as rows recorded before groups) and/or in one group whose probe
  has just succeeded (``recovered``: the breaker gate releases its waves, one per Beat round, then the rest).
  Each call is one Beat round: it is given ``now`` = the start plus one ``CHECK_INTERVAL`` per round before it,
  so "drained in" is the wall time a Beat would take (the rounds' intervals plus the last round's sending), and
  "sending" the time spent in the calls.

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
from dataclasses import dataclass
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
    parser.add_argument(
        "--groups", nargs="+", choices=GROUPINGS, default=["none"], help="the rows' failure group: none, recovered"
    )
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

    interval = current_policy().check_interval_seconds
    rows = []
    for n in args.jobs:
        for grouping in args.groups:
            plain_rates, sweeps = [], []
            for _ in range(args.rounds):
                client.flushdb()
                plain_rates.append(_plain(n))
                client.flushdb()
                sweeps.append(_sweep(n, batch=batch, budget_seconds=per_call, grouping=grouping, interval=interval))
                if client.llen(QUEUE) != n:
                    raise SystemExit(f"the sweep left {client.llen(QUEUE)} messages on the broker, not {n}")
            sending = statistics.median(s.sending_seconds for s in sweeps)
            drained = statistics.median(s.drained_seconds for s in sweeps)
            calls = max(s.calls for s in sweeps)
            rows.append((n, grouping, statistics.median(plain_rates), n / sending, calls, sending, drained))
    client.flushdb()

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(
        f"database: {engine}; broker: {settings.CELERY_BROKER_URL}; BATCH_SIZE {batch}; budget {per_call:g} s; "
        f"CHECK_INTERVAL {interval:g} s"
    )
    print(
        f"{'jobs':>7} {'group':>9} {'plain publish/s':>16} {'sweep/s':>8} {'ratio':>6} {'sweep calls':>12}"
        f" {'sending':>9} {'drained in':>11}"
    )
    for n, grouping, plain_rate, sweep_rate, calls, sending, drained in rows:
        print(
            f"{n:>7} {grouping:>9} {plain_rate:>16.0f} {sweep_rate:>8.0f} {sweep_rate / plain_rate:>6.2f} {calls:>12}"
            f" {sending:>8.1f}s {drained:>10.1f}s"
        )


#: The queue of the backlog: a declared one (the sweep gives up on a job of a queue no worker declares).
QUEUE = "default"
GROUPINGS = ("none", "recovered")


@dataclass(frozen=True)
class Drained:
    calls: int  # sweep calls: Beat rounds
    sending_seconds: float  # time spent in the calls
    drained_seconds: float  # a Beat's wall time: one CHECK_INTERVAL per round before the last, plus the last


def _backlog(n: int, grouping: str = "none") -> list[int]:
    """N due ``failed`` rows of ``bench.retryable_ok`` on ``QUEUE``; returns their ids. ``grouping``
    ``recovered``: all in one failure group whose probe has just succeeded (closed, no wave sent yet)."""
    from django.utils import timezone

    from queueing.models import FailedJob, FailureGroup

    FailedJob.objects.all().delete()
    FailureGroup.objects.all().delete()
    now = timezone.now()
    past = now - timedelta(minutes=10)
    group = None
    if grouping == "recovered":
        group = FailureGroup.objects.create(
            fingerprint=uuid.uuid4().hex,
            task_name="bench.retryable_ok",
            exception_class="builtins.RuntimeError",
            message_pattern="boom",
            queue=QUEUE,
            failure_count=n,
            first_seen_at=past,
            last_seen_at=past,
            state=FailureGroup.State.CLOSED,
            state_changed_at=now,
            probes=1,
        )
    jobs = [
        FailedJob(
            origin_task_id=str(uuid.uuid4()),
            task_name="bench.retryable_ok",
            queue=QUEUE,
            group=group,
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
                queue=QUEUE,
                priority=None,
                headers={HEADER_JOB_ID: job_id, HEADER_CLAIM: token, HEADER_ORIGIN: str(uuid.uuid4())},
                producer=producer,
            )
    return n / (time.perf_counter() - started)


def _sweep(n: int, *, batch: int, budget_seconds: float, grouping: str, interval: float) -> Drained:
    """Call ``sweep.sweep()``, one call per Beat round, until all N are sent."""
    from django.utils import timezone

    from queueing import sweep

    _backlog(n, grouping)
    sent = calls = 0
    sending = last = 0.0
    start = timezone.now()
    while sent < n:
        if calls > 1_000:
            raise SystemExit(f"the sweep sent {sent} of {n} in {calls} rounds")
        started = time.perf_counter()
        result = sweep.sweep(
            now=start + timedelta(seconds=calls * interval), batch_size=batch, budget_seconds=budget_seconds
        )
        last = time.perf_counter() - started
        sending += last
        calls += 1
        sent += result.sent
        if result.stopped is sweep.Stop.REFUSED:
            raise SystemExit(f"the broker refused: {result}")
    return Drained(calls=calls, sending_seconds=sending, drained_seconds=(calls - 1) * interval + last)


if __name__ == "__main__":
    main()
