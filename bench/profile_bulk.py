"""Profile a bulk retry (``operations.retry_now``) in-process with cProfile, beside the plain ``send_task`` loop
it is measured against (docs/benchmarks.md, "retry_all_failed of 3,000 jobs").

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_x REDIS_URL=redis://127.0.0.1:6379/6 \\
        .venv/bin/python -m bench.profile_bulk --jobs 3000 --top 25

The database must be a scratch one (``bench`` in its name): its failed-job table is emptied.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

from bench import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="cumulative")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    import bench.tasks  # noqa: F401
    from queueing import operations
    from queueing.registry import celery_app

    if "bench" not in str(settings.DATABASES["default"]["NAME"]):
        raise SystemExit("needs a scratch database with 'bench' in its name")
    call_command("migrate", verbosity=0)
    run.declare_queues()
    client = run.broker()
    app = celery_app()

    def plain_loop() -> None:
        with app.producer_or_acquire() as producer:
            for i in range(args.jobs):
                app.send_task(run.BENCH_TASK, args=[i], kwargs={}, queue=run.HOLD, producer=producer)

    for label, fn in (
        ("retry_now", lambda: operations.retry_now(queue=run.HOLD)),
        ("plain send_task loop", plain_loop),
    ):
        run.empty()
        client.delete(run.HOLD)
        run.fill(args.jobs, status="failed")
        run.analyze()
        profile = cProfile.Profile()
        seconds = run.timed(lambda fn=fn, profile=profile: profile.runcall(fn))  # type: ignore[misc]
        sent = client.llen(run.HOLD)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(args.sort).print_stats(args.top)
        print(f"=== {label}: {sent} messages in {seconds:.2f} s (under the profiler)\n{out.getvalue()}")
    client.delete(run.HOLD)
    run.empty()


if __name__ == "__main__":
    main()
