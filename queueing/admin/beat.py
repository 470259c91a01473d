"""The sweep's schedule, in django-celery-beat's own admin.

The sweep is django-celery-beat's ``PeriodicTask`` named ``SWEEP_TASK_NAME``. Its admins (the periodic task's and
the interval's) are replaced here by subclasses that, when the sweep's interval is saved, record it with
``queueing.schedule.set_sweep_interval`` (the one writer of the check interval), so that the next migrate or Beat
start keeps the operator's interval instead of putting back the one from settings.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import django_celery_beat.admin  # noqa: F401  (registers its admins first, so that we can replace two of them)
from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django_celery_beat.admin import IntervalScheduleAdmin, PeriodicTaskAdmin, PeriodicTaskForm
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from queueing import autoretry
from queueing.admin import display
from queueing.schedule import SWEEP_TASK, SWEEP_TASK_NAME, interval_seconds, set_sweep_interval

logger = logging.getLogger(__name__)


def record_sweep_interval(request: HttpRequest, task: PeriodicTask, *, admin_view: admin.ModelAdmin) -> None:
    """Make the sweep's interval the running system's check interval, so that restarts keep it."""
    if task.interval is None:
        schedule = task.crontab or task.solar or task.clocked or "no schedule"
        current = autoretry.current_policy().check_interval_seconds
        admin_view.message_user(
            request,
            f"The sweep now runs on {schedule}. Only an interval can be recorded as the automatic-retry check "
            f"interval, so that stays at {current} s, and the next migrate or Beat start puts the sweep back on an "
            f"interval of {current} s. Give the sweep an interval to change how often it runs for good.",
            messages.WARNING,
        )
        return
    exact = interval_seconds(task.interval)
    seconds = max(1, math.ceil(exact))
    set_sweep_interval(seconds)
    logger.info("admin: %s set the sweep's interval to %ss", request.user.get_username(), seconds)
    rounded = "" if seconds == exact else f" (rounded up from {exact:g} s: the check interval is whole seconds)"
    admin_view.message_user(
        request,
        f"The sweep runs every {seconds} s{rounded}. This is now the automatic-retry check interval, so migrations "
        "and Beat restarts keep it; a running Beat picks the change up within a few seconds, without a restart.",
        messages.SUCCESS,
    )


class SweepAwarePeriodicTaskForm(PeriodicTaskForm):
    """django-celery-beat's form, refusing to rename the sweep or change its task (the system finds it by name)."""

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean()
        if self.instance.pk and self.instance.name == SWEEP_TASK_NAME:
            if data.get("name") != SWEEP_TASK_NAME:
                self.add_error(
                    "name",
                    f"The retry sweep must keep the name {SWEEP_TASK_NAME!r}: the system finds its schedule by "
                    "this name and would otherwise create a second sweep at the next Beat start.",
                )
            if data.get("task") != SWEEP_TASK:
                self.add_error("task", f"The retry sweep must run {SWEEP_TASK!r}.")
        return data


def _shown_name(name: str, *, times: tuple[str, ...] = ("start_time", "last_run_at")) -> str:
    """The column that shows the time ``name`` of a periodic task in the admin's one format, or ``name`` itself."""
    return f"{name}_shown" if name in times else name


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class SweepAwarePeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's admin; saving the sweep records its interval as the automatic-retry check interval."""

    form = SweepAwarePeriodicTaskForm
    # Times in the admin's one format (``display.format_time``), not Django's "Dec. 1, 2026, 8 p.m.".
    list_display = tuple(_shown_name(name) for name in PeriodicTaskAdmin.list_display)
    readonly_fields = tuple(_shown_name(name) for name in PeriodicTaskAdmin.readonly_fields)
    fieldsets = tuple(
        # Only the read-only time: the start time stays an input.
        (title, {**options, "fields": tuple(_shown_name(name, times=("last_run_at",)) for name in options["fields"])})
        for title, options in PeriodicTaskAdmin.fieldsets
    )

    @admin.display(description="start time", ordering="start_time")
    def start_time_shown(self, obj: PeriodicTask) -> SafeString | str:
        return display.time_text(obj.start_time)

    @admin.display(description="last run at", ordering="last_run_at")
    def last_run_at_shown(self, obj: PeriodicTask) -> SafeString | str:
        return display.time_text(obj.last_run_at)

    def get_form(self, request: HttpRequest, obj: PeriodicTask | None = None, **kwargs: Any) -> type[forms.ModelForm]:
        form: type[forms.ModelForm] = super().get_form(request, obj, **kwargs)
        if obj is not None and obj.name == SWEEP_TASK_NAME and "interval" in form.base_fields:
            form.base_fields["interval"].help_text = (
                "How often the retry sweep runs. Saving records it as the automatic-retry check interval "
                "(it survives migrations and Beat restarts; a running Beat picks it up without a restart)."
            )
        return form

    def save_model(self, request: HttpRequest, obj: PeriodicTask, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.name == SWEEP_TASK_NAME:
            record_sweep_interval(request, obj, admin_view=self)


admin.site.unregister(IntervalSchedule)


@admin.register(IntervalSchedule)
class SweepAwareIntervalScheduleAdmin(IntervalScheduleAdmin):
    """django-celery-beat's admin; editing the interval the sweep uses records it like editing the sweep does."""

    def save_model(self, request: HttpRequest, obj: IntervalSchedule, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        sweep = PeriodicTask.objects.filter(name=SWEEP_TASK_NAME, interval=obj).select_related("interval").first()
        if sweep is not None:
            record_sweep_interval(request, sweep, admin_view=self)
