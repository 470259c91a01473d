"""The project's Celery app.

``RetryableTask`` is the default task class, so every task of the project gets immediate retries with
backoff and, when those run out, a ``FailedJob`` row (see ``queueing/models.py`` for the lifecycle).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import after_setup_logger

from project import logconfig

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project", task_cls="queueing.tasks:RetryableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# From here on, Django's logging set-up leaves this process's root logger to Celery (project/logconfig.py).
after_setup_logger.connect(logconfig.celery_set_up_logging, weak=False)
