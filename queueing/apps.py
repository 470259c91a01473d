from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class QueueingConfig(AppConfig):
    name = "queueing"
    verbose_name = "Queueing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from queueing import (  # noqa: F401  (connect the worker/beat signal handlers and the checks)
            broker_checks,
            checks,
            conf,
            coverage,
            permissions,
            schedule,
            signals,
        )

        conf.get_settings()  # fail at start-up, not at the first failure, on a bad setting
        post_migrate.connect(schedule.ensure_sweep_schedule_after_migrate, sender=self)
        post_migrate.connect(permissions.ensure_groups, sender=self)
