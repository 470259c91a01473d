"""What an operator reads in `celery -A project worker -l info`: every final failure, every state change.

A real worker subprocess, prefork (the default pool) with two processes, each running several tasks: Celery's
Django fixup calls ``django.setup()`` again in a pool process (when the task modules are imported there), and
that must not take the worker's log handlers and level away (``project/logconfig.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from queueing.models import FailedJob
from tests import tasks
from tests.conftest import ROOT, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(180)]

#: Calls of ``tests.tasks.succeed``: with two pool processes, each runs several tasks.
SUCCESSES = 6


def lines_missing(log: str, expected: dict[str, str]) -> list[str]:
    """The descriptions in ``expected`` whose pattern matches no line of ``log``."""
    return [what for what, pattern in expected.items() if not re.search(pattern, log, re.MULTILINE)]


def test_a_prefork_worker_prints_every_final_failure_and_every_state_change_by_id(
    subprocess_env: dict[str, str], broker: redis.Redis, tmp_path: Path
) -> None:
    # Given a prefork worker (2 processes, Beat inside so that the sweep runs) whose output is captured
    log_file = tmp_path / "worker.log"
    env = {**subprocess_env, "QUEUEING_MAX_RETRIES": "1", "QUEUEING_RETRY_DELAY": "0", "QUEUEING_CHECK_INTERVAL": "1"}
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info", "-c", "2"]
    command += ["-P", "prefork", "--include", "tests.tasks", "-n", f"logs-{uuid.uuid4().hex[:8]}@%h"]
    command += ["--without-gossip", "--without-mingle"]
    with log_file.open("w") as out:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log_file.read_text(), timeout=60, what="the worker to start")
        key = uuid.uuid4().hex

        # When calls succeed, fail for good at once, fail until their automatic retries are used up, and
        # fail until the sweep's retry succeeds
        succeeded = [tasks.succeed.delay(f"{key}-{n}").id for n in range(SUCCESSES)]
        permanent = tasks.fail_permanently.delay(f"{key}-permanent").id
        used_up = tasks.always_fail.delay(f"{key}-used-up").id
        recovers = tasks.fail_times.delay(f"{key}-recovers", 4).id  # the original call and its 3 retries fail

        def settled() -> dict[str, FailedJob] | None:
            jobs = {job.origin_task_id: job for job in FailedJob.objects.all()}
            done = (
                len(jobs) == 3
                and jobs[permanent].status == FailedJob.Status.DEAD
                and jobs[used_up].status == FailedJob.Status.DEAD
                and jobs[recovers].status == FailedJob.Status.RESOLVED
            )
            return jobs if done else None

        jobs: dict[str, FailedJob] = wait_for(settled, timeout=90, what="every job in its final state")

        # Then the worker's output names each final failure at ERROR and each state change, by id
        clone_failed, clone_resolved = jobs[used_up].latest_task_id, jobs[recovers].latest_task_id
        assert clone_failed and clone_resolved
        pool = r"/ForkPoolWorker-\d+\]"  # printed by a pool process, not the main one
        expected: dict[str, str] = {}
        for task_id in (permanent, used_up, clone_failed, recovers):
            expected[f"ERROR of {task_id}"] = rf"ERROR{pool} Task tests\.tasks\.\w+\[{task_id}\] raised unexpected"
        for task_id in [*succeeded, clone_resolved]:
            expected[f"success of {task_id}"] = rf"INFO{pool} Task tests\.tasks\.\w+\[{task_id}\] succeeded in"
        for origin, changes in {
            permanent: ["recorded dead after 1 attempts"],
            used_up: ["recorded failed after 4 attempts", f"sent again as {clone_failed}", "recorded dead after"],
            recovers: [
                "recorded failed after 4 attempts",
                f"sent again as {clone_resolved}",
                f"resolved by clone {clone_resolved}",
            ],
        }.items():
            job = jobs[origin]
            for change in changes:
                expected[f"job {job.pk} {change}"] = (
                    rf"INFO{pool} job {job.pk} \({re.escape(job.task_name)}\) {re.escape(change)}"
                )

        # (The last lines may still be on their way to the file.)
        def all_printed() -> bool:
            return not lines_missing(log_file.read_text(), expected)

        try:
            wait_for(all_printed, timeout=10, what="every expected line in the worker's output")
        except AssertionError:
            pytest.fail(f"missing from the worker's output: {lines_missing(log_file.read_text(), expected)}")
    finally:
        stop(worker)
