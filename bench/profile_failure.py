"""Where the failure path's time goes: ``recording.record_failure`` under cProfile, in-process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_perf .venv/bin/python -m bench.profile_failure

Three runs of N calls each: (a) the database connection closed before and after each call, as Celery's Django
fix-up does around every task unless ``CELERY_DB_REUSE_MAX`` is set (what a worker did before); (b) the
connection kept open between calls; (c) kept, health-checked before each call and the policy reused for a
second (what a worker does now, ``project/celery.py``). Prints ms per call and the top of each profile
(cumulative time), so the difference is visible function by function.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def failure() -> object:
    from queueing import recording

    return recording.Failure(
        task_name="bench.retryable_fail",
        task_id=str(uuid.uuid4()),
        origin_task_id=str(uuid.uuid4()),
        queue="bench",
        args=["x"],
        kwargs={},
        exception_class="builtins.RuntimeError",
        exception_message="fails on purpose",
        traceback="Traceback ...",
        attempts=1,
    )


def run(n: int, *, mode: str, top: int) -> tuple[float, str]:
    """(ms per call, profile summary) of n calls of ``record_failure``."""
    from django.conf import settings
    from django.db import close_old_connections, connections

    from project import celery
    from queueing import autoretry, recording

    autoretry.policy_max_age_seconds = 0.0
    if mode == "worker":
        celery.keep_database_connections()  # what a worker does at start: kept connections, policy reused
    connections["default"].settings_dict["CONN_MAX_AGE"] = settings.WORKER_CONN_MAX_AGE if mode != "closed" else 0

    def one() -> None:
        if mode == "closed":
            connections.close_all()  # the fix-up's task_prerun
        elif mode == "worker":
            close_old_connections()  # project/celery.py's task_prerun: health check on next use
        recording.record_failure(failure())  # type: ignore[arg-type]
        if mode == "closed":
            connections.close_all()  # the fix-up's task_postrun

    one()  # warm: imports, first connection
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(n):
        one()
    profiler.disable()
    per_call_ms = (time.perf_counter() - started) / n * 1000
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return per_call_ms, summarize(out.getvalue())


def summarize(text: str) -> str:
    """The profile's table with the paths shortened to what a reader needs."""
    lines = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("Ordered by", "List reduced")):
            continue
        lines.append(line.replace(str(ROOT) + "/", "").replace(sys.prefix + "/lib/", ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    import logging

    logging.getLogger("queueing").setLevel(logging.WARNING)
    print(f"database: {connection.vendor}; {args.calls} calls each; load average {os.getloadavg()[0]:.1f}")
    modes = {
        "closed": "connection closed around each call, policy read each time (a worker before)",
        "kept": "connection kept, no health check, policy read each time",
        "worker": "connection kept and health-checked, policy reused 1 s (a worker now)",
    }
    for mode, label in modes.items():
        per_call_ms, summary = run(args.calls, mode=mode, top=args.top)
        print(f"\n=== {label}: {per_call_ms:.2f} ms per call\n{summary}")


if __name__ == "__main__":
    main()
