"""``GET /metrics``: the queue status and the retry system's counters for Prometheus.

A custom collector reads everything at scrape time, so the numbers are the same whichever web process
answers: gauges from ``queueing/status/`` (the figures of ``GET /api/queue/status``, cached the same way),
counters and the sweep-duration histogram from the Redis hashes the workers write
(``queueing/signals.py``, ``status.record_sweep_duration``), alert states from ``AlertState``. No
prometheus_client multiprocess directory is needed: no metric lives in a process's memory.

Guarded like the API (``queueing/http.py``: bearer token or staff session; 401/403 otherwise), and
documented in the API's OpenAPI document (``OPENAPI_PATH``, added by ``project/api.py``) although a plain
Django view serves it. In ``prometheus.yml``::

    - job_name: queueing
      authorization: {credentials: "<QUEUEING_API_TOKEN>"}
      static_configs: [{targets: ["web:8000"]}]

Series (``queue`` label on each but the last three):

=====================================  =========  ==============================================================
name                                   type       meaning
=====================================  =========  ==============================================================
queueing_queue_jobs{state}             gauge      waiting, active, delayed, failed, dead, retrying (absent when
                                                  the figure is unavailable)
queueing_tasks_completed_total         counter    tasks that succeeded
queueing_jobs_failed_total             counter    calls that failed for good and were recorded
queueing_jobs_retried_total            counter    retries sent (sweep and operators)
queueing_jobs_resolved_total           counter    retries that succeeded
queueing_alert_firing{metric}          gauge      1 while the alert on failed/dead is firing
queueing_sweep_duration_seconds        histogram  how long each sweep took
queueing_workers                       gauge      workers that answered the latest broadcast (absent if none did)
queueing_status_source_up{source}      gauge      1 if the broker / the workers answered
queueing_auto_retry_paused             gauge      1 while the queue's automatic retries are paused
queueing_failure_group_state{group,    gauge      1 for the group's breaker state (closed, open, probing), 0 for
task,state}                                       the others; the groups the status lists
queueing_failure_group_jobs{group,     gauge      the group's jobs still failing (failed, retrying, dead)
task}
=====================================  =========  ==============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
from prometheus_client.registry import Collector

from queueing import status
from queueing.http import ERROR_DESCRIPTIONS, method_not_allowed, refusal
from queueing.models import AlertState, FailureGroup

logger = logging.getLogger(__name__)

#: The figures exported as ``queueing_queue_jobs{state=…}``.
GAUGE_STATES = ("waiting", "active", "delayed", "failed", "dead", "retrying")

#: counter in Redis -> (metric name without ``_total``, help)
COUNTER_METRICS = {
    "completed": ("queueing_tasks_completed", "Tasks that succeeded."),
    "failed": ("queueing_jobs_failed", "Calls that failed for good (after their immediate retries) and were recorded."),
    "retried": ("queueing_jobs_retried", "Retries sent, by the sweep or by an operator."),
    "resolved": ("queueing_jobs_resolved", "Retries that succeeded."),
}


class QueueingCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        report = status.queue_status()
        queues = list(report.queues)

        jobs = GaugeMetricFamily("queueing_queue_jobs", "Jobs per queue and state.", labels=["queue", "state"])
        for name, figures in report.queues.items():
            for state in GAUGE_STATES:
                if (value := getattr(figures, state)) is not None:
                    jobs.add_metric([name, state], value)
        yield jobs

        up = GaugeMetricFamily(
            "queueing_status_source_up", "1 if the source of these figures answered.", labels=["source"]
        )
        up.add_metric(["broker"], 0 if "waiting" in report.unavailable else 1)
        up.add_metric(["workers"], 0 if "active" in report.unavailable else 1)
        yield up
        if "active" not in report.unavailable:
            yield GaugeMetricFamily(
                "queueing_workers", "Workers that answered the latest broadcast.", value=len(report.workers)
            )

        try:
            counters = status.counters()
        except status.Unavailable as exc:
            logger.warning("metrics: counters unavailable: %s", exc)
        else:
            for counter, (name, documentation) in COUNTER_METRICS.items():
                family = CounterMetricFamily(name, documentation, labels=["queue"])
                values = counters[counter]
                for queue in sorted(set(queues) | set(values)):
                    family.add_metric([queue], values.get(queue, 0))
                yield family

        yield from _pauses_and_groups(report, queues)

        firing = GaugeMetricFamily(
            "queueing_alert_firing", "1 while the alert on a queue's figure is firing.", labels=["queue", "metric"]
        )
        for alert in AlertState.objects.order_by("queue", "metric"):
            firing.add_metric([alert.queue, alert.metric], 1 if alert.firing else 0)
        yield firing

        try:
            durations = status.sweep_durations()
        except status.Unavailable as exc:
            logger.warning("metrics: sweep durations unavailable: %s", exc)
        else:
            yield HistogramMetricFamily(
                "queueing_sweep_duration_seconds",
                "How long each sweep took.",
                buckets=durations.buckets,
                sum_value=durations.sum_seconds,
            )


def _pauses_and_groups(report: status.StatusReport, queues: list[str]) -> Iterator[GaugeMetricFamily]:
    paused = GaugeMetricFamily(
        "queueing_auto_retry_paused", "1 while the queue's automatic retries are paused.", labels=["queue"]
    )
    for queue in sorted(set(queues) | set(report.paused.queues)):
        paused.add_metric([queue], 1 if queue in report.paused.queues else 0)
    yield paused
    states = GaugeMetricFamily(
        "queueing_failure_group_state",
        "1 for the failure group's circuit breaker state, 0 for the others.",
        labels=["group", "task", "state"],
    )
    failing = GaugeMetricFamily(
        "queueing_failure_group_jobs",
        "The group's jobs still failing (failed, retrying, dead).",
        labels=["group", "task"],
    )
    for group in report.groups:
        for state in FailureGroup.State.values:
            states.add_metric([str(group.id), group.task_name, state], 1 if group.state == state else 0)
        failing.add_metric([str(group.id), group.task_name], group.still_failing)
    yield states
    yield failing


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(QueueingCollector())


@csrf_exempt  # read-only; a POST gets its 405 instead of a CSRF failure
def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, "GET, HEAD")
    if (refused := refusal(request)) is not None:
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(REGISTRY), content_type=content_type)


def _error(code: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


_SERIES = "\n".join(f"- `{name}_total` (counter): {help}" for name, help in COUNTER_METRICS.values())

#: ``/metrics`` in the OpenAPI document: a plain Django view, described here so that the docs show it.
OPENAPI_PATH: dict[str, Any] = {
    "get": {
        "operationId": "queueing_metrics",
        "tags": ["metrics"],
        "summary": "Prometheus metrics: the queue status, counters, alerts and the sweep's durations",
        "description": (
            "The Prometheus text exposition format (OpenMetrics when the `Accept` header asks for it), read "
            "at scrape time from the same sources as `GET /api/queue/status`, so every web process answers the "
            "same numbers. Scrape it with the bearer token (`authorization: {credentials: "
            '"<QUEUEING_API_TOKEN>"}` in `prometheus.yml`), or open it in a staff session. Series:\n\n'
            "- `queueing_queue_jobs{queue,state}` (gauge): waiting, active, delayed, failed, dead, retrying; "
            "absent when the figure is unavailable\n"
            f"{_SERIES}\n"
            "- `queueing_alert_firing{queue,metric}` (gauge): 1 while the alert on failed/dead is firing\n"
            "- `queueing_sweep_duration_seconds` (histogram): how long each sweep took\n"
            "- `queueing_workers` (gauge): workers that answered the latest broadcast\n"
            "- `queueing_status_source_up{source}` (gauge): 1 if the broker / the workers answered\n\n"
            "Answers GET and HEAD only (405 otherwise)."
        ),
        "security": [{"BearerToken": []}, {"StaffSession": []}],
        "responses": {
            "200": {
                "description": "The metrics, in Prometheus' text format.",
                "content": {
                    CONTENT_TYPE_LATEST: {
                        "schema": {"type": "string"},
                        "example": 'queueing_queue_jobs{queue="whatsapp-send",state="failed"} 2.0\n',
                    }
                },
            },
            **{str(code): _error(code) for code in (401, 403, 405)},
        },
    }
}
