"""Shared fixtures: a real Redis broker (a db of its own), the embedded Celery worker, fast retry settings."""

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
def no_refresh_left_behind() -> Iterator[None]:
    """Wait for the status refreshes a test started in the background (queueing/status/cache.py), so that they
    cannot write into the next test's Redis."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("refresh queueing:"):
            thread.join(timeout=10)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.ping()
    return client


@pytest.fixture(autouse=True)
def clean_broker(request: pytest.FixtureRequest) -> None:
    """Each test starts with an empty broker db (only tests that touch Redis pay for it)."""
    if {"redis_client", "celery_worker", "broker"} & set(request.fixturenames):
        request.getfixturevalue("redis_client").flushdb()


@pytest.fixture
def broker(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


# --- the embedded worker (celery.contrib.pytest), running the project's own app ----------------------------


@pytest.fixture(scope="session")
def celery_app() -> Celery:
    from project.celery import app

    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    return {"perform_ping_check": False, "queues": ["default", "whatsapp-send"], "shutdown_timeout": 20}


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
    env.update(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.CELERY_BROKER_URL,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    yield env
