"""The Django project: settings, URLs and the Celery app (loaded with Django so that tasks bind to it)."""

from __future__ import annotations

from .celery import app as celery_app

__all__ = ("celery_app",)
