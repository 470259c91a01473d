"""Tasks the tests run. Side effects go to Redis (``REDIS_URL``: the broker's, or beside RabbitMQ the status
Redis), so that the test can see them from any process."""

from __future__ import annotations

import time

import redis
from celery import shared_task
from django.conf import settings

from queueing.exceptions import PermanentError, TransientError


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


class Boom(RuntimeError):
    pass


@shared_task(name="tests.tasks.fail_times")
def fail_times(key: str, times: int) -> str:
    """Fail the first ``times`` executions for ``key``, then succeed. Logs each run's time under ``key``."""
    client = _redis()
    runs = client.incr(f"runs:{key}")
    client.rpush(f"times:{key}", repr(time.time()))
    if runs <= times:
        raise Boom(f"run {runs} of {key} fails on purpose")
    client.rpush(f"done:{key}", runs)
    return "ok"


@shared_task(name="tests.tasks.always_fail")
def always_fail(key: str, *, reason: str = "gateway down") -> None:
    _redis().incr(f"runs:{key}")
    raise Boom(reason)


@shared_task(name="tests.tasks.fail_permanently")
def fail_permanently(key: str) -> None:
    _redis().incr(f"runs:{key}")
    raise PermanentError("recipient does not exist")


@shared_task(name="tests.tasks.succeed")
def succeed(key: str = "x") -> str:
    _redis().incr(f"runs:{key}")
    return "ok"


@shared_task(name="tests.tasks.kill_own_worker")
def kill_own_worker(key: str) -> None:
    """Die the way an OOM-killed worker process dies: no exception, no ``on_failure`` in this process."""
    import os
    import signal

    _redis().incr(f"runs:{key}")
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.tasks.defer_times")
def defer_times(key: str, times: int, retry_after_seconds: float) -> str:
    """Ask to be called later (``TransientError(retry_after=…)``) the first ``times`` runs; logs each run's time."""
    client = _redis()
    runs = client.incr(f"runs:{key}")
    client.rpush(f"times:{key}", repr(time.time()))
    if runs <= times:
        raise TransientError(f"run {runs} of {key}: busy, call again later", retry_after=retry_after_seconds)
    client.rpush(f"done:{key}", runs)
    return "ok"


@shared_task(name="tests.tasks.use_secrets", sensitive_args=(1,))
def use_secrets(
    key: str, pin: str, fail_runs: int, *, token: str, headers: dict[str, str] | None = None, echo: bool = False
) -> str:
    """Note a hash of the secrets this run was given (``pin``: position 1; ``token`` and ``headers.Authorization``
    by name), then fail the first ``fail_runs`` runs for ``key`` (with a message that holds no secret, unless
    ``echo``: then the token)."""
    import hashlib

    client = _redis()
    seen = "|".join([pin, token, (headers or {}).get("Authorization", "")])
    client.rpush(f"seen:{key}", hashlib.sha256(seen.encode()).hexdigest())
    if client.incr(f"runs:{key}") <= fail_runs:
        raise Boom(f"gateway refused {key}" + (f" with token {token}" if echo else ""))
    return "ok"
