"""Failures grouped by cause (``FailureGroupAdmin``) and the paused queues (``QueuePauseAdmin``).

The grouped view: one row per cause (task, exception class, normalised message) with its circuit breaker's
state (closed, open until …, probing until …), its jobs still failing and the share of them, first and last
seen; a link to its jobs in the failed-jobs list. Verbs on the selected groups: retry now, discard, pause and
resume their automatic retries, each through ``queueing.operations`` / ``queueing.pauses`` as the API and the
commands do. A paused queue is a row of ``QueuePause``: add one to pause, delete it to resume.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import ngettext

from queueing import breaker, operations, pauses, permissions
from queueing.admin import display, verbs
from queueing.exceptions import UnknownQueue
from queueing.models import FailedJob, FailureGroup, QueuePause
from queueing.registry import validate_queue
from queueing.status.groups import STILL_FAILING


class OperateMixin:
    """Each verb needs its own permission, as in the failed-jobs console (``queueing/permissions.py``)."""

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"queueing.{permissions.RETRY}")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"queueing.{permissions.DISCARD}")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Pause and resume (a group, or a queue: adding or deleting its pause)."""
        return request.user.has_perm(f"queueing.{permissions.PAUSE}")


#: The failed-jobs console's retry, run from the groups' list on the selected groups' jobs.
GROUP_RETRY = replace(verbs.RETRY, action="retry_groups", title="Retry the selected groups' jobs now")


@admin.register(FailureGroup)
class FailureGroupAdmin(OperateMixin, admin.ModelAdmin):
    list_display = ("id", "cause", "breaker_state", "still_failing", "share", "failure_count", "seen", "paused")
    list_display_links = ("id", "cause")
    list_filter = ("state", ("paused_at", admin.EmptyFieldListFilter), "queue")
    search_fields = ("task_name", "exception_class", "message_pattern", "=fingerprint")
    ordering = ("-last_seen_at", "-id")
    list_per_page = 50
    actions = ("retry_groups", "discard_groups", "pause_groups", "resume_groups")
    fields = (
        "task_name",
        "exception_class",
        "message_pattern",
        "queue",
        "breaker_state",
        "jobs_by_status",
        "failure_count",
        "probes",
        "seen",
        "paused",
        "fingerprint",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FailureGroup | None = None) -> bool:
        return False  # a group is what the failures made it; act on it with the verbs

    def has_delete_permission(self, request: HttpRequest, obj: FailureGroup | None = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: FailureGroup | None = None) -> tuple[str, ...]:
        return self.fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[FailureGroup]:
        groups: QuerySet[FailureGroup] = super().get_queryset(request)
        return groups.annotate(
            failing=Count("jobs", filter=Q(jobs__status__in=STILL_FAILING)),
            job_total=Count("jobs"),
        )

    # -- columns ----------------------------------------------------------------------------------------

    @admin.display(description="cause", ordering="task_name")
    def cause(self, group: FailureGroup) -> str:
        return f"{group.task_name} · {group.exception_class.rsplit('.', 1)[-1]}: {group.message_pattern[:120]}"

    @admin.display(description="breaker", ordering="state")
    def breaker_state(self, group: FailureGroup) -> str:
        text = breaker.describe(group.as_breaker())
        if group.open_until is not None and group.state != FailureGroup.State.CLOSED:
            text = f"{group.state} until {display.format_time(group.open_until)}"
        return f"{text}; {group.level} failed probe(s)" if group.level else text

    @admin.display(description="still failing", ordering="failing")
    def still_failing(self, group: FailureGroup) -> str:
        url = reverse("admin:queueing_failedjob_changelist") + f"?group__id__exact={group.pk}"
        failing = getattr(group, "failing", 0)
        return format_html('<a href="{}">{} of {}</a>', url, failing, getattr(group, "job_total", 0))

    @admin.display(description="share failing")
    def share(self, group: FailureGroup) -> str:
        total = getattr(group, "job_total", 0)
        return f"{getattr(group, 'failing', 0) / total:.0%}" if total else "—"

    @admin.display(description="first / last seen", ordering="last_seen_at")
    def seen(self, group: FailureGroup) -> str:
        return f"{display.format_time(group.first_seen_at)} / {display.format_time(group.last_seen_at)}"

    @admin.display(description="auto-retry", ordering="paused_at")
    def paused(self, group: FailureGroup) -> str:
        return f"paused since {display.format_time(group.paused_at)}" if group.paused_at else "on"

    @admin.display(description="jobs")
    def jobs_by_status(self, group: FailureGroup) -> str:
        counts = dict(group.jobs.order_by().values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        return ", ".join(f"{status} {counts.get(status, 0)}" for status in FailedJob.Status.values)

    # -- verbs ------------------------------------------------------------------------------------------

    @admin.action(description=GROUP_RETRY.title, permissions=["retry"])
    def retry_groups(self, request: HttpRequest, queryset: QuerySet[FailureGroup]) -> HttpResponse | None:
        """The groups' failed and dead jobs, as the failed-jobs console's retry does them (``verbs.RETRY``):
        confirmed first with the dry run per group, above 1,000 jobs a background operation."""
        jobs = FailedJob.objects.filter(group__in=queryset.values("pk"))
        if request.POST.get("post") != "yes":
            preview = verbs.preview(GROUP_RETRY, jobs)
            if preview["eligible"]:
                context = {
                    **self.admin_site.each_context(request),
                    "title": f"{GROUP_RETRY.title}?",
                    "opts": self.opts,
                    "verb": GROUP_RETRY,
                    "scope": ngettext("The %(n)d selected group.", "The %(n)d selected groups.", queryset.count())
                    % {"n": queryset.count()},
                    "preview": preview,
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                    "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                    "select_across": request.POST.get("select_across", "0"),
                }
                request.current_app = self.admin_site.name
                return TemplateResponse(request, "admin/queueing/failedjob/action_confirmation.html", context)
        outcome = verbs.perform(GROUP_RETRY, jobs, request=request)
        self.message_user(request, outcome.message, outcome.level)
        return None

    @admin.action(description="Discard the selected groups' failed and dead jobs", permissions=["discard"])
    def discard_groups(self, request: HttpRequest, queryset: QuerySet[FailureGroup]) -> None:
        discarded = sum(len(operations.discard_group(group=pk)) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, ngettext("Discarded %d job.", "Discarded %d jobs.", discarded) % discarded)

    @admin.action(description="Pause the selected groups' automatic retries", permissions=["operate"])
    def pause_groups(self, request: HttpRequest, queryset: QuerySet[FailureGroup]) -> None:
        reason = f"paused in the admin by {request.user.get_username()}"
        changed = sum(pauses.pause(group=pk, reason=reason) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Paused the automatic retries of {changed} group(s).")

    @admin.action(description="Resume the selected groups' automatic retries", permissions=["operate"])
    def resume_groups(self, request: HttpRequest, queryset: QuerySet[FailureGroup]) -> None:
        changed = sum(pauses.resume(group=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Resumed the automatic retries of {changed} group(s).")


class QueuePauseForm(forms.ModelForm):
    class Meta:
        model = QueuePause
        fields = ("queue", "reason")

    def clean_queue(self) -> str:
        queue: str = self.cleaned_data["queue"]
        try:
            validate_queue(queue)
        except UnknownQueue as exc:
            raise forms.ValidationError(str(exc)) from exc
        return queue


@admin.register(QueuePause)
class QueuePauseAdmin(OperateMixin, admin.ModelAdmin):
    """Add a row to pause a queue's automatic retries, delete it to resume them (``queueing.pauses``)."""

    form = QueuePauseForm
    list_display = ("queue", "since", "reason")
    ordering = ("queue",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: QueuePause | None = None) -> bool:
        return self.has_operate_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: QueuePause | None = None) -> bool:
        return False

    @admin.display(description="paused since", ordering="paused_at")
    def since(self, pause: QueuePause) -> str:
        return display.format_time(pause.paused_at)

    def save_model(self, request: HttpRequest, obj: QueuePause, form: Any, change: bool) -> None:
        reason = obj.reason or f"paused in the admin by {request.user.get_username()}"
        pauses.pause(queue=obj.queue, reason=reason)
        saved = QueuePause.objects.get(queue=obj.queue)
        obj.pk, obj.paused_at, obj.reason = saved.pk, saved.paused_at, saved.reason

    def delete_model(self, request: HttpRequest, obj: QueuePause) -> None:
        pauses.resume(queue=obj.queue)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[QueuePause]) -> None:
        for queue in queryset.values_list("queue", flat=True):
            pauses.resume(queue=queue)
