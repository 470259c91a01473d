"""What the QuerySet predicates ask for (read from the query, no database), and that one sweep or one bulk
retry costs the same few queries for 5 jobs as for 50."""

from __future__ import annotations

import uuid
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


# --- the failure path: what recording one final failure costs (docs/benchmarks-failure-path.md) ----------------


def a_failure(origin_task_id: str = "", *, message: str = "gateway answered 503 for +15550100") -> Any:
    from queueing import recording

    return recording.Failure(
        task_name="tests.tasks.succeed",
        task_id=str(uuid.uuid4()),
        origin_task_id=origin_task_id or str(uuid.uuid4()),
        queue="default",
        args=[],
        kwargs={},
        exception_class="messaging.gateway.GatewayUnavailable",
        exception_message=message,
        traceback="",
        attempts=4,
    )


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements captured, without the transaction's own (BEGIN, COMMIT, savepoints: SQLite logs some)."""
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")
    return [q["sql"] for q in queries.captured_queries if not q["sql"].upper().startswith(control)]


@pytest.fixture
def worker_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry policy reused for a second, as in a worker (``project/celery.py``): read once, here beforehand."""
    from queueing import autoretry

    monkeypatch.setattr(autoretry, "policy_max_age_seconds", 60.0)
    autoretry.current_policy()


@pytest.fixture
def no_known_causes(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process knows no group ids yet (earlier tests' groups are gone with their rows)."""
    from queueing import groups

    monkeypatch.setattr(groups, "_group_ids", {})


@pytest.mark.django_db(transaction=True)
def test_an_original_calls_failure_of_a_known_cause_costs_two_statements(
    worker_policy: None, no_known_causes: None
) -> None:
    from queueing import recording

    # Given a cause this process has recorded once
    recording.record_failure(a_failure(message="gateway answered 503 for +15550100"))

    # When another call fails for good with it
    with CaptureQueriesContext(connection) as queries:
        job = recording.record_failure(a_failure(message="gateway answered 503 for +15550199"))

    # Then the row is inserted without a look-up, and its group counted and read in one UPDATE … RETURNING
    assert job is not None and job.group is not None and job.group.failure_count == 2
    assert [sql.split()[0].upper() for sql in statements(queries)] == ["INSERT", "UPDATE"], statements(queries)
    assert "RETURNING" in statements(queries)[1].upper()


@pytest.mark.django_db(transaction=True)
def test_the_first_failure_of_a_new_cause_also_makes_its_group_and_opens_its_breaker(
    worker_policy: None, no_known_causes: None
) -> None:
    from queueing import recording
    from queueing.models import FailureGroup

    with CaptureQueriesContext(connection) as queries:
        job = recording.record_failure(a_failure())

    # The group looked up and made, the row inserted, the group counted, its breaker opened
    assert job is not None and job.group_id == FailureGroup.objects.get(state="open").pk
    assert [sql.split()[0].upper() for sql in statements(queries)] == ["SELECT", "INSERT", "INSERT", "UPDATE", "UPDATE"]


@pytest.mark.django_db(transaction=True)
def test_an_original_call_that_fails_again_after_it_was_recorded_updates_its_row(
    worker_policy: None, no_known_causes: None
) -> None:
    from queueing import recording

    # Given an original call recorded (its message is then delivered again, and fails again)
    first = recording.record_failure(a_failure("origin-1"))

    # When it is recorded again: the INSERT fails on the row there, and the row is updated the locked way
    again = recording.record_failure(a_failure("origin-1"))

    assert first is not None and again is not None and again.pk == first.pk
    assert FailedJob.objects.get().attempts == 8


@pytest.mark.django_db(transaction=True)
def test_a_group_gone_since_this_process_learnt_its_id_is_looked_up_again(
    worker_policy: None, no_known_causes: None
) -> None:
    from queueing import recording
    from queueing.models import FailureGroup

    # Given a cause recorded once, then its group and its job deleted (by hand: the system never deletes one)
    recording.record_failure(a_failure())
    FailedJob.objects.all().delete()
    FailureGroup.objects.all().delete()

    # When the same cause fails again
    job = recording.record_failure(a_failure())

    # Then it gets a new group, counted once
    assert job is not None and job.group_id == FailureGroup.objects.get().pk
    assert FailureGroup.objects.get().failure_count == 1
