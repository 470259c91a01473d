"""``python -m bench`` (or ``bin/bench``): every figure of issue 10, each a ratio against its baseline from the
same run, min/median/max over the repetitions, on PostgreSQL and SQLite, with the plots of docs/benchmarks.md.

    bin/bench                      # the whole run (about 30 minutes on 2 cores; 1,000,000 rows loaded once)
    bin/bench --quick              # small N, a minute: checks the bench works (CI), its numbers mean nothing
    bin/bench --only bulk,sweep    # some figures (failure, bulk, sweep, batch, rss, scale, status)

Databases: ``BENCH_POSTGRES_URL`` (default postgres://postgres@127.0.0.1:5432/bench_<user>; a second
database ``<name>_status`` holds the 1,000,000 rows of the status and admin figures) and a SQLite file
under var/. Broker: ``REDIS_URL`` (default redis://127.0.0.1:6379/6). The databases' failed-job tables are
emptied and the bench's own queues deleted: point it at scratch ones. Results: var/bench/results.json;
plots: docs/benchmarks/*.png (needs matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: figure prefix -> (target, how a value meets it)
TARGETS: dict[str, tuple[str, Any]] = {
    "failure path, 0": ("≥ 0.75", lambda v: v >= 0.75),
    "failure path, 3": ("≥ 0.90", lambda v: v >= 0.90),
    "retry_all_failed of": ("≥ 1.0 (aim 3)", lambda v: v >= 1.0),
    "sweep of": ("≤ 1.2", lambda v: v <= 1.2),
    "GET /api/queue/status": ("≤ 10 ms", lambda v: v <= 10),
    "admin changelist unfiltered": ("≤ 0.3 s", lambda v: v <= 0.3),
    "admin changelist by status": ("≤ 0.3 s", lambda v: v <= 0.3),
    "admin changelist text search": ("≤ 0.5 s", lambda v: v <= 0.5),
    "retry_all_failed peak RSS": ("≤ 1.2x", lambda v: v <= 1.2),
    "POST /api/queue/retry-all-failed": ("< 1 s", lambda v: v < 1.0),
    "4 sweeps": ("every job once; rate reported", lambda v: True),
}


def database_urls(postgres: str, *, quick: bool = False) -> dict[str, str]:
    """The databases of a run; a quick one keeps its small status table apart from the 1,000,000 rows."""
    return {
        "postgres": postgres,
        "postgres-status": postgres.rstrip("/") + ("_status_quick" if quick else "_status"),
        "sqlite": f"sqlite:///{ROOT / 'var' / 'bench' / 'bench.sqlite3'}",
    }


def ensure_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def run(database: str, url: str, extra: list[str]) -> list[dict[str, Any]]:
    env = {**os.environ, "DATABASE_URL": url, "QUEUEING_LOG_LEVEL": "WARNING"}
    print(f"--- {database}: python -m bench.run {' '.join(extra)}", flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for result in results:
        print(f"    {result['figure']}: {', '.join(f'{v:.3g}' for v in result['values'])}", flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | database | min | median | max | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        values = result["values"]
        target, met = next(((t, m) for prefix, (t, m) in TARGETS.items() if result["figure"].startswith(prefix)),
                           ("", lambda v: True))  # fmt: skip
        median = statistics.median(values)
        lines.append(
            f"| {result['figure']} | {result['database']} | {min(values):.3g} | {median:.3g} | {max(values):.3g} "
            f"| {target} | {'yes' if met(median) else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--databases", default="postgres,sqlite")
    parser.add_argument("--status-rows", type=int, default=1_000_000)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--results", default="var/bench/results.json", help="where the figures are written (JSON)")
    args = parser.parse_args()

    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/6")
    postgres = os.environ.get("BENCH_POSTGRES_URL", f"postgres://postgres@127.0.0.1:5432/bench_{getpass.getuser()}")
    urls = database_urls(postgres, quick=args.quick)
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    common = ["--rounds", str(args.rounds), *(["--quick"] if args.quick else [])]
    load = os.getloadavg()
    started = time.time()
    results: list[dict[str, Any]] = []
    for database in args.databases.split(","):
        if database == "postgres":
            ensure_postgres_database(urls["postgres"])
            parts = (only or {"failure", "bulk", "sweep", "batch", "rss", "scale", "status"}) - {"status"}
            if parts:
                results += run("postgres", urls["postgres"], [*common, "--only", ",".join(sorted(parts))])
            if not only or "status" in only:
                ensure_postgres_database(urls["postgres-status"])
                rows = ["--status-rows", str(args.status_rows)]
                results += run("postgres", urls["postgres-status"], [*common, "--only", "status", *rows])
        elif database == "sqlite":
            parts = (only or {"failure", "bulk", "sweep", "batch", "rss"}) & {
                "failure",
                "bulk",
                "sweep",
                "batch",
                "rss",
            }
            if parts:
                results += run("sqlite", urls["sqlite"], [*common, "--only", ",".join(sorted(parts))])
        else:
            sys.exit(f"bench: unknown database {database!r} (postgres, sqlite)")

    summary = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in load],
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "quick": args.quick,
        "results": results,
    }
    (ROOT / args.results).write_text(json.dumps(summary, indent=1))
    print(f"\n{os.cpu_count()} CPUs; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}; "
          f"{summary['minutes']} min; {args.rounds} repetitions\n")  # fmt: skip
    print(table(results))
    if not args.no_plots:
        from bench import plots

        for path in plots.draw(results, ROOT / ("var/bench" if args.quick else "docs/benchmarks")):
            print(f"plot: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
