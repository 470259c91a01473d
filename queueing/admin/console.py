"""The failed-jobs console (``FailedJobAdmin``): look at failed jobs, and act on them with the verbs (``verbs``).

Nothing is editable and nothing can be added or deleted here. The list's columns are the ones an operator reads
first, compact enough to fit a laptop screen (1,400 px) beside the filters; every time is shown to the second,
with its time zone (``display.format_time``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import ngettext
from django_celery_beat.models import PeriodicTask

from queueing import autoretry
from queueing.admin import display, verbs
from queueing.admin.columns import TIMELINE, FailedJobColumns
from queueing.admin.filters import (
    LIST_DEFERRED_FIELDS,
    ErrorClassFilter,
    EstimatedCountPaginator,
    FailedJobChangeList,
    QueueFilter,
    TaskFilter,
)
from queueing.models import FailedJob
from queueing.schedule import SWEEP_TASK_NAME

#: The longest search the list accepts (a task id is 36 characters; SQLite refuses LIKE patterns of 50,000 bytes).
SEARCH_MAX_CHARS = 1_000


@admin.register(FailedJob)
class FailedJobAdmin(FailedJobColumns, admin.ModelAdmin):
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
    show_full_result_count = False  # no second COUNT(*) of the whole table beside a filtered one
    paginator = EstimatedCountPaginator  # the unfiltered list of a large table: counted from the statistics
    actions = ("retry_selected", "discard_selected", "mark_dead_selected")
    fieldsets = (
        (None, {"fields": ("status_badge", "status_reason", "task_name", "queue", "origin_task", "latest_task")}),
        ("Why it failed", {"fields": ("exception_class", "exception_message", "traceback_text")}),
        ("The call", {"fields": ("args_json", "kwargs_json", "options_json")}),
        ("Retries", {"fields": ("retries", "attempts", "next_retry_at_shown", "lease_expires_at_shown")}),
        ("Timeline", {"fields": tuple(f"{name}_shown" for name in TIMELINE)}),
        ("History of attempts", {"fields": ("history_table",)}),
        ("Current claim", {"fields": ("claim_token", "claimed_by", "claimed_from"), "classes": ("collapse",)}),
    )

    # -- an operator's console: look and act, never edit ------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FailedJob | None = None) -> bool:
        return False  # the detail page is read-only; each verb needs its own permission (has_verb_permission)

    def has_delete_permission(self, request: HttpRequest, obj: FailedJob | None = None) -> bool:
        return False  # the row is the record of the failure: discard it instead

    # Each verb its own permission (least privilege): a user with only view_failedjob reads and never acts.

    def has_verb_permission(self, request: HttpRequest, verb: verbs.Verb) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{verb.permission}")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self.has_verb_permission(request, verbs.RETRY)

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return self.has_verb_permission(request, verbs.DISCARD)

    def has_mark_dead_permission(self, request: HttpRequest) -> bool:
        return self.has_verb_permission(request, verbs.MARK_DEAD)

    def allowed_verbs(self, request: HttpRequest) -> list[str]:
        """The keys of the verbs this user may use."""
        return [key for key, verb in verbs.VERBS.items() if self.has_verb_permission(request, verb)]

    def get_readonly_fields(self, request: HttpRequest, obj: FailedJob | None = None) -> list[str]:
        return flatten_fieldsets(self.fieldsets)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # The failure groups' page links here with ?group__id__exact=<id> (a group's jobs).
        return lookup == "group__id__exact" or super().lookup_allowed(lookup, value, request)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return FailedJobChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[FailedJob], search_term: str
    ) -> tuple[QuerySet[FailedJob], bool]:
        if len(search_term) > SEARCH_MAX_CHARS:
            # A database refuses a LIKE pattern that long (SQLite: "pattern too complex"): say so, find nothing.
            self.message_user(
                request, f"search too long: at most {SEARCH_MAX_CHARS} characters; shorten it", messages.ERROR
            )
            return queryset.none(), False
        filtered = queryset
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            queryset |= filtered.filter(pk=int(term))  # the job's number, within the current filters
        return queryset, may_have_duplicates

    # -- verbs: the list's actions, and the detail page's buttons -----------------------------------------

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[FailedJob], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        """Django's action dispatch, after checking that the selection is job ids (Django filters on it as is)."""
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if not all(value.isascii() and value.isdigit() and len(value) < 19 for value in selected):
            problem = "invalid selection: select the jobs again (ids are whole numbers)"
            self.message_user(request, problem, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset, *args, **kwargs)

    def _run_action(self, verb: verbs.Verb, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            preview = verbs.preview(verb, queryset)
            if preview["eligible"]:
                return self._confirmation(request, verb, preview, across=request.POST.get("select_across") == "1")
        across = request.POST.get("select_across") == "1"
        filter_text = self._describe_filter(request).strip(" ()") if across else ""
        outcome = verbs.perform(verb, queryset, request=request, filter_text=filter_text)
        self.message_user(request, outcome.message, outcome.level)
        return None

    @admin.action(description=verbs.RETRY.title, permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(verbs.RETRY, request, queryset)

    @admin.action(description=verbs.DISCARD.title, permissions=["discard"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(verbs.DISCARD, request, queryset)

    @admin.action(description=verbs.MARK_DEAD.title, permissions=["mark_dead"])
    def mark_dead_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        return self._run_action(verbs.MARK_DEAD, request, queryset)

    def _confirmation(
        self,
        request: HttpRequest,
        verb: verbs.Verb,
        preview: dict[str, Any],
        *,
        across: bool,
        job: FailedJob | None = None,
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
        verb = verbs.VERBS.get(request.POST.get("verb", ""))
        if verb is None:
            if not self.allowed_verbs(request):
                raise PermissionDenied
            return HttpResponse("unknown verb: use retry, discard or mark_dead", status=400)
        if not self.has_verb_permission(request, verb):
            raise PermissionDenied
        try:
            job = self.get_queryset(request).defer(*LIST_DEFERRED_FIELDS).filter(pk=object_id).first()
        except (ValueError, ValidationError):  # not an id at all
            job = None
        if job is None:
            raise Http404(f"no failed job {object_id[:50]!r}")
        selection = FailedJob.objects.filter(pk=job.pk)
        if request.POST.get("post") != "yes":
            preview = verbs.preview(verb, selection)
            if preview["eligible"]:
                return self._confirmation(request, verb, preview, across=False, job=job)
        outcome = verbs.perform(verb, selection, request=request)
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
            "can_operate": bool(allowed := self.allowed_verbs(request)),
            "allowed_verbs": allowed,
            "time_format": display.TIME_FORMAT_DJANGO,
        }

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if any("\x00" in key + value for key, values in request.GET.lists() for value in values):
            # No column holds a NUL (PostgreSQL refuses one in a query): the list without the filters, told why.
            self.message_user(request, "a filter or search held a NUL character; it was dropped", messages.ERROR)
            return HttpResponseRedirect(request.path)
        context = {
            "title": "Failed jobs",
            # The list needs the width (its columns fit 1,400 px beside the filters); the breadcrumbs lead on.
            "is_nav_sidebar_enabled": False,
            **self._console_context(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {**self._console_context(request), "verbs": list(verbs.VERBS.values()), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def history_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        context = {"time_format": display.TIME_FORMAT_DJANGO, **(extra_context or {})}
        return super().history_view(request, object_id, context)
