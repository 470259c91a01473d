"""The figures of issue 10 on one database (the one DATABASE_URL names): each a ratio against its baseline from
the same run, repeated. ``python -m bench`` runs this once per database and prints the table.

Prints one JSON object per figure on stdout (``{"figure", "database", "values": [...], ...}``); the caller
reads them. The database must be a scratch one (``bench`` in its name, e.g. ``h_perfbench_bench``, or a SQLite
file under var/): its failed-job table is emptied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("QUEUEING_LOG_LEVEL", "WARNING")

BENCH_TASK = "bench.noop"
#: Where the bulk retries and sweeps of the bench send their jobs: a queue nobody consumes, so that the bench
#: counts the messages. Declared in ``declare_queues`` like a deployment's queue (only declared queues are sent).
HOLD = "bench-resend"


def declare_queues() -> None:
    """Add the bench's hold queue to the Celery app's declared queues (``CELERY_TASK_QUEUES``), in this process:
    a claim refuses a row whose queue no worker declares (a tampered row), so an undeclared one sends nothing."""
    from kombu import Queue

    from queueing.registry import celery_app

    app = celery_app()
    if HOLD not in {queue.name for queue in app.conf.task_queues or ()}:
        app.conf.task_queues = (*(app.conf.task_queues or ()), Queue(HOLD, routing_key=HOLD))


def emit(figure: str, values: list[float], **extra: Any) -> None:
    from django.db import connection

    print(json.dumps({"figure": figure, "database": connection.vendor, "values": values, **extra}), flush=True)


# --- rows ---------------------------------------------------------------------------------------------------


def fill(rows: int, *, status: str, queue: str = HOLD, due: bool = True, start: int = 0) -> None:
    """Add ``rows`` failed-job rows of ``bench.noop`` (fast: COPY on PostgreSQL, batched INSERTs on SQLite)."""
    from django.db import connection

    from queueing.models import FailedJob

    now = datetime.now(UTC)
    past = now - timedelta(minutes=5)

    def row(i: int) -> dict[str, Any]:
        return {
            "origin_task_id": f"bench-{status}-{start + i}-{uuid.uuid4().hex[:8]}",
            "task_name": BENCH_TASK,
            "queue": queue,
            "args": [start + i],
            "kwargs": {},
            "options": {},
            "status": status,
            "exception_class": f"bench.Error{(start + i) % 3}",
            "exception_message": "fails on purpose",
            "traceback": "",
            "attempts": 4,
            "first_failed_at": past,
            "last_failed_at": past,
            "next_retry_at": past if (due and status == "failed") else None,
            "dead_at": past if status == "dead" else None,
            "resolved_at": past if status == "resolved" else None,
            "history": [],
            "created_at": past,
            "updated_at": past,
        }

    if connection.vendor == "postgresql":
        fields = [f for f in FailedJob._meta.concrete_fields if not f.primary_key]
        columns = ", ".join(str(f.column) for f in fields)
        connection.ensure_connection()
        raw = connection.connection
        with raw.cursor() as cursor, cursor.copy(f"COPY queueing_failedjob ({columns}) FROM STDIN") as copy:
            for i in range(rows):
                job = FailedJob(**row(i))
                copy.write_row([f.get_db_prep_save(getattr(job, f.attname), connection) for f in fields])
        raw.commit()
    else:
        for offset in range(0, rows, 5000):
            FailedJob.objects.bulk_create([FailedJob(**row(i)) for i in range(offset, min(rows, offset + 5000))])


def empty() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("TRUNCATE queueing_failedjob RESTART IDENTITY")
        else:
            cursor.execute("DELETE FROM queueing_failedjob")


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE queueing_failedjob" if connection.vendor == "postgresql" else "ANALYZE")


def broker() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def timed_both(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# --- figures ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def worker(concurrency: int, **env: str) -> Iterator[None]:
    """A real ``celery worker`` (prefork) on the bench queue, with the project's settings."""
    log = open(ROOT / "var" / "bench-worker.log", "a")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "worker", "-c", str(concurrency), "-l", "warning",
         "--include", "bench.tasks", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
         "--without-mingle", "-Q", "bench"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    try:
        from bench import pipeline, tasks

        warm = f"warm-{uuid.uuid4().hex}"
        for _ in range(10):
            tasks.plain_ok.apply_async((warm,), queue="bench")
        pipeline._wait(broker(), warm, 10, timeout=120)
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def failure_path(*, calls: int, rounds: int, concurrency: int) -> None:
    """Rows 1 and 2: RetryableTask failing for good against plain Celery failing, through a real worker."""
    from bench import pipeline, tasks

    client = broker()
    with worker(concurrency, QUEUEING_BACKOFF_BASE="0", QUEUEING_BACKOFF_JITTER="false"):
        for figure, plain, retryable, attempts in (
            ("failure path, 0 immediate retries", tasks.plain_fail, tasks.retryable_fail, 1),
            ("failure path, 3 immediate retries", tasks.plain_fail_autoretry, tasks.retryable_fail_3, 4),
        ):
            ratios, plain_rates, retryable_rates = [], [], []
            for _ in range(rounds):
                plain_rates.append(pipeline._run(client, plain, calls, attempts_each=attempts))
                retryable_rates.append(pipeline._run(client, retryable, calls, attempts_each=attempts))
                ratios.append(retryable_rates[-1] / plain_rates[-1])
            emit(figure, ratios, baseline_per_second=plain_rates, measured_per_second=retryable_rates, calls=calls)


def bulk_retry(*, jobs: int, rounds: int) -> None:
    """Row 3: ``retry_all_failed`` of N jobs against a loop of plain ``send_task`` sending the same calls."""
    from queueing import operations
    from queueing.registry import celery_app

    client = broker()
    app = celery_app()
    ratios, ours, plains = [], [], []
    for _ in range(rounds):
        empty()
        client.delete(HOLD)
        fill(jobs, status="failed")
        analyze()
        ours.append(timed(lambda: operations.retry_now(queue=HOLD)))
        assert client.llen(HOLD) == jobs, client.llen(HOLD)
        client.delete(HOLD)

        def plain_loop() -> None:
            with app.producer_or_acquire() as producer:
                for i in range(jobs):
                    app.send_task(BENCH_TASK, args=[i], kwargs={}, queue=HOLD, producer=producer)

        plains.append(timed(plain_loop))
        client.delete(HOLD)
        ratios.append(plains[-1] / ours[-1])
    emit(f"retry_all_failed of {jobs:,} jobs", ratios, baseline_seconds=plains, measured_seconds=ours)


def sweep_scaling(*, due: int, small: int, large: int, rounds: int, sizes: list[int]) -> None:
    """Row 4: a sweep of ``due`` due jobs in a table of ``large`` rows against one of ``small`` rows.
    Also the plot's series: sweep seconds against table size."""
    from queueing import sweep

    client = broker()
    by_size: dict[int, list[float]] = {}
    for size in sorted({small, large, *sizes}):
        empty()
        fill(size - due, status="resolved", queue="bench-other")
        by_size[size] = []
        for _ in range(rounds):
            client.delete(HOLD)
            from queueing.models import FailedJob

            FailedJob.objects.filter(queue=HOLD).delete()
            fill(due, status="failed", start=size)
            analyze()
            by_size[size].append(timed(lambda: sweep.sweep(batch_size=due)))
            assert client.llen(HOLD) == due, client.llen(HOLD)
    client.delete(HOLD)
    ratios = [big / little for big, little in zip(by_size[large], by_size[small], strict=True)]
    emit(
        f"sweep of {due:,} due jobs in {large:,} rows vs in {small:,}",
        ratios,
        series={str(k): v for k, v in by_size.items()},
    )


def resend_rate_by_batch(*, jobs: int, batch_sizes: list[int]) -> None:
    """The plot's series: jobs re-sent per second by a bulk retry, against the batch size."""
    from queueing import operations

    client = broker()
    rates: dict[str, float] = {}
    for size in batch_sizes:
        empty()
        client.delete(HOLD)
        fill(jobs, status="failed")
        analyze()
        seconds = timed(lambda: operations.retry_now(queue=HOLD, batch_size=size))  # noqa: B023
        rates[str(size)] = jobs / seconds
    client.delete(HOLD)
    emit("re-send rate by batch size", list(rates.values()), series=rates, jobs=jobs)


def rss(*, sizes: list[int]) -> None:
    """Row 7: peak RSS of a ``retry_all_failed`` process at each bulk size (a fresh process each)."""
    peaks: dict[str, float] = {}
    for size in sizes:
        empty()
        broker().delete(HOLD)
        fill(size, status="failed")
        analyze()
        out = subprocess.run(
            [sys.executable, "-m", "bench.run", "--only-rss-child"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[str(size)] = float(out.stdout.strip().splitlines()[-1])
    broker().delete(HOLD)
    smallest, largest = str(min(sizes)), str(max(sizes))
    emit(
        f"retry_all_failed peak RSS MB, {max(sizes):,} vs {min(sizes):,} jobs",
        [peaks[largest] / peaks[smallest]],
        series=peaks,
    )


def rss_child() -> None:
    from django.core.management import call_command

    call_command("retry_all_failed", "--queue", HOLD, verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def scale_out(*, due: int, sweepers: int, batch_size: int) -> None:
    """Item 6: ``sweepers`` processes sweeping at once over ``due`` due rows: each job sent once; the rate."""
    client = broker()

    def run(n: int) -> float:
        empty()
        client.delete(HOLD)
        fill(due, status="failed")
        analyze()
        # Each process starts Django, then waits for the same start time: start-up is not the sweeps' cost.
        start_at = time.time() + 8
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.run", "--only-sweep-child", f"{batch_size},{start_at}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(n)
        ]
        ends = []
        for proc in procs:
            out, _ = proc.communicate()
            assert proc.returncode == 0
            ends.append(float(out.strip().splitlines()[-1]))
        seconds = max(ends) - start_at
        ids = [json.loads(m)["headers"]["queueing_job_id"] for m in client.lrange(HOLD, 0, -1)]
        assert len(ids) == due == len(set(ids)), (len(ids), len(set(ids)), due)
        return due / seconds

    one = run(1)
    many = run(sweepers)
    client.delete(HOLD)
    emit(f"{sweepers} sweeps at once over {due:,} due rows vs one", [many / one], one_per_second=one,
         many_per_second=many, sent_once=True)  # fmt: skip


def sweep_child(spec: str) -> None:
    """Sweep until nothing is claimed, from the given start time; prints the time it finished."""
    from django.db import connection

    from queueing import sweep

    batch_size, start_at = spec.split(",")
    connection.ensure_connection()
    time.sleep(max(0.0, float(start_at) - time.time()))
    while sweep.sweep(batch_size=int(batch_size)).claimed:
        pass
    print(time.time())


def status_and_admin(*, rows: int, rounds: int, requests: int) -> None:
    """Rows 5 and 6 (PostgreSQL): ``GET /api/queue/status`` p95 and the admin changelist with ``rows`` rows.

    Loads the mix of ``bench/status_api.py`` (kept between runs when the count matches)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from bench import status_api
    from queueing.models import FailedJob

    if FailedJob.objects.count() != rows:
        status_api.load(rows)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE queueing_failedjob")  # the visibility map, for index-only scans
    status_api.assign_groups()
    analyze()
    status_api.set_queueing(STATUS_COUNTS_CACHE_SECONDS=1.0)
    request = status_api.make_client()
    request("")
    p95s, cpu_p95s = [], []
    for _ in range(rounds):
        both = [timed_both(lambda: request("")) for _ in range(requests)]
        durations, cpus = sorted(wall for wall, _ in both), sorted(cpu for _, cpu in both)
        p95s.append(durations[int(0.95 * (len(durations) - 1))] * 1000)
        cpu_p95s.append(cpus[int(0.95 * (len(cpus) - 1))] * 1000)
    # The CPU time of this process (not the database's, nor the time spent waiting for a core): on a shared
    # machine the wall time is mostly waiting, and this says what the request itself costs.
    emit(f"GET /api/queue/status p95 ms, {rows:,} rows", p95s, target_ms=10)
    emit(f"GET /api/queue/status p95 ms, {rows:,} rows, CPU of the process", cpu_p95s, target_ms=10)

    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    pages = {
        "unfiltered": "",
        "by status": "?status__exact=failed",
        "text search": "?q=maintenance",
    }
    for label, query in pages.items():
        url = "/admin/queueing/failedjob/" + query

        def get(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        get()
        both = [timed_both(get) for _ in range(rounds)]
        emit(f"admin changelist {label} s, {rows:,} rows", [wall for wall, _ in both])
        emit(f"admin changelist {label} s, {rows:,} rows, CPU of the process", [cpu for _, cpu in both])

    retry_all_held(rounds=rounds)


def retry_all_held(*, rounds: int) -> None:
    """Row 8: how long ``POST /api/queue/retry-all-failed`` holds the request over the failed and dead jobs of
    the status rows' main queue: above ``SYNC_MAX_JOBS`` it answers 202 with where to read the progress.

    No worker runs here: the operations the requests start are deleted before one could run them, so nothing is
    sent and every round finds the same jobs. A quick run's few rows are retried at once instead: not timed.
    """
    from django.test import Client

    from bench import status_api
    from queueing import bulkops
    from queueing.models import BulkOperation, FailedJob

    queue = "whatsapp-send"  # 85 % of the rows (bench/status_api.py QUEUE_MIX)
    statuses = [FailedJob.Status.FAILED, FailedJob.Status.DEAD]
    selected = FailedJob.objects.filter(queue=queue, status__in=statuses).count()
    if selected <= bulkops.SYNC_MAX_JOBS:
        print(f"POST /api/queue/retry-all-failed: {selected} jobs would be sent at once; not timed", flush=True)
        return
    client = Client(HTTP_HOST="localhost")
    made_before = set(BulkOperation.objects.values_list("pk", flat=True))
    held = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.post(
            "/api/queue/retry-all-failed",
            json.dumps({"queueName": queue}),
            content_type="application/json",
            headers={"Authorization": f"Bearer {status_api.TOKEN}"},
        )
        held.append(time.perf_counter() - started)
        assert response.status_code == 202, (response.status_code, response.content[:300])
    BulkOperation.objects.exclude(pk__in=made_before).delete()
    emit(f"POST /api/queue/retry-all-failed s, {selected:,} failed and dead jobs of {queue}", held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N (the CI smoke run): checks it works")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: failure,bulk,sweep,batch,rss,scale,status")
    parser.add_argument("--status-rows", type=int, default=1_000_000, help="rows of the status/admin figures")
    parser.add_argument("--only-rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only-sweep-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import django

    django.setup()
    import bench.tasks  # noqa: F401  (registers bench.noop, the task the bulk retries re-send)

    declare_queues()  # before the children return: they claim and send too

    if args.only_rss_child:
        return rss_child()
    if args.only_sweep_child:
        return sweep_child(args.only_sweep_child)
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    name = Path(str(settings.DATABASES["default"]["NAME"])).name
    if "bench" not in name:
        sys.exit(f"bench: needs a scratch database with 'bench' in its name (DATABASE_URL names {name!r})")
    call_command("migrate", verbosity=0)
    random.seed(20261201)
    q = args.quick
    only = set(filter(None, args.only.split(",")))

    def want(part: str) -> bool:
        return not only or part in only

    postgres = connection.vendor == "postgresql"
    if want("failure"):
        failure_path(calls=20 if q else 300, rounds=args.rounds, concurrency=2)
    if want("bulk"):
        bulk_retry(jobs=200 if q else 3_000, rounds=args.rounds)
    if want("sweep"):
        small, large = (500, 1_500) if q else (10_000, 300_000 if postgres else 100_000)
        sizes = [] if q else [100_000]
        sweep_scaling(due=100 if q else 1_000, small=small, large=large, rounds=args.rounds, sizes=sizes)
    if want("batch"):
        resend_rate_by_batch(jobs=200 if q else 5_000, batch_sizes=[50, 100] if q else [50, 100, 500, 1000, 2000])
    if want("rss"):
        rss(sizes=[200, 600] if q else [10_000, 30_000, 100_000])
    if want("status") and postgres:
        status_and_admin(rows=2_000 if q else args.status_rows, rounds=args.rounds, requests=20 if q else 200)
    if want("scale") and postgres:
        scale_out(due=200 if q else 100_000, sweepers=4, batch_size=50 if q else 500)
    if only != {"status"}:
        empty()  # the status figures' rows stay for the next run (loading 1,000,000 rows takes minutes)


if __name__ == "__main__":
    main()
