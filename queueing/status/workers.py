"""The workers, asked by broadcast: which tasks each is running (``active``) and holding until their ETA
(``delayed``: countdowns, immediate retries).

Never per request: ``workers_snapshot()`` keeps their answer in Redis for ``STATUS_WORKERS_CACHE_SECONDS``
(``cache.py``) and refreshes it at most once per period, across all processes, in a background thread;
requests meanwhile get the previous answer. Nobody answering is itself an answer, kept for the period too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from queueing import registry
from queueing.conf import get_settings
from queueing.status import cache
from queueing.status.broker import Unavailable, answered, describe

logger = logging.getLogger(__name__)

_WORKERS_KEY = "queueing:status:workers"


@dataclass(frozen=True, kw_only=True)
class WorkersReport:
    """What the workers said at ``at`` (epoch seconds); ``ok`` False: nobody answered, and ``reason`` why."""

    at: float
    ok: bool
    reason: str = ""
    workers: list[str] = field(default_factory=list)
    #: ``{queue: tasks running}``
    active: dict[str, int] = field(default_factory=dict)
    #: ``{queue: tasks held until their ETA}``
    delayed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class NoReport:
    """No report to give (the broker is down, or the first broadcast is under way): ``reason`` says which."""

    reason: str


def workers_snapshot(client: redis.Redis, *, wait: bool) -> WorkersReport | NoReport:
    """The shared copy of the workers' report; with ``wait``, ask them now when it is out of date."""
    conf = get_settings()
    timeout = conf.status_inspect_timeout_seconds
    try:
        with answered():
            report = cache.shared_copy(
                client,
                _WORKERS_KEY,
                WorkersReport,
                fresh_seconds=conf.status_workers_cache_seconds,
                # kept a little longer than fresh, so that requests during the next refresh still have it
                keep_seconds=conf.status_workers_cache_seconds + 2 * timeout + 5,
                lock_seconds=2 * timeout + 5,
                compute=lambda: _ask_workers_or_why_not(timeout=timeout),
                block_if_missing=wait,
                block_if_stale=wait,
            )
    except Unavailable as exc:
        return NoReport(reason=str(exc))
    if report is None:
        return NoReport(reason="the workers are being asked right now; ask again in a second")
    return report


def _ask_workers_or_why_not(*, timeout: float) -> WorkersReport:
    try:
        return ask_workers(timeout=timeout)
    except Exception as exc:  # noqa: BLE001  (whatever went wrong is the answer, until the next refresh)
        logger.warning("could not ask the workers for their tasks: %r", exc)
        return WorkersReport(at=time.time(), ok=False, reason=f"could not ask the workers: {describe(exc)}")


def ask_workers(*, timeout: float) -> WorkersReport:
    """Broadcast ``active`` then ``scheduled`` to the workers; count their tasks per queue.

    With no worker up this takes ``timeout`` once: ``scheduled`` is only asked of those that answered,
    and returns as soon as they all have.
    """
    app = registry.celery_app()
    at = time.time()
    broker_timeout = get_settings().status_broker_timeout_seconds
    options = {"socket_timeout": broker_timeout, "socket_connect_timeout": broker_timeout, "max_retries": 1}
    with app.connection_for_write(connect_timeout=broker_timeout, transport_options=options) as connection:
        active = app.control.inspect(timeout=timeout, connection=connection).active() or {}
        if not active:
            return WorkersReport(at=at, ok=False, reason=f"no worker answered within {timeout:g} s")
        scheduled = (
            app.control.inspect(
                timeout=timeout, connection=connection, destination=list(active), limit=len(active)
            ).scheduled()
            or {}
        )
    return WorkersReport(
        at=at,
        ok=True,
        workers=sorted(active),
        active=_per_queue(task for tasks in active.values() for task in tasks),
        delayed=_per_queue(entry.get("request", {}) for entries in scheduled.values() for entry in entries),
    )


def _per_queue(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{queue: tasks}`` of the tasks a worker reported (each a mapping with ``delivery_info``)."""
    counts: Counter[str] = Counter()
    for task in tasks:
        delivery = task.get("delivery_info") or {}
        counts[delivery.get("routing_key") or "?"] += 1
    return dict(counts)
