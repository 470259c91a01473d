"""The project's Celery app.

``RetryableTask`` is the default task class, so every task of the project gets immediate retries with
backoff and, when those run out, a ``FailedJob`` row (see ``queueing/models.py`` for the lifecycle).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project", task_cls="queueing.tasks:RetryableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
