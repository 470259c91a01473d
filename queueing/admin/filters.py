"""The list's plumbing: its sidebar filters (status, queue, task, error class) and its ChangeList.

Both are built for a large table: the three column filters share one ``SELECT DISTINCT`` per page, the list's
query leaves out the large columns, and the date links come from one ``MIN``/``MAX`` (docs/admin.md has the costs).
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.text import capfirst

from queueing.models import FailedJob
from queueing.registry import declared_queues

#: Most distinct (queue, task, error class) combinations read for the sidebar filters on one page.
FILTER_MAX_COMBINATIONS = 5_000

#: Columns the list never shows: left out of its query so that a page of 50 rows stays small.
LIST_DEFERRED_FIELDS = ("traceback", "history", "args", "kwargs", "options", "status_reason")


def combinations(request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str, str]]:
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
        request._queueing_combinations = cached  # type: ignore[attr-defined]  # a per-request memo
    return cached


class ColumnFilter(admin.SimpleListFilter):
    """Filter on one column, its choices read from the table (once per page, see ``combinations``)."""

    column: str
    position: int

    def values(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> set[str]:
        return {combination[self.position] for combination in combinations(request, model_admin)}

    def label(self, value: str) -> str:
        return value or "(none)"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, self.label(value)) for value in sorted(self.values(request, model_admin))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> QuerySet[FailedJob]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.column: value})

    def get_facet_counts(self, pk_attname: str, filtered_qs: QuerySet[Any]) -> dict[str, Count]:
        # One conditional count per choice, all in one aggregate (the default uses a subquery per choice).
        return {
            f"{i}__c": Count(pk_attname, filter=Q(**{self.column: value}))
            for i, (value, _) in enumerate(self.lookup_choices)
        }


class QueueFilter(ColumnFilter):
    """The queues of recorded jobs and those the Celery app declares (an empty queue is offered too)."""

    title = "queue"
    parameter_name = "queue"
    column = "queue"
    position = 0

    def values(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> set[str]:
        return super().values(request, model_admin) | declared_queues()


class TaskFilter(ColumnFilter):
    title = "task"
    parameter_name = "task"
    column = "task_name"
    position = 1


class ErrorClassFilter(ColumnFilter):
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
        be offered (and lists nothing). Days are those of the current time zone, which the links name."""
        field = self.date_hierarchy
        year, month, day = (self.params.get(f"{field}__{part}") for part in ("year", "month", "day"))
        zone = timezone.localtime().strftime("%Z")

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
                "choices": [{"title": f"{capfirst(date_format(the_day, 'MONTH_DAY_FORMAT'))} ({zone})"}],
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
