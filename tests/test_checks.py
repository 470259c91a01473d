"""Safe settings checked at start-up (queueing/checks.py): Django's checks, a worker's and a Beat's start."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from queueing import checks
from tests.conftest import ROOT, stop, wait_for


@pytest.fixture
def app(celery_app: Celery) -> Iterator[Celery]:
    """The project's app, its time limits and transport options restored after the test."""
    saved = {
        key: celery_app.conf[key]
        for key in ("task_soft_time_limit", "task_time_limit", "broker_transport_options", "broker_url")
    }
    yield celery_app
    celery_app.conf.update(saved)


def ids(app: Celery) -> list[str]:
    return [p.id for p in checks.safe_settings_problems(app)]


def test_the_test_settings_and_the_defaults_are_consistent(app: Celery, configure: Any) -> None:
    assert ids(app) == []
    configure(LEASE_SECONDS=1800)
    app.conf.update(task_soft_time_limit=540, task_time_limit=600)  # the project's defaults
    assert ids(app) == []


def test_a_soft_limit_not_below_the_hard_limit_is_refused(app: Celery) -> None:
    app.conf.update(task_soft_time_limit=45, task_time_limit=45)

    [problem] = checks.safe_settings_problems(app)

    assert problem.id == "queueing.E102"
    assert "CELERY_TASK_SOFT_TIME_LIMIT (45 s)" in problem.message
    assert "CELERY_TASK_TIME_LIMIT (45 s)" in problem.message
    assert "below" in problem.hint


def test_no_hard_limit_is_refused(app: Celery) -> None:
    app.conf.update(task_soft_time_limit=None, task_time_limit=None)

    assert ids(app) == ["queueing.E101"]


def test_a_hard_limit_plus_the_longest_countdown_past_the_visibility_timeout_is_refused(
    app: Celery, configure: Any
) -> None:
    # Given a visibility timeout of 100 s and immediate retries that may wait up to 60 s (BACKOFF_MAX)
    configure(BACKOFF_BASE=2, BACKOFF_MAX=60, LEASE_SECONDS=3600)
    app.conf.update(broker_transport_options={"visibility_timeout": 100})

    problems = checks.safe_settings_problems(app)

    # Then 45 s of hard limit + 60 s of countdown do not fit: named, with the fix
    assert [p.id for p in problems] == ["queueing.E103"]
    assert "visibility timeout (100 s" in problems[0].message
    assert "CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout']" in problems[0].message
    assert "QUEUEING_BACKOFF_MAX" in problems[0].message


def test_the_visibility_timeout_is_not_checked_on_a_broker_without_one(app: Celery) -> None:
    app.conf.update(broker_url="amqp://guest@127.0.0.1//", broker_transport_options={"visibility_timeout": 1})

    assert ids(app) == []


def test_a_lease_not_longer_than_the_hard_limit_is_refused(app: Celery, configure: Any) -> None:
    configure(LEASE_SECONDS=45)

    [problem] = checks.safe_settings_problems(app)

    assert problem.id == "queueing.E104"
    assert "QUEUEING_LEASE_SECONDS (45 s)" in problem.message
    assert "hard time limit (45 s, CELERY_TASK_TIME_LIMIT)" in problem.message


def test_a_tasks_own_hard_limit_counts(app: Celery, configure: Any) -> None:
    task = app.tasks["tests.tasks.succeed"]
    task.time_limit = 120
    try:
        [problem] = checks.safe_settings_problems(app)
    finally:
        task.time_limit = None

    assert problem.id == "queueing.E104"
    assert "the time_limit of task tests.tasks.succeed" in problem.message


def test_the_system_check_is_an_error_so_manage_py_commands_refuse(app: Celery, configure: Any) -> None:
    configure(LEASE_SECONDS=10)

    errors = [m for m in django_checks.run_checks() if m.id and m.id.startswith("queueing.E10")]

    assert [e.level for e in errors] == [django_checks.ERROR]
    with pytest.raises(SystemCheckError, match="QUEUEING_LEASE_SECONDS"):
        call_command("check")


@pytest.mark.slow
def test_a_manage_py_command_and_a_worker_refuse_to_start_naming_the_settings(
    subprocess_env: dict[str, str],
) -> None:
    env = {**subprocess_env, "QUEUEING_LEASE_SECONDS": "30"}

    command = subprocess.run(
        [sys.executable, "manage.py", "check_queue"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    worker = subprocess.run(
        [str(ROOT / ".venv/bin/celery"), "-A", "project", "worker", "--pool", "solo", "-Q", "nobody-listens"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert command.returncode != 0
    assert "queueing.E104" in command.stderr and "QUEUEING_LEASE_SECONDS (30 s)" in command.stderr
    assert worker.returncode != 0
    assert "worker refuses to start" in worker.stderr
    assert "QUEUEING_LEASE_SECONDS (30 s)" in worker.stderr


@pytest.mark.slow
def test_a_beat_refuses_to_start_on_unsafe_settings(subprocess_env: dict[str, str], transactional_db: None) -> None:
    env = {**subprocess_env, "CELERY_TASK_SOFT_TIME_LIMIT": "50", "CELERY_TASK_TIME_LIMIT": "45"}

    beat = subprocess.run(
        [str(ROOT / ".venv/bin/celery"), "-A", "project", "beat", "--schedule", "/dev/null"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert beat.returncode != 0
    assert "beat refuses to start" in beat.stdout + beat.stderr
    assert "CELERY_TASK_SOFT_TIME_LIMIT (50 s)" in beat.stdout + beat.stderr


# --- more than one Beat ---------------------------------------------------------------------------------------


def test_a_second_beat_is_warned_about_once_naming_both(broker: redis.Redis, caplog: Any) -> None:
    first = checks.BeatHeartbeat(broker, identity="host-a:100")
    second = checks.BeatHeartbeat(broker, identity="host-b:200")

    with caplog.at_level(logging.WARNING, logger="queueing.checks"):
        assert first.beat() == []
        assert second.beat() == ["host-a:100"]
        assert first.beat() == ["host-b:200"]
        second.beat()  # seen before: no second warning

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "this one (host-b:200) and host-a:100" in warnings[0]
    assert "Run exactly one Beat" in warnings[0]


def test_a_beat_of_this_host_whose_process_is_gone_is_forgotten(broker: redis.Redis) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid no longer runs
    dead = checks.BeatHeartbeat(broker, identity=f"{socket.gethostname()}:{finished.pid}")
    dead.beat()

    assert checks.BeatHeartbeat(broker, identity="other-host:1").beat() == []
    assert broker.exists(dead.key) == 0


def test_a_stopped_beat_is_forgotten(broker: redis.Redis) -> None:
    first = checks.BeatHeartbeat(broker, identity="host-a:100")
    second = checks.BeatHeartbeat(broker, identity="host-b:200")
    first.beat()
    first.stop()

    assert second.beat() == []
    assert 0 < broker.ttl(second.key) <= checks.BEAT_HEARTBEAT_TTL_SECONDS


def test_without_a_status_redis_a_beat_says_it_cannot_detect_another(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from queueing import status

    def no_redis() -> redis.Redis:
        raise status.Unavailable("the broker is sqs:// and REDIS_URL is empty: set REDIS_URL")

    monkeypatch.setattr(status, "broker_redis", no_redis)

    with caplog.at_level(logging.WARNING, logger="queueing.checks"):
        assert checks.BeatHeartbeat.start_in_status_redis() is None

    assert "a second Beat cannot be detected, run exactly one: the broker is sqs://" in caplog.text


@pytest.mark.slow
def test_two_real_beats_log_one_warning_naming_both(
    subprocess_env: dict[str, str], tmp_path: Any, transactional_db: None
) -> None:
    # Given two Beat processes on the same broker and database
    def beat(n: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(ROOT / ".venv/bin/celery"), "-A", "project", "beat", "--schedule", str(tmp_path / f"s{n}")],
            cwd=ROOT,
            env=subprocess_env,
            stdout=open(tmp_path / f"beat{n}.log", "w"),
            stderr=subprocess.STDOUT,
            text=True,
        )

    beats = [beat(1), beat(2)]
    try:
        # Then one of them says, in one WARNING line, that more than one Beat runs the sweep, naming both pids
        def warned() -> list[str]:
            lines = [line for n in (1, 2) for line in (tmp_path / f"beat{n}.log").read_text().splitlines()]
            return [line for line in lines if "more than one Beat runs the sweep" in line]

        [line, *_] = wait_for(warned, timeout=40, what="the two-Beats warning")
        assert "WARNING" in line
        assert all(f":{b.pid}" in line for b in beats)
    finally:
        for process in beats:
            stop(process)
