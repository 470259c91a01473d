"""The list's plumbing: its sidebar filters (status, queue, task, error class) and its ChangeList.

Both are built for a large table: the column filters' choices come from the small failure-group table and an
index, never from a ``SELECT DISTINCT`` over every row; the list's query leaves out the large columns; the date
links come from one ``MIN``/``MAX``; the unfiltered list's page count from the table's statistics on PostgreSQL
(docs/admin.md has the costs).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.text import capfirst

from queueing.models import FailedJob, FailureGroup
from queueing.registry import declared_queues, recorded_queues

#: Most distinct (queue, task, error class) combinations read for the sidebar filters on one page.
FILTER_MAX_COMBINATIONS = 5_000

#: Columns the list never shows: left out of its query so that a page of 50 rows stays small.
LIST_DEFERRED_FIELDS = ("traceback", "history", "args", "kwargs", "options", "status_reason")


def combinations(request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str, str]]:
    """The (queue, task, error class) combinations the filters offer: one query per page, shared by the three.

    Every failure is recorded in a failure group, whose fingerprint holds its task and error class: the choices
    are read from that small table (``FailureGroup``), plus the rows in no group (recorded before the groups
    existed, or whose group was deleted), found by the ``(group, status)`` index. The whole table is never read.
    """
    cached = getattr(request, "_queueing_combinations", None)
    if cached is None:
        ungrouped = (
            model_admin.get_queryset(request)
            .filter(group__isnull=True)
            .order_by()
            .values_list("queue", "task_name", "exception_class")
        )
        grouped = FailureGroup.objects.order_by().values_list("queue", "task_name", "exception_class")
        cached = list(ungrouped.union(grouped)[:FILTER_MAX_COMBINATIONS])  # UNION: distinct
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
    """The queues of recorded jobs (a loose scan of the ``(queue, status)`` index: one probe per queue) and those
    the Celery app declares (an empty queue is offered too)."""

    title = "queue"
    parameter_name = "queue"
    column = "queue"
    position = 0

    def values(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> set[str]:
        return recorded_queues() | declared_queues()


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


#: Below this many rows (by the table's statistics) the unfiltered list counts them exactly.
ESTIMATE_ABOVE_ROWS = 100_000

#: A filtered list counts its rows exactly up to this many; above, it shows the planner's estimate (PostgreSQL).
EXACT_COUNT_MAX_ROWS = 10_000


class EstimatedCountPaginator(Paginator):
    """Django's paginator, without a ``COUNT(*)`` that reads a large part of a large table.

    On PostgreSQL the unfiltered list of a large table takes its number of rows from the table's statistics
    (``pg_class.reltuples``, kept by autovacuum and ``ANALYZE``), and a filtered list (a status, a search) counts
    its rows only up to ``EXACT_COUNT_MAX_ROWS`` (a ``LIMIT`` in the count stops there), then takes the planner's
    estimate. Above those sizes the count shown and the last page are approximate (a page past the end lists
    nothing). Other databases count exactly.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or connection.vendor != "postgresql":
            return super().count
        if not queryset.query.where:
            table = queryset.model._meta.db_table
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
                row = cursor.fetchone()
            if row is not None and row[0] >= ESTIMATE_ABOVE_ROWS:
                return int(row[0])
            return super().count
        capped = queryset.order_by()[: EXACT_COUNT_MAX_ROWS + 1].count()
        if capped <= EXACT_COUNT_MAX_ROWS:
            return capped
        sql, params = queryset.order_by().query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            (plan,) = cursor.fetchone()
        if isinstance(plan, str):
            plan = json.loads(plan)
        return max(capped, int(plan[0]["Plan"]["Plan Rows"]))


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
