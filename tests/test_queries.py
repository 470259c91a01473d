"""What the QuerySet predicates ask for (read from the query, no database), and that one sweep or one bulk
retry costs the same few queries for 5 jobs as for 50."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import redis
from django.db import connection
from django.db.models.sql.where import WhereNode
from django.test.utils import CaptureQueriesContext

from queueing import operations, sweep
from queueing.models import FailedJob, FailedJobQuerySet

Status = FailedJob.Status


def conditions(queryset: FailedJobQuerySet) -> set[tuple[str, str, Any]]:
    """The ANDed ``(field, lookup, value)`` conditions of ``queryset``'s WHERE clause, read without a database."""
    found: set[tuple[str, str, Any]] = set()

    def walk(node: WhereNode) -> None:
        assert node.connector == "AND" and not node.negated, node
        for child in node.children:
            if isinstance(child, WhereNode):
                walk(child)
            else:
                value = frozenset(child.rhs) if isinstance(child.rhs, list | tuple | set) else child.rhs
                found.add((child.lhs.target.name, child.lookup_name, value))

    walk(queryset.query.where)
    return found


# No django_db mark: pytest-django fails any of these tests that touches the database.


def test_due_means_failed_past_its_next_retry_time_with_automatic_retries_left(now: datetime) -> None:
    assert conditions(FailedJob.objects.due(now, max_retries=3)) == {
        ("status", "exact", Status.FAILED),
        ("next_retry_at", "lte", now),
        ("retry_count", "lt", 3),
    }


def test_a_lease_has_expired_when_a_retrying_job_is_past_its_lease(now: datetime) -> None:
    assert conditions(FailedJob.objects.lease_expired(now)) == {
        ("status", "exact", Status.RETRYING),
        ("lease_expires_at", "lt", now),
    }


def test_an_operator_may_retry_failed_and_dead_jobs_but_not_those_being_retried() -> None:
    assert conditions(FailedJob.objects.retryable_by_hand()) == {
        ("status", "in", frozenset({Status.FAILED, Status.DEAD})),
    }


def test_in_queue_narrows_to_one_queue_and_none_means_every_queue() -> None:
    everything = FailedJob.objects.all()

    assert conditions(everything.in_queue("whatsapp-send")) == {("queue", "exact", "whatsapp-send")}
    assert everything.in_queue(None) is everything


def test_the_predicates_compose() -> None:
    assert conditions(FailedJob.objects.retryable_by_hand().in_queue("q1")) == {
        ("status", "in", frozenset({Status.FAILED, Status.DEAD})),
        ("queue", "exact", "q1"),
    }


# --- query counts ------------------------------------------------------------------------------------------

#: Most queries one sweep may make, whatever the number of jobs, BEGIN and COMMIT included (measured: 14 on
#: SQLite and PostgreSQL: the policy, the jobs past MAX_AGE, three short transactions: expired leases, unknown
#: tasks, the claim; and the failure groups with due jobs, here none: jobs recorded before groups existed).
MAX_SWEEP_QUERIES = 14
#: The same for one bulk retry (measured: 13: the queue check, the count, unknown tasks, one claim that
#: takes every job, and the claim that finds none left).
MAX_BULK_RETRY_QUERIES = 13


@pytest.mark.django_db(transaction=True)
def test_one_sweep_costs_the_same_queries_for_5_due_jobs_as_for_50(
    broker: redis.Redis, make_failed_job: Any, now: datetime, django_assert_max_num_queries: Any
) -> None:
    counts = {}
    for n in (5, 50):
        # Given n due jobs (those of the previous round are being retried: not due)
        for _ in range(n):
            make_failed_job(queue="default")

        # When one sweep sends them
        with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(MAX_SWEEP_QUERIES):
            result = sweep.sweep(now=now)

        assert result.sent == n
        counts[n] = len(queries)

    # Then 50 jobs cost no more queries than 5
    assert counts[50] == counts[5], counts


@pytest.mark.django_db(transaction=True)
def test_one_bulk_retry_costs_the_same_queries_for_5_jobs_as_for_50(
    broker: redis.Redis, make_failed_job: Any, django_assert_max_num_queries: Any
) -> None:
    counts = {}
    for n in (5, 50):
        # Given n failed and dead jobs (those of the previous round are being retried: left alone)
        for i in range(n):
            make_failed_job(queue="default", status=Status.DEAD if i % 2 else Status.FAILED)

        # When an operator retries the queue
        with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(MAX_BULK_RETRY_QUERIES):
            outcome = operations.retry_now(queue="default")

        assert (outcome.total, outcome.retried, len(outcome.retried_ids)) == (n, n, n)
        counts[n] = len(queries)

    # Then 50 jobs cost no more queries than 5
    assert counts[50] == counts[5], counts


#: Most queries per batch of a bulk retry: the batch's ids (keyset), and the claim's transaction (BEGIN, the
#: locked ids, the UPDATE, the rows, COMMIT). A bulk retry reads the table in id order, batch after batch.
MAX_QUERIES_PER_BULK_BATCH = 6


@pytest.mark.django_db(transaction=True)
def test_a_bulk_retry_costs_a_fixed_number_of_queries_per_batch_not_per_job(
    broker: redis.Redis, make_failed_job: Any
) -> None:
    counts = {}
    for n in (20, 40):
        # Given n failed jobs (those of the previous round are being retried: left alone)
        for _ in range(n):
            make_failed_job(queue="default")

        # When an operator retries them in batches of 10
        with CaptureQueriesContext(connection) as queries:
            outcome = operations.retry_now(queue="default", batch_size=10)

        assert outcome.retried == n
        counts[n] = len(queries)

    # Then 2 more batches cost at most 2 batches' queries more
    assert counts[40] - counts[20] <= 2 * MAX_QUERIES_PER_BULK_BATCH, counts


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_costs_a_few_queries_and_one_more_per_batch_of_jobs(
    make_failed_job: Any, configure: Any, django_assert_max_num_queries: Any
) -> None:
    configure(BATCH_SIZE=10)
    counts: dict[int, int] = {}
    for n in (30, 60):
        FailedJob.objects.all().delete()
        for i in range(n):
            make_failed_job(queue="default", exception_class=f"app.Error{i % 3}")

        # The queue check, the count, the grouped count, the pauses, and the calls read 10 rows a query
        with CaptureQueriesContext(connection) as queries:
            outcome = operations.retry_now(queue="default", dry_run=True)

        assert [plan.jobs for plan in outcome.groups] == [n // 3] * 3
        counts[n] = len(queries)

    assert counts[30] <= 4 + 30 // 10 + 1, counts
    assert counts[60] - counts[30] == 3, counts


@pytest.mark.django_db(transaction=True)
def test_the_recorded_queues_are_read_with_one_query_one_probe_per_queue(make_failed_job: Any) -> None:
    from queueing import registry

    for queue in ("q2", "q1", "q2", "q3"):
        make_failed_job(queue=queue)

    with CaptureQueriesContext(connection) as queries:
        found = registry.recorded_queues()

    assert found == {"q1", "q2", "q3"}
    assert len(queries) == 1 and "DISTINCT" not in queries[0]["sql"].upper()
