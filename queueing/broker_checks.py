"""What the broker needs of the settings, checked at start-up (``manage.py check``, runserver, migrate, and the
worker's own start, where the same words are logged).

RabbitMQ (3.8.15 and later) closes the channel of a consumer that holds one delivery unacknowledged longer than
its ``consumer_timeout`` (default 30 minutes), and every message of that channel goes back to the queue. A
worker holds a message with a countdown from its delivery until it runs, and (late acknowledgement) until it
ends: the longest immediate-retry countdown (``BACKOFF_MAX``) plus the hard time limit must stay under it.
Redis has its ``visibility_timeout`` instead (project/settings.py), which the settings keep longer than both.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init
from django.conf import settings
from django.core import checks

from queueing.conf import get_settings

logger = logging.getLogger(__name__)


def held_message_seconds() -> float:
    """The longest a worker may hold one delivery unacknowledged: the longest immediate-retry countdown, then
    the hard time limit of the run (no limit: 0, and then nothing bounds it)."""
    hard_limit = getattr(settings, "CELERY_TASK_TIME_LIMIT", None) or 0
    return get_settings().backoff_max_seconds + float(hard_limit)


def consumer_timeout_problem() -> str | None:
    """Why the settings do not fit RabbitMQ's ``consumer_timeout``, or ``None`` (always ``None`` on Redis)."""
    if not getattr(settings, "BROKER_IS_AMQP", False):
        return None
    timeout = float(settings.RABBITMQ_CONSUMER_TIMEOUT_SECONDS)
    held = held_message_seconds()
    if not getattr(settings, "CELERY_TASK_TIME_LIMIT", None):
        return (
            f"CELERY_TASK_TIME_LIMIT is not set: a task may hold its message longer than RabbitMQ's consumer_timeout "
            f"({timeout:g} s), which then closes the worker's channel and re-queues the message"
        )
    if held >= timeout:
        return (
            f"a worker may hold a message {held:g} s (QUEUEING BACKOFF_MAX {get_settings().backoff_max_seconds:g} s "
            f"+ CELERY_TASK_TIME_LIMIT {settings.CELERY_TASK_TIME_LIMIT} s), not under RabbitMQ's consumer_timeout "
            f"({timeout:g} s, RABBITMQ_CONSUMER_TIMEOUT_SECONDS): RabbitMQ would close the worker's channel and "
            "re-queue the message"
        )
    return None


@checks.register("queueing")
def check_consumer_timeout(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: the held-message span fits RabbitMQ's ``consumer_timeout``."""
    if (problem := consumer_timeout_problem()) is None:
        return []
    return [
        checks.Warning(
            problem,
            hint="Lower QUEUEING BACKOFF_MAX or CELERY_TASK_TIME_LIMIT, or raise consumer_timeout in rabbitmq.conf "
            "and set RABBITMQ_CONSUMER_TIMEOUT_SECONDS to it (docs/brokers.md).",
            id="queueing.W101",
        )
    ]


@worker_init.connect
def warn_at_worker_start(**kwargs: Any) -> None:
    """The worker does not run Django's checks: it logs the same warning as it starts."""
    if (problem := consumer_timeout_problem()) is not None:
        logger.warning("%s (see docs/brokers.md)", problem)
