"""Worker and Beat start-up, and the counters behind the queue status and ``/metrics``.

Start-up: make sure the sweep is scheduled, say that auto-retry runs, and how, and start replaying the
spool (``queueing/spool.py``) in each worker.

Counters (kept in the broker's Redis by ``queueing.status.count``, one hash per counter, field = queue;
they count across every process and survive restarts of the web and worker processes):

- ``completed``: a task succeeded (``task_success``, in the worker that ran it).
- ``resolved``: a retry (a clone sent by the sweep or an operator) succeeded.
- ``failed``: a task failed for good after its immediate retries (``task_failure``) and is recorded.
- ``retried``: retries were published (``claims.jobs_sent``, once per batch of re-sent jobs, per queue).

Each handler costs one Redis round trip and never raises: a metric must not fail a task.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init, before_task_publish, task_failure, task_success, worker_ready
from django.dispatch import receiver

from queueing import alerts, claims  # noqa: F401  (alerts registers the ALERT_SINKS system check)
from queueing.retry_queues import base_queue

logger = logging.getLogger(__name__)


@beat_init.connect
def _schedule_sweep_when_beat_starts(sender: Any = None, **_: Any) -> None:
    from queueing.schedule import ensure_sweep_schedule

    ensure_sweep_schedule()


@worker_ready.connect
def _log_auto_retry_started(sender: Any = None, **_: Any) -> None:
    from queueing.autoretry import current_policy, describe

    logger.info("auto-retry started: %s", describe(current_policy()))


@worker_ready.connect
def _replay_the_spool(sender: Any = None, **_: Any) -> None:
    """Failures spooled while the database and the broker were both down: replay now and periodically."""
    from queueing import spool_replayer, status

    spool_replayer.start_replayer(after_each=status.publish_spooled_figure)


@before_task_publish.connect
def _mask_sensitive_reprs(
    sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    """Every message's ``argsrepr``/``kwargsrepr`` with its sensitive arguments masked, whatever sent it (a task by
    name, a canvas, a retry): the worker's log lines, its events and Flower show these (``queueing/sensitive.py``).
    """
    if headers is None or "argsrepr" not in headers or not isinstance(body, list | tuple) or len(body) < 2:
        return  # not a protocol 2 task message
    from celery.app import app_or_default

    from queueing import sensitive

    if any(sensitive.MASK in str(headers.get(name)) for name in ("argsrepr", "kwargsrepr")):
        return  # masked already (RetryableTask.apply_async, the sweep): as the stored call says

    task = app_or_default().tasks.get(str(sender))
    headers.update(sensitive.message_reprs(task, body[0], body[1]))


# --- counters ----------------------------------------------------------------------------------------------


def _queue_of(task: Any) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    queue = str(delivery.get("routing_key") or getattr(task, "queue", None) or task.app.conf.task_default_queue)
    return base_queue(queue)  # a clone sent by a retry queue counts under its own queue


def _is_retry(request: Any) -> bool:
    """Whether the running call is a clone (it carries the claim headers ``claims.publish`` adds)."""
    from queueing.registry import HEADER_JOB_ID, message_header

    return message_header(request, HEADER_JOB_ID) is not None


@task_success.connect
def _count_success(sender: Any = None, **_: Any) -> None:
    from queueing import status
    from queueing.schedule import SWEEP_TASK

    if sender is None or sender.name == SWEEP_TASK:
        return  # the sweep's own runs are housekeeping, not jobs
    queue = _queue_of(sender)
    status.count("completed", queue)
    if _is_retry(sender.request):
        status.count("resolved", queue)


@task_failure.connect
def _count_failure(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "record_failures", False):
        count_recorded_failure(sender)


def count_recorded_failure(task: Any) -> None:
    """Count a final failure; ``RetryableTask`` calls it for one it ends with ``Ignore`` (no ``task_failure``)."""
    from queueing import status

    status.count("failed", _queue_of(task))


@receiver(claims.jobs_sent)
def _count_retries_sent(sender: Any = None, sent: dict[str, int] | None = None, **_: Any) -> None:
    """The jobs one publish sent again, counted per queue (once per batch: ``claims.publish``)."""
    from queueing import status

    for queue, n in (sent or {}).items():
        status.count("retried", queue, by=n)
