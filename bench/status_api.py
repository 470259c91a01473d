"""Benchmark ``GET /api/queue/status`` with 1,000,000 FailedJob rows on PostgreSQL and no worker up,
against what plain Celery offers for the same question (a broadcast to the workers).

    createdb -h 127.0.0.1 -U postgres benchstatus
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/benchstatus REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/status_api.py            # --rows 1000000 --requests 200 --explain

1. Migrates the scratch database and, unless it already holds exactly ``--rows`` rows, empties
   ``queueing_failedjob`` and loads them with ``COPY`` (a fixed seed: the same mix every time), then
   ``VACUUM ANALYZE``. The database's name must start with ``bench`` (the table is truncated).
2. Times ``--requests`` sequential requests through the whole Django stack (test client, bearer token):
   as deployed (counts cached ``STATUS_COUNTS_CACHE_SECONDS``, workers' report cached
   ``STATUS_WORKERS_CACHE_SECONDS``) and with the database queried on every request (cache 0); then real
   HTTP: gunicorn with ``--processes`` workers and ``--clients`` clients polling at once.
3. Times the parts: the grouped count of the open statuses (what the report reads), the newest failures of
   each queue, and, for comparison, ``status.job_counts()`` over every status (``RetryManager.get_stats()``).
4. Times plain Celery: ``app.control.inspect(timeout=1).active()``, and active + scheduled + reserved (what
   a dashboard built on inspect needs per refresh), and prints the ratios.

Only this script's Redis keys (``queueing:status:*``) are deleted; the Redis db is not flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
TOKEN = "bench-token"
os.environ["QUEUEING_API_TOKEN"] = TOKEN

#: (status, share of rows)
STATUS_MIX = [("resolved", 0.70), ("discarded", 0.05), ("failed", 0.15), ("dead", 0.09), ("retrying", 0.01)]
#: (queue, share of rows): a rare queue makes "the newest failures of that queue" the hard case.
QUEUE_MIX = [("whatsapp-send", 0.85), ("default", 0.149), ("reports", 0.001)]
COLUMNS = (
    "origin_task_id",
    "task_name",
    "queue",
    "args",
    "kwargs",
    "options",
    "status",
    "status_reason",
    "exception_class",
    "exception_message",
    "traceback",
    "attempts",
    "retry_count",
    "manual_retry_count",
    "claimed_by",
    "claimed_from",
    "latest_task_id",
    "first_failed_at",
    "last_failed_at",
    "next_retry_at",
    "dead_at",
    "resolved_at",
    "created_at",
    "updated_at",
    "history",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--baseline-runs", type=int, default=5, help="plain-Celery broadcasts timed (1 s each)")
    parser.add_argument("--processes", type=int, default=2, help="gunicorn workers in the HTTP run")
    parser.add_argument("--clients", type=int, default=8, help="clients polling at once in the HTTP run")
    parser.add_argument("--reload", action="store_true", help="load the rows even if the count matches")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql") or "bench" not in str(db["NAME"]):
        sys.exit(f"needs a scratch PostgreSQL database with 'bench' in its name; DATABASE_URL names {db['NAME']!r}")

    call_command("migrate", verbosity=0)
    from queueing import registry, status
    from queueing.models import FailedJob
    from queueing.status import broker, jobs

    if args.reload or FailedJob.objects.count() != args.rows:
        load(args.rows)
    assign_groups()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE queueing_failedjob")
    counts = jobs.job_counts(statuses=jobs.OPEN_STATUSES)
    print(f"rows: {FailedJob.objects.count():,}; failed/dead/retrying by queue: {json.dumps(counts)}")
    loadavg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"PostgreSQL {connection.pg_version}, Redis {settings.CELERY_BROKER_URL}")
    print(f"{os.cpu_count()} CPUs, load average {loadavg}")

    app = registry.celery_app()
    replies = app.control.ping(timeout=0.5)
    if replies:
        sys.exit(f"a worker answered on this broker ({replies}); this benchmark measures the no-worker case")

    client_redis = status.broker_redis()
    for key in client_redis.scan_iter(match=broker.key("queueing:status:*")):
        client_redis.delete(key)

    if args.explain:
        explain()

    results: dict[str, list[float]] = {}
    request = make_client()
    first = timed(request)  # the first one loads the task modules and opens the connections
    print(f"\nfirst request (cold process): {first * 1000:.1f} ms")

    set_queueing(STATUS_COUNTS_CACHE_SECONDS=1.0)
    results["status, as deployed (counts cached 1 s)"] = [timed(request) for _ in range(args.requests)]
    set_queueing(STATUS_COUNTS_CACHE_SECONDS=0)
    results["status, database queried every request"] = [timed(request) for _ in range(args.requests)]
    results["status?queueName=reports (rare queue), uncached"] = [
        timed(lambda: request("?queueName=reports")) for _ in range(args.requests // 4)
    ]
    set_queueing(STATUS_COUNTS_CACHE_SECONDS=1.0)
    name = f"HTTP: gunicorn x{args.processes}, {args.clients} clients at once"
    results[name], seconds = over_http(
        processes=args.processes, clients=args.clients, requests_each=args.requests // args.clients * 4
    )
    print(f"{name}: {len(results[name])} requests in {seconds:.1f} s")

    results["part: grouped count (failed/dead/retrying)"] = [
        timed(lambda: jobs.job_counts(statuses=jobs.OPEN_STATUSES)) for _ in range(20)
    ]
    for queue in ("whatsapp-send", "reports"):
        results[f"part: newest failures of {queue}"] = [
            timed(lambda q=queue: jobs.recent_failures(q, ["failed", "dead"])) for _ in range(20)
        ]
    results["status.job_counts() over every status (get_stats)"] = [timed(status.job_counts) for _ in range(5)]

    results["plain Celery: inspect(timeout=1).active()"] = [
        timed(lambda: app.control.inspect(timeout=1.0).active()) for _ in range(args.baseline_runs)
    ]
    results["plain Celery: active + scheduled + reserved"] = [
        timed(lambda: [getattr(app.control.inspect(timeout=1.0), m)() for m in ("active", "scheduled", "reserved")])
        for _ in range(max(1, args.baseline_runs // 2))
    ]

    report(results, rows=args.rows)


def load(rows: int) -> None:
    """Empty the table and insert ``rows`` rows (a fixed seed) with one ``INSERT … SELECT`` over
    ``generate_series``, in the database: about a minute for 1,000,000 rows (a ``COPY`` fed row by row from
    Python took 10 to 25 minutes on a loaded machine). The mix is ``STATUS_MIX`` and ``QUEUE_MIX``; every row is
    in its failure group, as a recorded failure is."""
    from django.db import connection

    from queueing.models import FailedJob

    started = time.perf_counter()
    groups = {task: group_for(task) for task in ("messaging.tasks.send_whatsapp_message", "tests.tasks.always_fail")}

    def thresholds(mix: list[tuple[str, float]], column: str) -> str:
        cases, total = [], 0.0
        for value, share in mix[:-1]:
            total += share
            cases.append(f"WHEN {column} < {total:.4f} THEN '{value}'")
        return f"CASE {' '.join(cases)} ELSE '{mix[-1][0]}' END"

    expressions = {
        "origin_task_id": "'bench-' || i",
        "task_name": "CASE WHEN q = 'whatsapp-send' THEN 'messaging.tasks.send_whatsapp_message' "
        "ELSE 'tests.tasks.always_fail' END",
        "queue": "q",
        "args": """'["default", "+15550001", "hi"]'::jsonb""",
        "status": "s",
        "status_reason": "CASE WHEN s = 'dead' THEN 'automatic retries used up (3 of 3)' ELSE '' END",
        "exception_class": f"'{ERROR_CLASS}'",
        "exception_message": f"'{MESSAGE}'",
        "traceback": "'Traceback (most recent call last):' || chr(10) || '  ...' || chr(10) || "
        "'GatewayUnavailable: gateway answered 503' || chr(10)",
        "attempts": "4 * (1 + floor(random() * 4))::int",
        "retry_count": "floor(random() * 4)::int",
        "first_failed_at": "last - random() * interval '1 hour'",
        "last_failed_at": "last",
        "next_retry_at": "CASE WHEN s = 'failed' THEN last + interval '300 seconds' END",
        "dead_at": "CASE WHEN s = 'dead' THEN last END",
        "resolved_at": "CASE WHEN s = 'resolved' THEN last + interval '600 seconds' END",
        "created_at": "last - interval '1 hour'",
        "updated_at": "last",
        "group_id": (
            f"CASE WHEN q = 'whatsapp-send' THEN {groups['messaging.tasks.send_whatsapp_message']} "
            f"ELSE {groups['tests.tasks.always_fail']} END"
        ),
    }
    columns, values, params = [], [], []
    for field in FailedJob._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.attname in expressions:
            values.append(expressions[field.attname])
        else:  # every other column (those added since this was written too) gets its model default
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
    sql = (
        f"INSERT INTO queueing_failedjob ({', '.join(columns)}) SELECT {', '.join(values)} FROM ("
        f"SELECT i, now() - random() * interval '90 days' AS last, {thresholds(STATUS_MIX, 'r')} AS s, "
        f"{thresholds(QUEUE_MIX, 'r2')} AS q FROM (SELECT i, random() AS r, random() AS r2 "
        f"FROM generate_series(1, {int(rows)}) AS i) AS x) AS y"
    )
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE queueing_failedjob RESTART IDENTITY")
        cursor.execute("SELECT setseed(0.20261128)")
        cursor.execute(sql, params)
    print(f"loaded {rows:,} rows in {time.perf_counter() - started:.1f} s")


MESSAGE = "gateway answered 503: down for maintenance"
ERROR_CLASS = "messaging.gateway.GatewayUnavailable"


def group_for(task_name: str, exception_class: str = ERROR_CLASS, message: str = MESSAGE, queue: str = "") -> int:
    """The id of the failure group of this cause (created as recording a failure would), by its fingerprint."""
    from django.utils import timezone

    from queueing.fingerprint import fingerprint
    from queueing.models import FailureGroup

    key, pattern = fingerprint(task_name=task_name, exception_class=exception_class, message=message)
    now = timezone.now()
    group, _ = FailureGroup.objects.get_or_create(
        fingerprint=key,
        defaults={
            "task_name": task_name,
            "exception_class": exception_class,
            "message_pattern": pattern,
            "queue": queue or ("whatsapp-send" if task_name.startswith("messaging.") else "default"),
            "first_seen_at": now,
            "last_seen_at": now,
            "state_changed_at": now,
        },
    )
    return group.pk


def assign_groups() -> None:
    """Give the rows in no failure group theirs (rows loaded before ``load`` set it): the admin's filters read
    their choices from the groups, as every failure recorded is in one."""
    from django.db import connection

    from queueing.models import FailedJob

    ungrouped = FailedJob.objects.filter(group__isnull=True).order_by()
    if not ungrouped.exists():
        return
    started = time.perf_counter()
    causes = ungrouped.values_list("task_name", "exception_class", "exception_message", "queue").distinct()
    for task_name, exception_class, message, queue in causes:
        group = group_for(task_name, exception_class, message, queue)
        ungrouped.filter(task_name=task_name, exception_class=exception_class, exception_message=message).update(
            group_id=group
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE queueing_failedjob")
    print(f"failure groups given to the rows in {time.perf_counter() - started:.1f} s")


def explain() -> None:
    from django.db import connection
    from django.db.models import Count

    from queueing.models import FailedJob

    queries = {
        "grouped count": FailedJob.objects.filter(status__in=["failed", "dead", "retrying"])
        .order_by()
        .values_list("queue", "status")
        .annotate(n=Count("id")),
        "newest failed of 'reports'": FailedJob.objects.filter(status="failed", queue="reports").order_by(
            "-last_failed_at", "-id"
        )[:10],
        "newest failed of 'whatsapp-send'": FailedJob.objects.filter(status="failed", queue="whatsapp-send").order_by(
            "-last_failed_at", "-id"
        )[:10],
    }
    for name, queryset in queries.items():
        sql, params = queryset.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = "\n    ".join(row[0] for row in cursor.fetchall())
        print(f"\n{name}:\n    {plan}")


def make_client() -> Callable[[str], Any]:
    from django.test import Client

    client = Client(HTTP_HOST="localhost")

    def request(query: str = "") -> Any:
        response = client.get("/api/queue/status" + query, headers={"Authorization": f"Bearer {TOKEN}"})
        if response.status_code != 200:
            raise SystemExit(f"GET /api/queue/status{query} answered {response.status_code}: {response.content[:300]}")
        return response

    return request


def over_http(*, processes: int, clients: int, requests_each: int) -> tuple[list[float], float]:
    """Real HTTP: gunicorn with ``processes`` workers, ``clients`` threads polling at once (keep-alive).

    Returns (durations, seconds the whole run took). The refreshes must not stampede across processes.
    """
    import socket
    import subprocess

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "QUEUEING_API_TOKEN": TOKEN, "QUEUEING_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "project.wsgi", f"--workers={processes}", f"--bind=127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/queue/status"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url, headers=headers, timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not answer within 30 s")
            time.sleep(0.1)
        for _ in range(processes * 5):  # warm every worker process
            requests.get(url, headers=headers, timeout=10)

        durations: list[float] = []
        lock = threading.Lock()

        def poll() -> None:
            session = requests.Session()
            mine = []
            for _ in range(requests_each):
                started = time.perf_counter()
                response = session.get(url, headers=headers, timeout=10)
                mine.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text[:300]
            with lock:
                durations.extend(mine)

        threads = [threading.Thread(target=poll) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return durations, time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)


def set_queueing(**overrides: Any) -> None:
    from django.conf import settings

    from queueing.conf import get_settings

    settings.QUEUEING = {**getattr(settings, "QUEUEING", {}), **overrides}
    get_settings.cache_clear()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def report(results: dict[str, list[float]], *, rows: int) -> None:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    print(f"\n{'measure':<52} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, values in results.items():
        print(
            f"{name:<52} {len(values):>5} {pct(values, 0.5) * 1000:>9.2f} {pct(values, 0.99) * 1000:>9.2f} "
            f"{max(values) * 1000:>9.2f}"
        )
    deployed = statistics.median(results["status, as deployed (counts cached 1 s)"])
    uncached = statistics.median(results["status, database queried every request"])
    for name in ("plain Celery: inspect(timeout=1).active()", "plain Celery: active + scheduled + reserved"):
        baseline = statistics.median(results[name])
        print(
            f"ratio {name} / status p50: {baseline / deployed:,.0f}x as deployed, {baseline / uncached:,.0f}x uncached"
        )
    print(f"({rows:,} rows; no worker up; p50/p99 by nearest rank)")


if __name__ == "__main__":
    main()
