"""Retry queues: re-sent jobs of a queue named in ``RETRY_QUEUES`` go to ``<queue>.retry``, not ``<queue>``.

A recovering backlog then waits in its own queue, and fresh jobs do not queue up behind it: a worker takes
from its queues in turn, so it keeps serving both. A worker consuming a queue also consumes that queue's
retry queue, whatever ``-Q`` says (``celery worker -Q whatsapp-send`` takes from ``whatsapp-send`` and
``whatsapp-send.retry``), so turning ``RETRY_QUEUES`` on needs no change to how workers start. A worker
started with ``-Q whatsapp-send.retry`` only serves the backlog (a retry queue gets no retry queue of its own).
The row keeps its own queue (``FailedJob.queue``): the retry queue is only where its clones travel, and the
queue status counts them under the row's queue (``base_queue``). A call first sent to a named exchange with its
own routing key is sent again the same way (``queueing/workflow.py``), not by the retry queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init

from queueing.conf import get_settings

logger = logging.getLogger(__name__)

RETRY_QUEUE_SUFFIX = ".retry"
#: In ``RETRY_QUEUES``: every queue.
ALL_QUEUES = "*"


def retry_queue(queue: str) -> str:
    """The name of ``queue``'s retry queue."""
    return queue if is_retry_queue(queue) else queue + RETRY_QUEUE_SUFFIX


def is_retry_queue(queue: str) -> bool:
    return queue.endswith(RETRY_QUEUE_SUFFIX)


def base_queue(queue: str) -> str:
    """The queue a retry queue serves (``whatsapp-send.retry`` -> ``whatsapp-send``); any other as it is.

    The counters of the queue status count a job under its own queue, whichever way its clone travelled.
    """
    return queue.removesuffix(RETRY_QUEUE_SUFFIX)


def send_to(queue: str) -> str:
    """Where a re-sent job of ``queue`` goes: its retry queue when ``RETRY_QUEUES`` names it, else ``queue``."""
    names = get_settings().retry_queues
    return retry_queue(queue) if queue in names or ALL_QUEUES in names else queue


@worker_init.connect(weak=False)
def consume_retry_queues(sender: Any = None, **_: Any) -> None:
    """Make a starting worker consume the retry queue of each queue it consumes (Celery's ``worker_init``)."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    if queues is None:
        return
    for name in [name for name in queues.consume_from if not is_retry_queue(name)]:
        extra = retry_queue(name)
        if extra in queues.consume_from:
            continue
        # The same declaration a publish to it makes (Celery's missing-queue rule), so both sides agree.
        queue = queues[extra] if queues.create_missing or extra in queues else queues.new_missing(extra)
        queues.select_add(queue)
        logger.debug("worker consumes %s too", extra)
