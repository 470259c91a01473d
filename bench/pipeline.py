"""Throughput of RetryableTask against plain Celery, through a real worker and Redis, in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/benchpipeline REDIS_URL=redis://127.0.0.1:6379/14 \
        .venv/bin/python bench/pipeline.py --calls 2000 --failures 300

It migrates the database, starts one `celery worker` (prefork, 2 processes), and times, for each kind of
task, how long the worker takes to run N calls that were queued beforehand. Success path: the same no-op
body as a plain `celery.Task` and as a `RetryableTask`. Failure path (no immediate retries): a plain task
that raises (Celery logs it, nothing kept) against a RetryableTask that raises (one FailedJob row written).
Prints calls/second and the ratio retryable/plain.

``--only failure`` runs just the two failure-path figures of docs/benchmarks.md as ``bench.run`` measures them
(0 immediate retries; 3 immediate retries against plain ``autoretry_for``), ``--rounds`` ratios each, and prints
min / median / max with the load average (docs/benchmarks-failure-path.md)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_perffail_bench REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python -m bench.pipeline --only failure --failures 300 --rounds 3
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per success-path run")
    parser.add_argument("--failures", type=int, default=300, help="calls per failure-path run")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path; medians are printed")
    parser.add_argument("--only", choices=["failure"], help="just the failure-path figures of bench.run")
    parser.add_argument("--retries", default="0,3", help="with --only failure: which figures (immediate retries)")
    parser.add_argument("--profile", metavar="TASK", help="profile a solo worker running --failures calls of TASK")
    parser.add_argument("--profile-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_worker:
        return profiled_worker(args.profile_worker)

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
    if args.profile:  # its own queue: the Redis db is left as it is
        return profile(client, args.profile, args.failures)
    client.flushdb()
    if args.only == "failure":
        retries = [int(n) for n in args.retries.split(",")]
        return failure_figures(calls=args.failures, rounds=args.rounds, concurrency=args.concurrency, retries=retries)

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


def failure_figures(*, calls: int, rounds: int, concurrency: int, retries: list[int]) -> None:
    """The failure-path rows of ``bench.run`` (its worker, its tasks, its rounds, interleaved), summarised as
    min / median / max of the ratios, with the machine's load average before and after."""
    from django.db import connection

    from bench import run, tasks

    figures = {
        0: ("failure path, 0 immediate retries", tasks.plain_fail, tasks.retryable_fail, 1),
        3: ("failure path, 3 immediate retries", tasks.plain_fail_autoretry, tasks.retryable_fail_3, 4),
    }
    load_before = os.getloadavg()
    client = run.broker()
    print(f"database: {connection.vendor}; {calls} calls x {rounds} rounds; worker prefork x{concurrency}", flush=True)
    with run.worker(concurrency, QUEUEING_BACKOFF_BASE="0", QUEUEING_BACKOFF_JITTER="false"):
        for figure, plain, retryable, attempts in (figures[n] for n in retries):
            plain_rates, retryable_rates = [], []
            for _ in range(rounds):
                plain_rates.append(_run(client, plain, calls, attempts_each=attempts))
                retryable_rates.append(_run(client, retryable, calls, attempts_each=attempts))
            ratios = [r / p for r, p in zip(retryable_rates, plain_rates, strict=True)]
            print(
                f"{figure}: ratio min {min(ratios):.2f} median {statistics.median(ratios):.2f} max {max(ratios):.2f}"
                f" ({' '.join(f'{r:.2f}' for r in ratios)}); plain/s {_rates(plain_rates)}; "
                f"RetryableTask/s {_rates(retryable_rates)}",
                flush=True,
            )
    print(f"load average (1/5/15 min) before: {_load(load_before)}; after: {_load(os.getloadavg())}")


PROFILE_QUEUE = "bench-profile"


def profile(client: Any, task_name: str, n: int) -> None:
    """Queue n calls of ``task_name``, run them in one solo-pool worker under cProfile, and print, per call:
    SQL queries, Redis commands, and the top of the profile (cumulative). Profile of the whole worker process:
    consuming, running, recording, retrying, acknowledging."""
    import json

    from celery import current_app

    from bench import tasks  # noqa: F401  (registers the bench tasks)

    attempts = 4 if task_name.endswith(("_3", "_autoretry")) else 1
    key = f"done-{uuid.uuid4().hex}"
    for _ in range(n):
        current_app.send_task(task_name, (key,), queue=PROFILE_QUEUE)
    out = ROOT / "var" / f"profile-{task_name.rsplit('.', 1)[-1]}"
    env = {**os.environ, "QUEUEING_BACKOFF_BASE": "0", "QUEUEING_BACKOFF_JITTER": "false"}
    log = open(ROOT / "var" / "bench-profile-worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.pipeline", "--profile-worker", str(out)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
    )  # fmt: skip
    started = time.perf_counter()
    _wait(client, key, n * attempts, timeout=900)
    while client.llen(PROFILE_QUEUE):
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    time.sleep(1)  # the last acknowledgement
    worker.terminate()
    worker.wait(timeout=60)
    counts = json.loads(Path(f"{out}.json").read_text())
    print(f"{task_name}: {n} calls ({n * attempts} attempts) in {seconds:.1f} s, {n / seconds:.1f} calls/s")
    print(f"load average: {_load(os.getloadavg())}")
    print(
        f"per call: {counts['queries'] / n:.2f} SQL queries, {counts['redis'] / n:.2f} Redis round trips, "
        f"{counts['redis_in_tasks'] / n:.2f} of them inside the task's run (prerun to postrun)"
    )
    print(f"queries of one call: {json.dumps(counts['sample_queries'], indent=1)}")
    print(f"Redis commands inside one call: {counts['sample_redis']}")
    import pstats

    stats = pstats.Stats(f"{out}.prof")
    stats.sort_stats("cumulative").print_stats(45)


def profiled_worker(out: str) -> None:
    """A solo-pool ``celery worker`` on the profile queue under cProfile, counting SQL queries and Redis
    commands (every command: the broker's too); writes ``out``.prof and ``out``.json when it stops."""
    import cProfile
    import json

    import django

    django.setup()
    import redis.connection
    from celery.signals import task_postrun, task_prerun, worker_shutdown
    from django.db import connections

    from bench import tasks  # noqa: F401
    from project.celery import app

    counts: dict[str, Any] = {"queries": 0, "redis": 0, "redis_in_tasks": 0, "sample_queries": [], "sample_redis": []}
    in_task: list[list[str]] = []

    def count_query(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        counts["queries"] += 1
        if in_task and len(counts["sample_queries"]) < 40 and counts["_sampling"]:
            counts["sample_queries"].append(sql[:160])
        return execute(sql, params, many, context)

    connection_class = redis.connection.AbstractConnection
    send_packed, send = connection_class.send_packed_command, connection_class.send_command

    def count_round_trip(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis"] += 1  # one write to the server: a command, or a whole pipeline
        counts["redis_in_tasks"] += bool(in_task)
        return send_packed(self, *args, **kwargs)

    def name_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        if in_task and counts["_sampling"]:
            counts["sample_redis"].append(str(args[0]))
        return send(self, *args, **kwargs)

    connection_class.send_packed_command = count_round_trip  # type: ignore[method-assign]
    connection_class.send_command = name_command  # type: ignore[method-assign]
    counts["_sampling"] = False
    seen = [0]

    @task_prerun.connect(weak=False)
    def _started(**_: Any) -> None:
        for alias in connections:
            connections[alias].execute_wrappers[:] = [count_query]
        seen[0] += 1
        counts["_sampling"] = seen[0] == 5  # the fifth call: warm, typical
        in_task.append([])

    @task_postrun.connect(weak=False)
    def _ended(**_: Any) -> None:
        in_task.pop()
        counts["_sampling"] = False

    profiler = cProfile.Profile()

    @worker_shutdown.connect(weak=False)
    def _dump(**_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(f"{out}.prof")
        Path(f"{out}.json").write_text(json.dumps({k: v for k, v in counts.items() if not k.startswith("_")}))

    profiler.enable()
    app.worker_main(
        ["worker", "-P", "solo", "-l", "warning", "-n", f"profile-{uuid.uuid4().hex[:6]}@%h",
         "--without-gossip", "--without-mingle", "-Q", PROFILE_QUEUE]
    )  # fmt: skip


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.1f}" for x in load)


def _rates(rates: list[float]) -> str:
    return " ".join(f"{r:.0f}" for r in rates)


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
