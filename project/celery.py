"""The project's Celery app.

``RetryableTask`` is the default task class, so every task of the project gets immediate retries with
backoff and, when those run out, a ``FailedJob`` row (see ``queueing/models/__init__.py`` for the lifecycle).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, celeryd_init, task_prerun

from project import logconfig

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project", task_cls="queueing.tasks:RetryableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# From here on, Django's logging set-up leaves this process's root logger to Celery (project/logconfig.py).
after_setup_logger.connect(logconfig.celery_set_up_logging, weak=False)


@celeryd_init.connect(weak=False)
def keep_database_connections(**_: Any) -> None:
    """A worker started by ``celery worker`` (before it forks its pool; not a test's embedded worker) keeps its
    database connections between tasks for ``WORKER_CONN_MAX_AGE`` seconds (``project/settings.py``), checked
    before each task, and reuses the retry policy it read for ``WORKER_POLICY_MAX_AGE_SECONDS``."""
    from django.conf import settings
    from django.db import connections

    from queueing import autoretry

    autoretry.policy_max_age_seconds = settings.WORKER_POLICY_MAX_AGE_SECONDS
    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = settings.WORKER_CONN_MAX_AGE
    task_prerun.connect(drop_unusable_connections, weak=False)


def drop_unusable_connections(**_: Any) -> None:
    """Before each task, as Django does before each request: close a connection that is broken or past its
    lifetime, and health-check the others on their next use (``CONN_HEALTH_CHECKS``)."""
    from django.db import close_old_connections

    close_old_connections()
