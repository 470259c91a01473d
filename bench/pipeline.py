"""Throughput of RetryableTask against plain Celery, through a real worker and Redis, in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/benchpipeline REDIS_URL=redis://127.0.0.1:6379/14 \
        .venv/bin/python bench/pipeline.py --calls 2000 --failures 300

It migrates the database, starts one `celery worker` (prefork, 2 processes), and times, for each kind of
task, how long the worker takes to run N calls that were queued beforehand. Success path: the same no-op
body as a plain `celery.Task` and as a `RetryableTask`. Failure path (no immediate retries): a plain task
that raises (Celery logs it, nothing kept) against a RetryableTask that raises (one FailedJob row written).
Prints calls/second and the ratio retryable/plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per success-path run")
    parser.add_argument("--failures", type=int, default=300, help="calls per failure-path run")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path; medians are printed")
    args = parser.parse_args()

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from bench import tasks
    from queueing.models import FailedJob

    call_command("migrate", verbosity=0)
    FailedJob.objects.all().delete()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()

    log = open(ROOT / "var" / "bench-worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "worker", "-c", str(args.concurrency), "-l", "warning",
         "--include", "bench.tasks", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
         "--without-mingle", "-Q", "bench"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        warm = f"warm-{uuid.uuid4().hex}"
        for _ in range(20):
            tasks.plain_ok.apply_async((warm,), queue="bench")
        _wait(client, warm, 20)

        rows = []
        for label, plain, retryable, n in (
            ("success path", tasks.plain_ok, tasks.retryable_ok, args.calls),
            ("failure path", tasks.plain_fail, tasks.retryable_fail, args.failures),
        ):
            # Interleave the two kinds, round after round, and keep the medians: the machine's noise
            # then falls on both alike.
            plain_rates, retryable_rates = [], []
            for _ in range(args.rounds):
                plain_rates.append(_run(client, plain, n))
                retryable_rates.append(_run(client, retryable, n))
            rows.append((label, n, statistics.median(plain_rates), statistics.median(retryable_rates)))
        # The body counts itself done before on_failure writes its row: wait for the rows too.
        deadline = time.monotonic() + 60
        expected = args.failures * args.rounds
        while (recorded := FailedJob.objects.filter(task_name="bench.retryable_fail").count()) < expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"database: {engine}; broker: {settings.CELERY_BROKER_URL}; worker: prefork x{args.concurrency}")
    print(f"medians of {args.rounds} interleaved rounds")
    print(f"{'':14} {'calls':>6} {'plain Celery/s':>15} {'RetryableTask/s':>16} {'ratio':>6}")
    for label, n, plain_rate, retryable_rate in rows:
        print(f"{label:14} {n:>6} {plain_rate:>15.0f} {retryable_rate:>16.0f} {retryable_rate / plain_rate:>6.2f}")
    print(f"FailedJob rows written by the failure path: {recorded} (expected {args.failures * args.rounds})")


def _run(client: object, task: object, n: int, *, attempts_each: int = 1) -> float:
    """Queue n calls while the worker is not consuming them yet, then time until all ran. Returns calls/s.

    ``attempts_each``: how many times each call runs its body (1 + its immediate retries)."""
    key = f"done-{uuid.uuid4().hex}"
    # Queue everything first, then measure the worker alone: publishing time is not the worker's.
    for _ in range(n):
        task.apply_async((key,), queue="bench-hold")  # type: ignore[attr-defined]
    # Move the held messages to the consumed queue in one go.
    started = time.perf_counter()
    while client.lmove("bench-hold", "bench", "LEFT", "RIGHT"):  # type: ignore[attr-defined]
        pass
    # A retry goes back to the queue the call was published to (bench-hold): keep moving those along.
    _wait(client, key, n * attempts_each, pump=attempts_each > 1)
    return n / (time.perf_counter() - started)


def _wait(client: object, key: str, n: int, timeout: float = 600, *, pump: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while int(client.get(key) or 0) < n:  # type: ignore[attr-defined]
        while pump and client.lmove("bench-hold", "bench", "LEFT", "RIGHT"):  # type: ignore[attr-defined]
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {client.get(key)} of {n} done")  # type: ignore[attr-defined]
        time.sleep(0.01)


if __name__ == "__main__":
    main()
