from __future__ import annotations

from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "messaging"
    verbose_name = "WhatsApp messaging (example workload)"
    default_auto_field = "django.db.models.BigAutoField"
