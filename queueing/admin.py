"""The Django admin for failed jobs: an operator's console, not an editor.

Operators look at failed jobs (list, filters, search, a detail page with the call, the traceback and the history),
and act on them with three verbs: retry now, discard, mark dead. Every verb goes through ``queueing.operations``,
exactly as the JSON API and the ``retry_all_failed`` command do, and acts on the rows selected, or on all the rows
matching the current filter ("Select all"). Nothing else is editable and nothing can be added or deleted here.

Manual retries do not count against the automatic limit (``operations.retry_now`` counts ``manual_retry_count``):
the action's confirmation, its message and the detail page all say so.

The sweep's schedule is django-celery-beat's own ``PeriodicTask`` (``queueing.schedule.SWEEP_TASK_NAME``), edited
in django-celery-beat's admin. Its admin is replaced here by a subclass that records the sweep's interval as the
running system's check interval (``AutoRetryConfig.check_interval_seconds``), so that ``ensure_sweep_schedule()``
at the next migrate or Beat start keeps the operator's interval instead of putting back the one from settings.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import django_celery_beat.admin  # noqa: F401  (registers its admins first, so that we can replace two of them)
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator, capfirst
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import ngettext
from django_celery_beat.admin import IntervalScheduleAdmin, PeriodicTaskAdmin, PeriodicTaskForm
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from queueing import autoretry, operations, registry
from queueing.models import AutoRetryConfig, FailedJob
from queueing.schedule import SWEEP_TASK, SWEEP_TASK_NAME

logger = logging.getLogger(__name__)

Status = FailedJob.Status

#: Most jobs one run of an admin action acts on; the message says how many are left for the next run. A retry
#: publishes each job (about 5 ms a job with Redis): 1,000 keep the request to a few seconds.
ACTION_MAX_JOBS = 1_000

#: Most distinct (queue, task, error class) combinations read for the sidebar filters on one page.
FILTER_MAX_COMBINATIONS = 5_000

#: Columns the list never shows: left out of its query so that a page of 50 rows stays small.
LIST_DEFERRED_FIELDS = ("traceback", "history", "args", "kwargs", "options", "status_reason")

STATUS_COLOURS = {
    Status.FAILED: "#b45309",
    Status.RETRYING: "#1d4ed8",
    Status.RESOLVED: "#15803d",
    Status.DEAD: "#b91c1c",
    Status.DISCARDED: "#6b7280",
}


# --- small helpers ------------------------------------------------------------------------------------------


def flower_task_url(task_id: str) -> str | None:
    """The task's page in Flower (``FLOWER_URL/task/<id>``), or None without a Flower URL or a task id."""
    base = (getattr(settings, "FLOWER_URL", "") or "").rstrip("/")
    return f"{base}/task/{task_id}" if base and task_id else None


def _task_link(task_id: str) -> SafeString | str:
    if not task_id:
        return "-"
    url = flower_task_url(task_id)
    if url is None:
        return format_html("<code>{}</code>", task_id)
    return format_html('<code>{}</code> <a href="{}" target="_blank" rel="noopener">open in Flower</a>', task_id, url)


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="queueing-pre">{}</pre>', text)


def _interval_seconds(interval: IntervalSchedule) -> float:
    return timedelta(**{interval.period: interval.every}).total_seconds()


def _permission(request: HttpRequest, action: str) -> bool:
    opts = FailedJob._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


# --- the three verbs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Verb:
    """One operator verb: which states it acts on, how the admin names it."""

    key: str
    action: str
    title: str
    eligible: tuple[str, ...]
    confirm_label: str


RETRY = Verb(
    key="retry",
    action="retry_selected",
    title="Retry selected now",
    eligible=(Status.FAILED, Status.DEAD),
    confirm_label="Yes, retry them now",
)
DISCARD = Verb(
    key="discard",
    action="discard_selected",
    title="Discard selected",
    eligible=(Status.FAILED, Status.DEAD),
    confirm_label="Yes, discard them",
)
MARK_DEAD = Verb(
    key="mark_dead",
    action="mark_dead_selected",
    title="Mark selected dead",
    eligible=(Status.FAILED,),
    confirm_label="Yes, mark them dead",
)
VERBS = {verb.key: verb for verb in (RETRY, DISCARD, MARK_DEAD)}


def _status_counts(queryset: QuerySet[FailedJob]) -> dict[str, int]:
    """``{status: rows}`` of the selection, in one query."""
    rows = queryset.order_by().values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def _skipped_phrase(status: str, n: int) -> str:
    match status:
        case Status.RETRYING:
            text = ngettext(
                "%(n)d skipped because it is being retried", "%(n)d skipped because they are being retried", n
            )
        case Status.RESOLVED:
            text = ngettext("%(n)d skipped because it is resolved", "%(n)d skipped because they are resolved", n)
        case Status.DISCARDED:
            text = ngettext("%(n)d skipped because it is discarded", "%(n)d skipped because they are discarded", n)
        case Status.DEAD:
            text = ngettext(
                "%(n)d skipped because it is already dead", "%(n)d skipped because they are already dead", n
            )
        case _:
            text = ngettext("%(n)d skipped because it is failed", "%(n)d skipped because they are failed", n)
    return text % {"n": n}


def _skipped_phrases(verb: Verb, counts: dict[str, int]) -> list[str]:
    """One phrase per state the verb skips, in lifecycle order."""
    return [_skipped_phrase(s, counts[s]) for s in Status.values if s not in verb.eligible and counts.get(s)]


def _done_phrase(verb: Verb, n: int, *, future: bool = False) -> str:
    if verb is RETRY:
        text = (
            ngettext("%(n)d job will be sent again now", "%(n)d jobs will be sent again now", n)
            if future
            else ngettext("%(n)d job sent again", "%(n)d jobs sent again", n)
        )
    elif verb is DISCARD:
        text = (
            ngettext("%(n)d job will be discarded", "%(n)d jobs will be discarded", n)
            if future
            else ngettext("%(n)d job discarded", "%(n)d jobs discarded", n)
        )
    else:
        text = (
            ngettext("%(n)d job will be marked dead", "%(n)d jobs will be marked dead", n)
            if future
            else ngettext("%(n)d job marked dead", "%(n)d jobs marked dead", n)
        )
    return text % {"n": n}


def _left_phrase(n: int) -> str:
    return ngettext(
        "%(n)d left for another run of the action (one run handles at most %(max)d jobs)",
        "%(n)d left for another run of the action (one run handles at most %(max)d jobs)",
        n,
    ) % {"n": n, "max": ACTION_MAX_JOBS}


def _note(verb: Verb) -> str:
    """What the verb means for the job's future, as the confirmation and the message say it."""
    if verb is RETRY:
        max_retries = autoretry.current_policy().max_retries
        return (
            ngettext(
                "Manual retries do not count against the automatic limit: the sweep still makes up to %(n)d "
                "automatic retry of each failed job, whatever the manual retries.",
                "Manual retries do not count against the automatic limit: the sweep still makes up to %(n)d "
                "automatic retries of each failed job, whatever the manual retries.",
                max_retries,
            )
            % {"n": max_retries}
            + " A dead job that fails again after a manual retry goes back to dead."
        )
    if verb is DISCARD:
        return "Discarding is final: a discarded job is never retried again, automatically or by hand."
    return "Dead jobs are not retried automatically; they can still be retried by hand."


@dataclass(frozen=True, kw_only=True)
class Outcome:
    message: str
    level: int


def _preview(verb: Verb, queryset: QuerySet[FailedJob]) -> dict[str, Any]:
    """What the verb would do to the selection: for the confirmation page."""
    counts = _status_counts(queryset)
    eligible = sum(counts.get(status, 0) for status in verb.eligible)
    skipped = _skipped_phrases(verb, counts)
    return {
        "selected": sum(counts.values()),
        "eligible": eligible,
        "will_do": _done_phrase(verb, min(eligible, ACTION_MAX_JOBS), future=True),
        "skipped": skipped,
        "left": _left_phrase(eligible - ACTION_MAX_JOBS) if eligible > ACTION_MAX_JOBS else "",
        "note": _note(verb),
    }


def _retry(ids: list[int], *, now: datetime) -> tuple[int, list[str]]:
    """``operations.retry_now`` on exactly these ids. Returns (sent, phrases for those not sent)."""
    outcome = operations.retry_now(ids=ids, now=now)
    sent, unknown, unsendable = outcome.retried, outcome.unknown, outcome.unsendable
    left = len(ids) - sent - unknown - unsendable
    phrases = []
    if unknown:
        phrases.append(
            ngettext(
                "%(n)d not sent because its task is not registered in this project",
                "%(n)d not sent because their task is not registered in this project",
                unknown,
            )
            % {"n": unknown}
        )
    if unsendable:
        phrases.append(
            ngettext(
                "%(n)d not sent because the stored call no longer fits its task (it is dead now: see its status "
                "reason)",
                "%(n)d not sent because their stored calls no longer fit their task (they are dead now: see their "
                "status reason)",
                unsendable,
            )
            % {"n": unsendable}
        )
    if left > 0:
        phrases.append(
            ngettext(
                "%(n)d not sent and left as it was (the broker refused a message, the run stopped early, or it "
                "changed state meanwhile): run the action again",
                "%(n)d not sent and left as they were (the broker refused a message, the run stopped early, or they "
                "changed state meanwhile): run the action again",
                left,
            )
            % {"n": left}
        )
    return sent, phrases


def perform(verb: Verb, queryset: QuerySet[FailedJob], *, request: HttpRequest) -> Outcome:
    """Apply ``verb`` to the selection through ``queueing.operations``; the message says what happened to each."""
    counts = _status_counts(queryset)
    eligible = sum(counts.get(status, 0) for status in verb.eligible)
    ids = list(queryset.filter(status__in=verb.eligible).order_by("pk").values_list("pk", flat=True)[:ACTION_MAX_JOBS])
    now = timezone.now()
    problems: list[str] = []
    if not ids:
        done = 0
    elif verb is RETRY:
        done, problems = _retry(ids, now=now)
    elif verb is DISCARD:
        done = operations.discard(ids=ids, now=now)
    else:
        reason = f"marked dead by {request.user.get_username()} in the admin"
        done = operations.mark_dead(ids=ids, now=now, reason=reason)
    if verb is not RETRY and len(ids) > done:
        problems.append(
            ngettext(
                "%(n)d not changed because it changed state meanwhile",
                "%(n)d not changed because they changed state meanwhile",
                len(ids) - done,
            )
            % {"n": len(ids) - done}
        )
    if done:
        _log_actions(verb, ids, now=now, request=request)

    parts = [_done_phrase(verb, done), *problems, *_skipped_phrases(verb, counts)]
    if eligible > len(ids):
        parts.append(_left_phrase(eligible - len(ids)))
    message = "; ".join(parts) + "."
    if verb is RETRY and done:
        message += " " + _note(RETRY)
    clean = done > 0 and done == len(ids) == eligible
    logger.info(
        "admin: %s by %s on %s selected jobs: %s", verb.key, request.user.get_username(), sum(counts.values()), message
    )
    return Outcome(message=message, level=messages.SUCCESS if clean else messages.WARNING)


def _log_actions(verb: Verb, ids: list[int], *, now: datetime, request: HttpRequest) -> None:
    """One admin history entry (``LogEntry``) per job the verb changed, in one INSERT."""
    if verb is RETRY:
        touched = FailedJob.objects.filter(pk__in=ids, last_retried_at=now).exclude(status=Status.DEAD, dead_at=now)
        message = "Retried now by an operator (a manual retry: not counted against the automatic limit)."
    elif verb is DISCARD:
        touched = FailedJob.objects.filter(pk__in=ids, status=Status.DISCARDED, discarded_at=now)
        message = "Discarded by an operator."
    else:
        touched = FailedJob.objects.filter(pk__in=ids, status=Status.DEAD, dead_at=now)
        message = "Marked dead by an operator."
    LogEntry.objects.log_actions(
        user_id=request.user.pk,
        queryset=touched.only("pk", "task_name", "origin_task_id", "status"),
        action_flag=CHANGE,
        change_message=message,
    )


# --- the list's filters -------------------------------------------------------------------------------------


def _combinations(request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str, str]]:
    """Distinct (queue, task, error class) of the table: one query per page, shared by the three filters.

    Without an index on these columns it reads the whole table once (see docs/admin.md for the cost).
    """
    cached = getattr(request, "_queueing_combinations", None)
    if cached is None:
        cached = list(
            model_admin.get_queryset(request)
            .order_by()
            .values_list("queue", "task_name", "exception_class")
            .distinct()[:FILTER_MAX_COMBINATIONS]
        )
        request._queueing_combinations = cached  # type: ignore[attr-defined]
    return cached


class _ColumnFilter(admin.SimpleListFilter):
    """Filter on one column, its choices read from the table (once per page, see ``_combinations``)."""

    column: str
    position: int

    def values(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> set[str]:
        return {combination[self.position] for combination in _combinations(request, model_admin)}

    def label(self, value: str) -> str:
        return value or "(none)"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, self.label(value)) for value in sorted(self.values(request, model_admin))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> QuerySet[FailedJob]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.column: value})

    def get_facet_counts(self, pk_attname: str, filtered_qs: QuerySet[FailedJob]) -> dict[str, Count]:
        # One conditional count per choice, all in one aggregate (the default uses a subquery per choice).
        return {
            f"{i}__c": Count(pk_attname, filter=Q(**{self.column: value}))
            for i, (value, _) in enumerate(self.lookup_choices)
        }


class QueueFilter(_ColumnFilter):
    title = "queue"
    parameter_name = "queue"
    column = "queue"
    position = 0

    def values(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> set[str]:
        app = registry.celery_app()
        declared = {q.name for q in (app.conf.task_queues or ())} | {app.conf.task_default_queue}
        return super().values(request, model_admin) | declared


class TaskFilter(_ColumnFilter):
    title = "task"
    parameter_name = "task"
    column = "task_name"
    position = 1


class ErrorClassFilter(_ColumnFilter):
    title = "error class"
    parameter_name = "error"
    column = "exception_class"
    position = 2

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        # The short class name, which is what operators read; the full one where two short names are the same.
        values = self.values(request, model_admin)
        short = {value: value.rsplit(".", 1)[-1] for value in values}
        taken = Counter(short.values())
        labels = {value: self.label(name if taken[name] == 1 else value) for value, name in short.items()}
        return sorted(labels.items(), key=lambda choice: (choice[1].lower(), choice[0]))


class FailedJobChangeList(ChangeList):
    """The list's query leaves out the large columns it never shows; its date links cost one indexed query."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[FailedJob]:
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED_FIELDS)

    def date_drilldown(self) -> dict[str, Any]:
        """Django's date hierarchy (same levels, links and template), its choices made from the first and last
        dates of the selection rather than from a ``SELECT DISTINCT`` over every row: a day without failures may
        be offered (and lists nothing)."""
        field = self.date_hierarchy
        year, month, day = (self.params.get(f"{field}__{part}") for part in ("year", "month", "day"))

        def link(**filters: int | str) -> str:
            return self.get_query_string({f"{field}__{k}": v for k, v in filters.items()}, [f"{field}__"])

        if year and month and day:
            the_day = date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {
                    "link": link(year=year, month=month),
                    "title": capfirst(date_format(the_day, "YEAR_MONTH_FORMAT")),
                },
                "choices": [{"title": capfirst(date_format(the_day, "MONTH_DAY_FORMAT"))}],
            }
        bounds = self.queryset.aggregate(first=Min(field), last=Max(field))
        if bounds["first"] is None or bounds["last"] is None:
            return {"show": False}
        first, last = (timezone.localtime(bounds[k]).date() for k in ("first", "last"))
        if not year and first.year == last.year:
            year = str(first.year)
            if first.month == last.month:
                month = str(first.month)
        if year and month:
            days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
            return {
                "show": True,
                "back": {"link": link(year=year), "title": year},
                "choices": [
                    {
                        "link": link(year=year, month=month, day=d.day),
                        "title": capfirst(date_format(d, "MONTH_DAY_FORMAT")),
                    }
                    for d in days
                ],
            }
        if year:
            months = [date(int(year), m, 1) for m in range(first.month, last.month + 1)]
            return {
                "show": True,
                "back": {"link": link(), "title": "All dates"},
                "choices": [
                    {"link": link(year=year, month=m.month), "title": capfirst(date_format(m, "YEAR_MONTH_FORMAT"))}
                    for m in months
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [{"link": link(year=y), "title": str(y)} for y in range(first.year, last.year + 1)],
        }


# --- FailedJob --------------------------------------------------------------------------------------------


@admin.register(FailedJob)
class FailedJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "task",
        "queue",
        "status_badge",
        "error_short",
        "auto_retries",
        "attempts",
        "last_failed",
        "next_retry",
    )
    list_display_links = ("id", "task")
    list_filter = ("status", QueueFilter, TaskFilter, ErrorClassFilter)
    search_fields = ("task_name", "exception_class", "exception_message", "=origin_task_id", "=latest_task_id")
    search_help_text = "Task name, error class or message, a task id (exact), or the job's number."
    date_hierarchy = "last_failed_at"
    ordering = ("-last_failed_at", "-id")
    list_per_page = 50
    list_max_show_all = 500
    show_full_result_count = False
    actions = ("retry_selected", "discard_selected", "mark_dead_selected")
    fieldsets = (
        (None, {"fields": ("status_badge", "status_reason", "task_name", "queue", "origin_task", "latest_task")}),
        ("Why it failed", {"fields": ("exception_class", "exception_message", "traceback_text")}),
        ("The call", {"fields": ("args_json", "kwargs_json", "options_json")}),
        ("Retries", {"fields": ("retries", "attempts", "next_retry_at", "lease_expires_at")}),
        (
            "Timeline",
            {
                "fields": (
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
            },
        ),
        ("History of attempts", {"fields": ("history_table",)}),
        ("Current claim", {"fields": ("claim_token", "claimed_by", "claimed_from"), "classes": ("collapse",)}),
    )

    # -- an operator's console: look and act, never edit ------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FailedJob | None = None) -> bool:
        return False  # the detail page is read-only; the verbs need has_operate_permission

    def has_delete_permission(self, request: HttpRequest, obj: FailedJob | None = None) -> bool:
        return False  # the row is the record of the failure: discard it instead

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Retry, discard and mark dead: for users allowed to change failed jobs."""
        return _permission(request, "change")

    def get_readonly_fields(self, request: HttpRequest, obj: FailedJob | None = None) -> list[str]:
        return flatten_fieldsets(self.fieldsets)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return FailedJobChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[FailedJob], search_term: str
    ) -> tuple[QuerySet[FailedJob], bool]:
        filtered = queryset
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            queryset |= filtered.filter(pk=int(term))  # the job's number, within the current filters
        return queryset, may_have_duplicates

    # -- the list's columns ------------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: FailedJob) -> SafeString:
        return format_html(
            '<span class="queueing-status" style="background:{}">{}</span>',
            STATUS_COLOURS.get(obj.status, "#6b7280"),
            obj.get_status_display(),
        )

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
    def last_failed(self, obj: FailedJob) -> SafeString:
        recent = timezone.now() - obj.last_failed_at < timedelta(minutes=1)
        text = "just now" if recent else f"{timesince(obj.last_failed_at, depth=1)} ago"
        return format_html('<span title="{}">{}</span>', obj.last_failed_at.isoformat(), text)

    @admin.display(description="next retry", ordering="next_retry_at")
    def next_retry(self, obj: FailedJob) -> SafeString | str:
        if obj.next_retry_at is None:
            return "-"
        wait = obj.next_retry_at - timezone.now()
        if wait <= timedelta(0):
            text = "due"
        elif wait < timedelta(minutes=1):
            text = "in under a minute"
        else:
            text = f"in {timeuntil(obj.next_retry_at, depth=1)}"
        return format_html('<span title="{}">{}</span>', obj.next_retry_at.isoformat(), text)

    # -- the detail page ---------------------------------------------------------------------------------

    @admin.display(description="original call")
    def origin_task(self, obj: FailedJob) -> SafeString | str:
        return _task_link(obj.origin_task_id)

    @admin.display(description="latest call")
    def latest_task(self, obj: FailedJob) -> SafeString | str:
        latest = obj.clone_task_id()
        if not latest or latest == obj.origin_task_id:
            return "the original call (not retried yet)"
        return _task_link(latest)

    @admin.display(description="traceback")
    def traceback_text(self, obj: FailedJob) -> SafeString | str:
        return format_html('<pre class="queueing-pre">{}</pre>', obj.traceback) if obj.traceback else "-"

    @admin.display(description="args")
    def args_json(self, obj: FailedJob) -> SafeString:
        return _pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_json(self, obj: FailedJob) -> SafeString:
        return _pretty_json(obj.kwargs)

    @admin.display(description="routing options")
    def options_json(self, obj: FailedJob) -> SafeString:
        return _pretty_json(obj.options)

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
            ((self._event_time(e.get("at", "")), e.get("event", ""), self._event_details(e)) for e in obj.history),
        )
        return format_html(
            '<table class="queueing-history"><thead><tr><th>when</th><th>event</th><th>details</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            rows,
        )

    @staticmethod
    def _event_time(at: str) -> str:
        try:
            return timezone.localtime(datetime.fromisoformat(at)).strftime("%Y-%m-%d %H:%M:%S %Z")
        except (TypeError, ValueError):
            return at

    @staticmethod
    def _event_details(event: dict[str, Any]) -> SafeString:
        items = [(k, v) for k, v in event.items() if k not in ("event", "at")]
        return format_html_join(
            mark_safe("<br>"),
            "{}: {}",
            ((key, _task_link(str(value)) if key == "task_id" else value) for key, value in items),
        )

    # -- verbs: the list's actions, and the detail page's buttons -----------------------------------------

    def _run_action(self, verb: Verb, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            preview = _preview(verb, queryset)
            if preview["eligible"]:
                return self._confirmation(request, verb, preview, across=request.POST.get("select_across") == "1")
        outcome = perform(verb, queryset, request=request)
        self.message_user(request, outcome.message, outcome.level)
        return None

    @admin.action(description=RETRY.title, permissions=["operate"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(RETRY, request, queryset)

    @admin.action(description=DISCARD.title, permissions=["operate"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(DISCARD, request, queryset)

    @admin.action(description=MARK_DEAD.title, permissions=["operate"])
    def mark_dead_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(MARK_DEAD, request, queryset)

    def _confirmation(
        self, request: HttpRequest, verb: Verb, preview: dict[str, Any], *, across: bool, job: FailedJob | None = None
    ) -> TemplateResponse:
        """The page that says what the verb will do, before it does it (posts back to the same URL)."""
        if job is not None:
            scope = f"Job {job.pk} ({job.task_name})."
        elif across:
            scope = ngettext(
                "The %(n)d job matching the current filter%(filter)s.",
                "All %(n)d jobs matching the current filter%(filter)s.",
                preview["selected"],
            ) % {"n": preview["selected"], "filter": self._describe_filter(request)}
        else:
            scope = ngettext("The %(n)d selected job.", "The %(n)d selected jobs.", preview["selected"]) % {
                "n": preview["selected"]
            }
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb.title.replace(' selected', '')}?" if job else f"{verb.title}?",
            "opts": self.opts,
            "verb": verb,
            "scope": scope,
            "preview": preview,
            "job": job,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": "1" if across else "0",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/queueing/failedjob/action_confirmation.html", context)

    @staticmethod
    def _describe_filter(request: HttpRequest) -> str:
        names = {"q": "search", "e": None, "o": None, "p": None, "_facets": None}
        parts = []
        for key, values in request.GET.lists():
            name = names.get(key, key.removesuffix("__exact"))
            if name:
                parts.append(f"{name} = {', '.join(values)}")
        return f" ({'; '.join(parts)})" if parts else " (no filter: every job)"

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        operate = path(
            "<path:object_id>/operate/",
            self.admin_site.admin_view(self.operate_view),
            name="{}_{}_operate".format(*info),
        )
        return [operate, *super().get_urls()]

    def operate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The detail page's buttons: one verb on one job, confirmed first, then back to the detail page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        verb = VERBS.get(request.POST.get("verb", ""))
        if verb is None:
            return HttpResponse("unknown verb: use retry, discard or mark_dead", status=400)
        job = get_object_or_404(self.get_queryset(request).defer(*LIST_DEFERRED_FIELDS), pk=object_id)
        selection = FailedJob.objects.filter(pk=job.pk)
        if request.POST.get("post") != "yes":
            preview = _preview(verb, selection)
            if preview["eligible"]:
                return self._confirmation(request, verb, preview, across=False, job=job)
        outcome = perform(verb, selection, request=request)
        self.message_user(request, outcome.message, outcome.level)
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:queueing_failedjob_change", args=[job.pk]))

    # -- page context ------------------------------------------------------------------------------------

    def _console_context(self, request: HttpRequest) -> dict[str, Any]:
        sweep = PeriodicTask.objects.select_related("interval", "crontab").filter(name=SWEEP_TASK_NAME).first()
        sweep_url = None
        if sweep is not None and self.admin_site.is_registered(PeriodicTask):
            sweep_url = reverse(f"{self.admin_site.name}:django_celery_beat_periodictask_change", args=[sweep.pk])
        return {
            "queueing_policy": autoretry.current_policy(),
            "sweep": sweep,
            "sweep_schedule": (sweep.interval or sweep.crontab or "no schedule") if sweep else None,
            "sweep_url": sweep_url,
            "can_operate": self.has_operate_permission(request),
        }

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {"title": "Failed jobs", **self._console_context(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {**self._console_context(request), "verbs": list(VERBS.values()), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)


# --- the sweep's schedule, in django-celery-beat's own admin --------------------------------------------


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
    exact = _interval_seconds(task.interval)
    seconds = max(1, math.ceil(exact))
    AutoRetryConfig.objects.update_or_create(pk=1, defaults={"check_interval_seconds": seconds})
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
        data = super().clean()
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


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class SweepAwarePeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's admin; saving the sweep records its interval as the automatic-retry check interval."""

    form = SweepAwarePeriodicTaskForm

    def get_form(self, request: HttpRequest, obj: PeriodicTask | None = None, **kwargs: Any) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
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
