"""GET /metrics: Prometheus text with the queue gauges, the counters the workers keep, and the sweep's histogram."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from queueing import alerts, operations
from queueing.models import FailedJob
from queueing.periodic import sweep_failed_jobs
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-0123456789"
Status = FailedJob.Status


@pytest.fixture(autouse=True)
def token(configure: Any) -> None:
    configure(API_TOKEN=TOKEN, STATUS_COUNTS_CACHE_SECONDS=0, STATUS_INSPECT_TIMEOUT_SECONDS=0.2)


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_need_the_token_or_a_staff_session(broker: redis.Redis) -> None:
    anonymous = Client()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics").json()["error"].startswith("authentication required")
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401

    user = Client()
    user.force_login(User.objects.create_user("viewer"))
    assert user.get("/metrics").status_code == 403

    staff = Client()
    staff.force_login(User.objects.create_user("ops", is_staff=True))
    assert staff.get("/metrics").status_code == 200
    assert anonymous.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_wrong_method_is_a_json_405(client: Client) -> None:
    response = client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "POST" in response.json()["error"]


def test_the_queue_figures_are_gauges_per_queue_and_state(
    client: Client, broker: redis.Redis, make_failed_job: Any
) -> None:
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send")
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    tasks.succeed.apply_async(queue="whatsapp-send")

    samples = scrape(client)

    def jobs(queue: str, state: str) -> float | None:
        return samples.get(("queueing_queue_jobs", (("queue", queue), ("state", state))))

    assert jobs("whatsapp-send", "failed") == 2
    assert jobs("whatsapp-send", "dead") == 1
    assert jobs("whatsapp-send", "waiting") == 1
    assert jobs("default", "failed") == 0
    # No worker: active and delayed are absent, not zero, and the source says it is down
    assert jobs("whatsapp-send", "active") is None
    assert samples[("queueing_status_source_up", (("source", "workers"),))] == 0
    assert samples[("queueing_status_source_up", (("source", "broker"),))] == 1


def test_the_counters_count_completions_retries_resolutions_and_failures(
    client: Client, celery_worker: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    key = uuid.uuid4().hex
    # Given a recorded failure whose task now succeeds, retried by an operator
    job = make_failed_job(queue="whatsapp-send", task_name="tests.tasks.succeed", args=[key])
    operations.retry_now(queue="whatsapp-send")
    wait_for(lambda: FailedJob.objects.get(pk=job.pk).status == Status.RESOLVED, what="the retry to resolve the job")
    # And a call that fails for good on default
    failing = tasks.always_fail.delay(key)
    wait_for(lambda: FailedJob.objects.filter(origin_task_id=failing.id).exists(), what="the failure record")

    def counter(name: str, queue: str) -> float:
        return scrape(client).get((name, (("queue", queue),)), 0)

    wait_for(lambda: counter("queueing_jobs_failed_total", "default") == 1, what="the failure to be counted")
    assert counter("queueing_jobs_retried_total", "whatsapp-send") == 1
    assert counter("queueing_jobs_resolved_total", "whatsapp-send") == 1
    assert counter("queueing_tasks_completed_total", "whatsapp-send") == 1
    assert counter("queueing_tasks_completed_total", "default") == 0
    assert counter("queueing_jobs_retried_total", "default") == 0


def test_each_sweep_is_observed_by_the_duration_histogram(client: Client, broker: redis.Redis) -> None:
    sweep_failed_jobs()
    sweep_failed_jobs()

    samples = scrape(client)

    assert samples[("queueing_sweep_duration_seconds_count", ())] == 2
    assert samples[("queueing_sweep_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("queueing_sweep_duration_seconds_sum", ())] > 0


def test_a_firing_alert_is_a_gauge(client: Client, broker: redis.Redis, make_failed_job: Any, configure: Any) -> None:
    configure(API_TOKEN=TOKEN, STATUS_COUNTS_CACHE_SECONDS=0, ALERT_DEAD_THRESHOLD=1, ALERT_FAILED_THRESHOLD=5)
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    alerts.evaluate(sinks=[])

    samples = scrape(client)

    assert samples[("queueing_alert_firing", (("metric", "dead"), ("queue", "whatsapp-send")))] == 1


def test_the_sweeps_own_runs_are_not_counted_as_completed_jobs(celery_worker: Any, broker: Any) -> None:
    from queueing import status
    from queueing.periodic import sweep_failed_jobs
    from tests import tasks
    from tests.conftest import wait_for

    sweep_failed_jobs.delay()
    tasks.succeed.delay("counted")

    wait_for(lambda: broker.get("runs:counted"), what="the job to run")
    wait_for(lambda: status.counters()["completed"].get("default") == 1, what="the job to be counted")
    sweep_failed_jobs.delay()
    tasks.succeed.delay("counted-too")
    wait_for(lambda: status.counters()["completed"].get("default") == 2, what="the second job to be counted")
    assert status.counters()["completed"] == {"default": 2}
