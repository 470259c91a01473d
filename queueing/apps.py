from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class QueueingConfig(AppConfig):
    name = "queueing"
    verbose_name = "Queueing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # ``tasks`` too, here in the thread that sets Django up: it holds the Celery app's task class
        # (CELERY task_cls), which finalizing the app imports while it holds the app's finalize lock, and its
        # @shared_task takes that lock while its import holds the module's import lock. Two threads doing one
        # each deadlocked runserver's autoreloading child: its checks finalized the app while its reloader
        # imported the URLconf (project.api -> messaging.tasks -> queueing.tasks). Imported before any thread
        # starts, the module is never imported under the finalize lock.
        from queueing import (  # noqa: F401  (connect the worker/beat signal handlers and the checks)
            broker_checks,
            checks,
            conf,
            coverage,
            permissions,
            schedule,
            signals,
            tasks,
        )

        conf.get_settings()  # fail at start-up, not at the first failure, on a bad setting
        post_migrate.connect(schedule.ensure_sweep_schedule_after_migrate, sender=self)
        post_migrate.connect(permissions.ensure_groups, sender=self)
