"""Shared fixtures: a real Redis broker (a db of its own), the embedded Celery worker, fast retry settings.

With ``CELERY_BROKER_URL=amqp://…`` (bin/test's RabbitMQ pass, a vhost of its own) the broker is RabbitMQ and
Redis (``REDIS_URL``) keeps only the status counters and the tests' own side effects; the tests named in
``RABBITMQ_TESTS`` carry the ``rabbitmq`` marker and are the ones that pass runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.db import connection
from django.utils import timezone

import tests.tasks  # noqa: F401  (registers the test tasks in this process too)

# Settings read the environment once; make sure no QUEUEING_* from the shell changes what tests expect.
for _name in [n for n in os.environ if n.startswith("QUEUEING_") and n != "QUEUEING_VAR_DIR"]:
    del os.environ[_name]

#: The checkout: subprocesses run ``manage.py`` from here, wherever pytest was started.
ROOT = Path(__file__).resolve().parent.parent

#: Settings that run the whole lifecycle in seconds.
FAST = {
    "BACKOFF_BASE": 0.05,
    "IMMEDIATE_RETRIES": 3,
    "RETRY_DELAY": 0,
    "CHECK_INTERVAL": 1,
    "MAX_RETRIES": 3,
    "LEASE_SECONDS": 60,
}

#: Time limits that fit FAST's 60 s lease (queueing/checks.py refuses a hard limit that does not): every process
#: of the tests runs with them (bin/test exports them; subprocess_env and the embedded worker's app use them).
TIME_LIMITS = {"CELERY_TASK_SOFT_TIME_LIMIT": 40, "CELERY_TASK_TIME_LIMIT": 45}
for _name, _seconds in TIME_LIMITS.items():
    os.environ.setdefault(_name, str(_seconds))


def wait_for(condition: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(autouse=True)
def configure(settings: Any) -> Callable[..., dict[str, Any]]:
    """``configure(RETRY_DELAY=300)``: the fast settings with some keys changed (assigned, so caches reset)."""

    def apply(**overrides: Any) -> dict[str, Any]:
        settings.QUEUEING = {**FAST, **overrides}
        return settings.QUEUEING

    apply()
    return apply


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local TCP port that accepts connections and never answers (a hung server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.fixture(autouse=True)
def no_group_ids_of_another_test() -> None:
    """Each test starts with its own tables: the failure-group ids this process learnt (``queueing/groups.py``)
    belong to the test before."""
    from queueing import groups

    groups._group_ids.clear()


@pytest.fixture(autouse=True)
def no_refresh_left_behind() -> Iterator[None]:
    """Wait for the status refreshes a test started in the background (queueing/status/cache.py), so that they
    cannot write into the next test's Redis."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("refresh queueing:"):
            thread.join(timeout=10)


#: Tests that run on RabbitMQ too (marker ``rabbitmq``; bin/test's RabbitMQ pass runs ``-m rabbitmq``): file ->
#: test names, or "*" for all of the file. Those that read the broker's Redis lists themselves stay Redis-only.
RABBITMQ_TESTS: dict[str, str | set[str]] = {
    "test_rabbitmq.py": "*",
    "test_pipeline.py": "*",
    "test_workflows.py": "*",
    "test_workflow.py": "*",
    "test_outage_scenario.py": "*",
    "test_status_api.py": {
        "test_status_answers_every_known_queue_in_the_seeds_shape",
        "test_without_a_worker_active_and_delayed_are_null_and_the_workers_are_asked_once_per_period",
        "test_completed_counts_the_tasks_that_succeeded_on_each_queue",
        "test_active_and_delayed_come_from_a_real_worker",
        "test_the_status_json_matches_its_openapi_schema",
    },
    "test_check_queue.py": {"test_it_prints_the_seeds_block_for_each_queue", "test_json_has_the_apis_structure"},
    "test_flower.py": {"test_flower_lists_the_tasks_a_worker_runs"},
    "test_worker_lost.py": "*",
    # the second Beat is detected in the status Redis (REDIS_URL) beside RabbitMQ
    "test_checks.py": {"test_two_real_beats_log_one_warning_naming_both"},
}


#: Tests whose outcome cannot depend on the pass's database (marker ``database_agnostic``): pure units, files read
#: (compose.yaml, README, docs, the architecture), and processes that run on a database of their own (bin/start's
#: stack: its own SQLite) or none. bin/test runs them on its first database only (TEST_SKIP_DATABASE_AGNOSTIC=1 on
#: the others): file -> test names, or "*" for all of the file. Nothing that reads or writes a FailedJob, claims,
#: locks or migrates belongs here; a listed test that asks for the database fails the collection
#: (DATABASE_FIXTURES).
DATABASE_AGNOSTIC_TESTS: dict[str, str | set[str]] = {
    "test_architecture.py": "*",
    "test_backoff.py": "*",
    "test_breaker.py": "*",
    "test_compose.py": "*",
    "test_conf.py": "*",
    "test_deploy_checks.py": "*",  # `manage.py check --deploy` without DATABASE_URL
    "test_devstack.py": "*",  # the stack runs on a SQLite of its own (stack_env)
    "test_error_policy.py": "*",
    "test_fake_gateway.py": "*",  # the fake WhatsApp gateway keeps its messages in a file
    "test_fingerprint.py": "*",
    "test_gateway.py": "*",
    "test_logconfig.py": "*",
    "test_policy.py": "*",
    "test_stackfile.py": "*",
    "test_throttle.py": "*",
}

#: What a test that uses the database asks for: none of it is allowed in DATABASE_AGNOSTIC_TESTS.
DATABASE_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
    "live_server",
    "admin_client",
    "admin_user",
    "django_user_model",
    "celery_worker",
    "celery_session_worker",
    "subprocess_env",
    "make_failed_job",
}


def listed(tests: dict[str, str | set[str]], item: pytest.Item) -> bool:
    names = tests.get(item.path.name)
    return names == "*" or bool(names and getattr(item, "originalname", item.name) in names)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if listed(RABBITMQ_TESTS, item):
            item.add_marker(pytest.mark.rabbitmq)
        if listed(DATABASE_AGNOSTIC_TESTS, item):
            uses = DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
            if item.get_closest_marker("django_db") or uses:
                raise pytest.UsageError(
                    f"{item.nodeid} is in DATABASE_AGNOSTIC_TESTS (tests/conftest.py) but uses the database "
                    f"({', '.join(sorted(uses)) or 'django_db'}): take it out of the list, so that it runs on every "
                    "database"
                )
            item.add_marker(pytest.mark.database_agnostic)
    if os.environ.get("TEST_SKIP_DATABASE_AGNOSTIC") == "1":
        skipped = [item for item in items if item.get_closest_marker("database_agnostic")]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not item.get_closest_marker("database_agnostic")]


def broker_is_amqp() -> bool:
    from django.conf import settings

    return bool(settings.BROKER_IS_AMQP)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    """The tests' Redis: the broker (Redis pass), or the status Redis beside RabbitMQ (``REDIS_URL``)."""
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    return client


def purge_amqp_queues() -> None:
    """Empty the declared queues of the test vhost (a queue not declared yet holds nothing)."""
    from django.conf import settings
    from kombu import Connection

    with Connection(settings.CELERY_BROKER_URL, connect_timeout=5) as connection:
        channel: Any = connection.channel()
        for queue in settings.CELERY_TASK_QUEUES:
            try:
                channel.queue_purge(queue.name)
            except connection.channel_errors:
                channel = connection.channel()


@pytest.fixture(autouse=True)
def clean_broker(request: pytest.FixtureRequest) -> None:
    """Each test starts with an empty broker db (only tests that touch Redis pay for it), and on RabbitMQ with
    empty queues."""
    if {"redis_client", "celery_worker", "broker"} & set(request.fixturenames):
        request.getfixturevalue("redis_client").flushdb()
        if broker_is_amqp():
            purge_amqp_queues()


@pytest.fixture
def broker(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


# --- the embedded worker (celery.contrib.pytest), running the project's own app ----------------------------


@pytest.fixture(scope="session")
def celery_app() -> Celery:
    from project.celery import app

    if broker_is_amqp():
        # The embedded worker's event loop wakes at least every 10 s; on RabbitMQ nothing else wakes it as it is
        # asked to stop, so each test with a worker would end 10 s late. AMQP heartbeats every 2 s wake it each
        # second (the Redis transport's own polling does this there).
        app.conf.broker_heartbeat = 2
    # The same limits as every other process of the tests (bin/test exports them before settings are read).
    app.conf.update(
        task_soft_time_limit=int(os.environ["CELERY_TASK_SOFT_TIME_LIMIT"]),
        task_time_limit=int(os.environ["CELERY_TASK_TIME_LIMIT"]),
    )
    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "perform_ping_check": False,
        "queues": ["default", "whatsapp-send"],
        "shutdown_timeout": 20,
    }
    if broker_is_amqp():
        # On RabbitMQ the embedded solo worker with a prefetch of 1 picks up the delivery that follows an ack
        # only at its event loop's next 10 s tick (a real `celery worker -P solo -c 1` does not): a prefetch of
        # 2 keeps the immediate retries on time, as on a real worker.
        parameters["concurrency"] = 2
    return parameters


@pytest.fixture(scope="session")
def celery_includes() -> list[str]:
    return ["tests.tasks"]


# --- rows ---------------------------------------------------------------------------------------------------


@pytest.fixture
def now() -> datetime:
    return timezone.now()


@pytest.fixture
def make_failed_job(now: datetime) -> Callable[..., Any]:
    """Create a FailedJob row directly, as the recorder would have written it."""
    from queueing.models import FailedJob

    def make(**overrides: Any) -> FailedJob:
        fields: dict[str, Any] = {
            "origin_task_id": str(uuid.uuid4()),
            "task_name": "tests.tasks.succeed",
            "queue": "default",
            "args": [],
            "kwargs": {},
            "status": FailedJob.Status.FAILED,
            "exception_class": "builtins.RuntimeError",
            "exception_message": "boom",
            "attempts": 4,
            "first_failed_at": now - timedelta(minutes=10),
            "last_failed_at": now - timedelta(minutes=10),
            "next_retry_at": now - timedelta(minutes=5),
        }
        fields.update(overrides)
        return FailedJob.objects.create(**fields)

    return make


@pytest.fixture
def make_failure_group(now: datetime) -> Callable[..., Any]:
    """Create a FailureGroup row directly (closed, seen once ``now``), as the recorder would have made it."""
    from queueing.models import FailureGroup

    def make(**overrides: Any) -> FailureGroup:
        fields: dict[str, Any] = {
            "fingerprint": uuid.uuid4().hex,
            "task_name": "tests.tasks.always_fail",
            "exception_class": "builtins.RuntimeError",
            "message_pattern": "boom",
            "queue": "default",
            "first_seen_at": now,
            "last_seen_at": now,
            "state_changed_at": now,
        }
        fields.update(overrides)
        return FailureGroup.objects.create(**fields)

    return make


def database_url() -> str:
    """A DATABASE_URL naming the test database, for worker and beat processes the tests start."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{s['NAME']}"


@pytest.fixture
def subprocess_env(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """Environment for `celery`/`manage.py` subprocesses: the test database and broker, fast settings."""
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEING_") or k == "QUEUEING_VAR_DIR"}
    env.update({f"QUEUEING_{k}": str(v) for k, v in FAST.items()})
    env.update({name: os.environ[name] for name in TIME_LIMITS})
    env.update(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The broker follows REDIS_URL unless it is another (RabbitMQ): a test that changes REDIS_URL changes both.
    if settings.CELERY_BROKER_URL != settings.REDIS_URL:
        env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    else:
        env.pop("CELERY_BROKER_URL", None)
    yield env


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """On PostgreSQL, the test database commits without waiting for its WAL to reach the disk
    (``synchronous_commit = off``, for every process that connects to it, workers included): a commit makes the
    same rows visible, only a crash of the server could lose the last ones, and no test crashes this server (the
    fault scenarios stop a cluster of their own, tests/faults.py, which runs with fsync=off). A commit took 3.1 ms
    with it on and 0.25 ms off on the shared machine."""
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f'ALTER DATABASE "{connection.settings_dict["NAME"]}" SET synchronous_commit TO off')
            connection.close()
