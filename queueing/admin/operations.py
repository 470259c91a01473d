"""Background bulk retries in the admin (``queueing/bulkops.py``): read-only, their progress and report; and what
the failed-jobs console's retry needs of them: its dry run per failure group, and starting one."""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from queueing import bulkops, bulkplan, operations
from queueing.conf import get_settings
from queueing.models import BulkOperation, FailedJob


@admin.register(BulkOperation)
class BulkOperationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "progress", "selection_text", "requested_by", "created_at", "finished_at")
    list_filter = ("state", "kind")
    fields = (
        "kind",
        "state",
        "progress",
        "selection_text",
        "rate_per_second",
        "requested_by",
        "report_text",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="sent")
    def progress(self, operation: BulkOperation) -> str:
        share = f" ({100 * operation.sent // operation.total}%)" if operation.total else ""
        return f"{operation.sent} of {operation.total}{share}"

    @admin.display(description="selection")
    def selection_text(self, operation: BulkOperation) -> str:
        return json.dumps(bulkops.shown_selection(operation.selection))

    @admin.display(description="report: what was sent, what was not and why")
    def report_text(self, operation: BulkOperation) -> str:
        if not operation.report:
            return "-" if operation.state != BulkOperation.State.DONE else "no report"
        report = operation.report
        lines = [f"found {report.get('total', 0)}, sent {report.get('retried', 0)}"]
        for reason, n in (report.get("notSent") or {}).items():
            if n:
                lines.append(f"{n} not sent: {bulkplan.REASON_TEXT.get(reason, reason)}")
        return "; ".join(lines)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BulkOperation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BulkOperation | None = None) -> bool:
        return False


def dry_run(queryset: QuerySet[FailedJob]) -> tuple[bulkplan.GroupPlan, ...]:
    """What a retry of the selection would send, per failure group, and what not and why (nothing sent)."""
    now = timezone.now()
    candidates = operations.Selection(where=queryset).candidates(now)
    return bulkplan.plan(candidates, now=now, batch_size=get_settings().batch_size)


def start_in_background(
    ids: Sequence[int], *, actor: str, filter_text: str, rate_per_second: float | None = None
) -> SafeString:
    """Queue a background retry of these jobs (``bulkops``), at most ``rate_per_second``; the message, linking
    to its progress."""
    spec = {"ids": list(ids), "adminFilter": filter_text or None}
    operation = bulkops.start_retry(spec, total=len(ids), requested_by=actor, rate_per_second=rate_per_second)
    url = reverse("admin:queueing_bulkoperation_change", args=[operation.pk])
    jobs = ngettext("%(n)d job is", "%(n)d jobs are", len(ids)) % {"n": len(ids)}
    return format_html(
        "{} being retried in the background (more than {} at once): "
        '<a href="{}">bulk operation #{}</a> shows its progress, then what was not sent and why',
        jobs,
        bulkops.SYNC_MAX_JOBS,
        url,
        operation.pk,
    )


BACKGROUND = (
    "More than %(max)d jobs: they will be sent in the background by a worker, batch after batch; the message "
    "will link to the operation's progress, and its report will say what was not sent and why."
)


def rate_of(request: HttpRequest) -> float | None:
    """The throttle the confirmation asked for (``rate_per_second``, jobs a second), or ``None`` (none, or not a
    positive number)."""
    try:
        rate = float(request.POST.get("rate_per_second") or 0)
    except ValueError:
        return None
    return rate if 0 < rate < float("inf") else None
