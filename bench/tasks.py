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
