"""What each queue holds right now: the one implementation behind ``GET /api/queue/status``,
``manage.py check_queue`` and ``/metrics``, and the counts the alerts read.

Where each figure comes from, and what one request costs:

1. ``waiting``: the broker (``broker.py``, behind the ``Broker`` interface). Redis: ``LLEN`` of the queue's
   list and of its priority lists, in one pipelined round trip; RabbitMQ: a passive ``queue_declare`` per queue
   on one connection. Short timeouts, no retries (``STATUS_BROKER_TIMEOUT_SECONDS``). The counters and shared
   copies below live in the status Redis: the broker's own, or ``REDIS_URL`` beside RabbitMQ (docs/brokers.md).
2. ``completed``: every worker adds one to ``queueing:completed`` (a Redis hash, field = queue) when a task
   succeeds (``task_success``, ``queueing/signals.py``): the counters store, ``counter_store.py``.
3. ``active`` and ``delayed`` (tasks held by a worker with an ETA or countdown, immediate retries
   included): the workers, asked by broadcast (``workers.py``). Never per request: their answer is kept in
   Redis for ``STATUS_WORKERS_CACHE_SECONDS`` and refreshed at most once per period, across all processes,
   under a Redis lock, in a background thread (``cache.py``); requests meanwhile get the previous answer.
   Nobody answering is itself an answer (kept for the period too): both figures are then ``None``.
4. ``failed``, ``dead`` and ``retrying``: ``FailedJob``, one grouped query (``jobs.job_counts``);
   ``recentFailed``: the newest failed and dead rows of each queue. Both are kept in Redis for
   ``STATUS_COUNTS_CACHE_SECONDS`` (shared by all processes; one of them refreshes while the others use the
   previous copy), because the grouped count grows with the table.

A figure that cannot be had is ``None`` and named in ``unavailable`` with the reason; nothing waits on
Redis longer than ``STATUS_BROKER_TIMEOUT_SECONDS`` per round trip, or on the workers at all (except
``check_queue``, which may wait one broadcast). The JSON shape is declared once, in ``schema.py``.

The modules: ``report`` (``queue_status`` and its records), ``schema`` (the JSON), ``jobs`` (the database),
``broker`` (the broker and its Redis), ``counter_store`` (the counters store), ``workers`` (the broadcast),
``cache`` (the shared stale-while-revalidate copies), ``groups`` (the failure groups, their breakers and
the pauses), ``spooled`` (failures waiting in each worker host's local spool). Callers import the names
below from the package.
"""

from __future__ import annotations

from queueing.status.broker import Broker, Unavailable, broker_redis, current_broker
from queueing.status.counter_store import (
    COUNTERS,
    SWEEP_DURATION_BUCKETS,
    SweepDurations,
    count,
    counters,
    record_sweep_duration,
    sweep_durations,
)
from queueing.status.groups import GroupFigures, group_figures
from queueing.status.jobs import RECENT_FAILED_LIMIT, JobSnapshot, RecentFailure, job_counts
from queueing.status.report import FIGURES, QueueStatus, StatusReport, queue_status
from queueing.status.schema import StatusOut
from queueing.status.spooled import publish_spooled_figure, spooled_figures
from queueing.status.workers import WorkersReport, ask_workers

__all__ = [
    "COUNTERS",
    "FIGURES",
    "RECENT_FAILED_LIMIT",
    "SWEEP_DURATION_BUCKETS",
    "Broker",
    "GroupFigures",
    "JobSnapshot",
    "QueueStatus",
    "RecentFailure",
    "StatusOut",
    "StatusReport",
    "SweepDurations",
    "Unavailable",
    "WorkersReport",
    "ask_workers",
    "broker_redis",
    "count",
    "counters",
    "current_broker",
    "group_figures",
    "job_counts",
    "publish_spooled_figure",
    "queue_status",
    "record_sweep_duration",
    "spooled_figures",
    "sweep_durations",
]
