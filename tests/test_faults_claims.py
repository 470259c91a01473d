# ruff: noqa: F811  (the fixtures imported from tests/faults.py are parameters of the tests)
"""Fault scenarios around claims, with real processes: a clone that finishes after its lease was taken back
(F15), and two Beats sending the sweep (F16). The scenario table is in docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, stop, wait_for
from tests.faults import (  # noqa: F401  (fixtures)
    Database,
    PrivateRedis,
    check_invariants,
    database,
    database_template,
    fault_env,
    history,
    ledger,
    private_redis,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SWEEP = "import tests.fault_tasks\nfrom queueing import sweep\nprint(sweep.sweep())\n"


def _due_jobs(database: Database, env: dict[str, str], calls: list[tuple[str, float]]) -> None:
    rows = ", ".join(
        f"FailedJob(origin_task_id='{key}', task_name='tests.fault_tasks.hold', queue='default',"
        f" args=['{key}', {seconds}, 'ok'], first_failed_at=now, last_failed_at=now, next_retry_at=now)"
        for key, seconds in calls
    )
    code = (
        "from django.utils import timezone\n"
        "from queueing.models import FailedJob\n"
        "now = timezone.now()\n"
        f"FailedJob.objects.bulk_create([{rows}])\n"
    )
    database.execute_python(env, code)


def _starts(env: dict[str, str], key: str) -> int:
    return len([e for e in ledger(env, key) if e.startswith("start:")])


def test_f15_a_clone_that_finishes_after_its_lease_was_taken_back_writes_nothing(
    fault_env: dict[str, str], database: Database, workers: Any
) -> None:
    env = {**fault_env, "QUEUEING_LEASE_SECONDS": "1"}
    key = uuid.uuid4().hex
    _due_jobs(database, env, [(key, 4)])
    workers(env=env, concurrency=2)

    # Given a retry that runs longer than its lease
    assert "sent=1" in database.execute_python(env, SWEEP)
    wait_for(lambda: _starts(env, key) == 1, what="the first clone to start")

    # When the sweep takes the job back after the lease and sends a second clone
    def sweep_took_it_back() -> str:
        out = database.execute_python(env, SWEEP)
        return out if "recovered=1" in out else ""

    out = wait_for(sweep_took_it_back, timeout=30, what="a sweep to take the job back")
    assert "sent=1" in out, out
    wait_for(lambda: _starts(env, key) == 2, what="the second clone to start")

    # Then the first clone, finishing first, writes nothing; the second one resolves the job
    row = wait_for(lambda: (r := database.jobs()[0])["status"] == "resolved" and r, timeout=30, what="the second")
    wait_for(lambda: len([e for e in ledger(env, key) if e.startswith("end:")]) == 2, what="both clones to end")
    time.sleep(0.5)
    row = database.jobs()[0]
    assert row["status"] == "resolved"
    assert row["retry_count"] == 2  # the first retry was used up when its lease ran out
    events = [e["event"] for e in history(row)]
    assert events.count("resolved") == 1
    assert "lease_expired" in events
    log = "".join(p.read_text() for p in Path(env["QUEUEING_VAR_DIR"]).parent.glob("worker-*.log"))
    assert "succeeded after its claim was gone" in log
    assert check_invariants(database, origins=[key]) == {key: "resolved"}


def test_f16_two_beats_sending_the_sweep_send_each_due_job_once(
    fault_env: dict[str, str], database: Database, workers: Any, tmp_path: Path
) -> None:
    keys = [uuid.uuid4().hex for _ in range(20)]
    _due_jobs(database, fault_env, [(key, 0.1) for key in keys])
    workers(concurrency=2)

    # When two Beats (a misconfiguration: two `-B` workers, or two `celery beat`) both send the sweep every second
    beats = []
    for n in range(2):
        command = [sys.executable, "-m", "celery", "-A", "project", "beat", "-l", "info"]
        command += ["--pidfile", str(tmp_path / f"beat-{n}.pid"), "-s", str(tmp_path / f"beat-{n}.schedule")]
        with (tmp_path / f"beat-{n}.log").open("w") as out:
            beats.append(subprocess.Popen(command, env=fault_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))
    try:
        # Then every job is sent, run and resolved once
        wait_for(
            lambda: all(row["status"] == "resolved" for row in database.jobs()), timeout=90, what="every job resolved"
        )

        def sent_by() -> list[int]:
            return [(tmp_path / f"beat-{n}.log").read_text().count("Sending due task") for n in range(2)]

        # (each Beat sends the sweep every second: one that read the schedule while the other moved it from 60 s
        # to 1 s kept 60 s before schedule.prepare_beat; docs/reliability.md, F16)
        wait_for(lambda: all(count > 1 for count in sent_by()), timeout=60, what="both Beats sending the sweep")

        # And the second Beat is detected: a WARNING naming both
        def warned() -> list[str]:
            lines = "".join((tmp_path / f"beat-{n}.log").read_text() for n in range(2)).splitlines()
            return [line for line in lines if "more than one Beat runs the sweep" in line]

        [line, *_] = wait_for(warned, timeout=30, what="the two-Beats warning")
        assert "WARNING" in line and all(f":{beat.pid}" in line for beat in beats), line
    finally:
        for beat in beats:
            stop(beat)
    assert [_starts(fault_env, key) for key in keys] == [1] * 20
    assert {row["retry_count"] for row in database.jobs()} == {1}
    assert check_invariants(database, origins=keys) == dict.fromkeys(keys, "resolved")
