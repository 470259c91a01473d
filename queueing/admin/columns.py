"""What the console shows: the list's columns and the detail page's read-only fields (``FailedJobColumns``).

The list's columns are the ones an operator reads first, kept compact so that they fit a laptop screen (1,400 px)
beside the filters: short task and error texts (the full ones on hover), times on two short lines. Every time is
shown to the second with its time zone, in one format (``display.format_time``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db import models
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator

from queueing import autoretry, sensitive
from queueing.admin import display
from queueing.models import FailedJob

#: The detail page's times, each shown in the one format (``display.time_text``) by a ``<field>_shown`` column.
TIMELINE = (
    "first_failed_at",
    "last_failed_at",
    "last_retried_at",
    "retry_started_at",
    "resolved_at",
    "dead_at",
    "discarded_at",
    "created_at",
    "updated_at",
)


def _shown(field_name: str) -> Callable[[Any, FailedJob], SafeString | str]:
    """A read-only column showing the time field ``field_name`` in the one format, under its own label."""

    field = FailedJob._meta.get_field(field_name)
    assert isinstance(field, models.Field)  # a time column of the row, never a relation

    @admin.display(description=field.verbose_name)
    def column(self: Any, obj: FailedJob) -> SafeString | str:
        return display.time_text(getattr(obj, field_name))

    return column


class FailedJobColumns:
    """The columns and fields of ``FailedJobAdmin`` (a mixin: it holds no state)."""

    # -- the list's columns ------------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: FailedJob) -> SafeString:
        return display.status_badge(obj.status, obj.get_status_display())

    @admin.display(description="error", ordering="exception_class")
    def error_short(self, obj: FailedJob) -> SafeString | str:
        if not obj.exception_class:
            return "-"
        full = f"{obj.exception_class}: {obj.exception_message}"
        return format_html(
            '<span title="{}"><strong>{}</strong>: {}</span>',
            Truncator(full).chars(500),
            obj.exception_class.rsplit(".", 1)[-1],
            Truncator(obj.exception_message).chars(60),
        )

    @admin.display(description="task", ordering="task_name")
    def task(self, obj: FailedJob) -> SafeString:
        return format_html('<span title="{}">{}</span>', obj.task_name, obj.task_name.rsplit(".", 1)[-1])

    @admin.display(description="auto retries", ordering="retry_count")
    def auto_retries(self, obj: FailedJob) -> int:
        return obj.retry_count

    @admin.display(description="last failed", ordering="last_failed_at")
    def last_failed(self, obj: FailedJob) -> SafeString | str:
        return display.time_cell(obj.last_failed_at, now=timezone.now())

    @admin.display(description="next retry", ordering="next_retry_at")
    def next_retry(self, obj: FailedJob) -> SafeString | str:
        return display.time_cell(obj.next_retry_at, now=timezone.now(), past="due")

    # -- the detail page ---------------------------------------------------------------------------------

    next_retry_at_shown = _shown("next_retry_at")
    lease_expires_at_shown = _shown("lease_expires_at")
    first_failed_at_shown = _shown("first_failed_at")
    last_failed_at_shown = _shown("last_failed_at")
    last_retried_at_shown = _shown("last_retried_at")
    retry_started_at_shown = _shown("retry_started_at")
    resolved_at_shown = _shown("resolved_at")
    dead_at_shown = _shown("dead_at")
    discarded_at_shown = _shown("discarded_at")
    created_at_shown = _shown("created_at")
    updated_at_shown = _shown("updated_at")

    @admin.display(description="original call")
    def origin_task(self, obj: FailedJob) -> SafeString | str:
        return display.task_link(obj.origin_task_id)

    @admin.display(description="latest call")
    def latest_task(self, obj: FailedJob) -> SafeString | str:
        latest = obj.clone_task_id()
        if latest == obj.origin_task_id and (obj.retry_count or obj.manual_retry_count):
            # A retry is the same Celery call: it keeps the task id (docs/workflows.md).
            return format_html(
                "{} (a retry keeps the original id; Flower shows its latest run)", display.task_link(latest)
            )
        if not latest or latest == obj.origin_task_id:
            return "the original call (not retried yet)"
        return display.task_link(latest)

    @admin.display(description="traceback")
    def traceback_text(self, obj: FailedJob) -> SafeString | str:
        return format_html('<pre class="queueing-pre">{}</pre>', obj.traceback) if obj.traceback else "-"

    @admin.display(description="args")
    def args_json(self, obj: FailedJob) -> SafeString:
        return display.pretty_json(sensitive.shown(obj.args))  # encrypted values masked

    @admin.display(description="kwargs")
    def kwargs_json(self, obj: FailedJob) -> SafeString:
        return display.pretty_json(sensitive.shown(obj.kwargs))  # encrypted values masked

    @admin.display(description="routing options")
    def options_json(self, obj: FailedJob) -> SafeString:
        return display.pretty_json(sensitive.shown(obj.options))  # encrypted values masked

    @admin.display(description="retries")
    def retries(self, obj: FailedJob) -> SafeString:
        max_retries = autoretry.current_policy().max_retries
        return format_html(
            "{} of {} automatic retries used; {} manual {}.<br>"
            '<span class="help">Manual retries (admin, API, <code>retry_all_failed</code>) do not count against the '
            "automatic limit.</span>",
            obj.retry_count,
            max_retries,
            obj.manual_retry_count,
            "retry" if obj.manual_retry_count == 1 else "retries",
        )

    @admin.display(description="history")
    def history_table(self, obj: FailedJob) -> SafeString | str:
        if not obj.history:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((display.event_time(e.get("at", "")), e.get("event", ""), self._event_details(e)) for e in obj.history),
        )
        return format_html(
            '<table class="queueing-history"><thead><tr><th>when</th><th>event</th><th>details</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            rows,
        )

    @staticmethod
    def _event_details(event: dict[str, Any]) -> SafeString:
        items = [(k, v) for k, v in event.items() if k not in ("event", "at")]
        return format_html_join(
            mark_safe("<br>"),
            "{}: {}",
            ((key, display.task_link(str(value)) if key == "task_id" else value) for key, value in items),
        )
