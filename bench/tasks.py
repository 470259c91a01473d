"""Tasks for the benchmarks: the same body as a plain Celery task and as a RetryableTask."""

from __future__ import annotations

import redis
from celery import Task, shared_task
from django.conf import settings

from queueing.tasks import RetryableTask

_client: redis.Redis | None = None


def _done(key: str) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    _client.incr(key)


@shared_task(name="bench.plain_ok", base=Task)
def plain_ok(key: str) -> None:
    _done(key)


@shared_task(name="bench.retryable_ok", base=RetryableTask)
def retryable_ok(key: str) -> None:
    _done(key)


@shared_task(name="bench.plain_fail", base=Task)
def plain_fail(key: str) -> None:
    _done(key)
    raise RuntimeError("fails on purpose")


@shared_task(name="bench.retryable_fail", base=RetryableTask, immediate_retries=0)
def retryable_fail(key: str) -> None:
    _done(key)
    raise RuntimeError("fails on purpose")


@shared_task(
    name="bench.plain_fail_autoretry",
    base=Task,
    autoretry_for=(RuntimeError,),
    max_retries=3,
    default_retry_delay=0,
    retry_backoff=False,
)
def plain_fail_autoretry(key: str) -> None:
    """Plain Celery as users write it: 3 immediate retries (no delay, to time the machinery), then it fails."""
    _done(key)
    raise RuntimeError("fails on purpose")


@shared_task(name="bench.retryable_fail_3", base=RetryableTask, immediate_retries=3)
def retryable_fail_3(key: str) -> None:
    """The same with RetryableTask: 3 immediate retries (backoff 0 s in the bench), then its FailedJob row."""
    _done(key)
    raise RuntimeError("fails on purpose")


@shared_task(name="bench.noop", base=RetryableTask)
def noop(*args: object, **kwargs: object) -> None:
    """What bulk retries and sweeps re-send in the bench (never run: the bench only counts messages)."""
