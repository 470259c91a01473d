"""A call whose worker process is killed is retried, then recorded: never silently lost."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from queueing.models import FailedJob
from tests import tasks
from tests.conftest import ROOT, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_call_whose_worker_process_is_killed_is_retried_then_recorded_as_failed(
    subprocess_env: dict[str, str], broker: redis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-P", "prefork", "-c", "1", "-l", "info"]
    command += ["--include", "tests.tasks", "-n", f"killed-{uuid.uuid4().hex[:8]}@%h", "--without-gossip"]
    with log.open("w") as out:
        worker = subprocess.Popen(command, env=subprocess_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log.read_text(), timeout=60, what="the worker to start")
        key = uuid.uuid4().hex

        # When a call kills its worker process each time it runs
        result = tasks.kill_own_worker.delay(key)

        # Then it runs 1 + IMMEDIATE_RETRIES times and is recorded, once, with the reason
        job: Any = wait_for(
            lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), timeout=90, what="the FailedJob row"
        )
    finally:
        stop(worker)
    assert int(broker.get(f"runs:{key}")) == 4
    assert FailedJob.objects.count() == 1
    assert job.exception_class == "billiard.exceptions.WorkerLostError"
    assert job.status == FailedJob.Status.FAILED
    assert job.task_name == "tests.tasks.kill_own_worker"
    assert job.args == [key]
