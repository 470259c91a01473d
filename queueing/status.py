"""What each queue holds right now: the one implementation behind ``GET /api/queue/status``,
``manage.py check_queue`` and ``/metrics``, and the counts the alerts read.

Where each figure comes from, and what one request costs:

1. ``waiting``: the broker. ``LLEN`` of the queue's Redis list and of its priority lists
   (``<queue>\\x06\\x16<step>``, kombu's layout), in one pipelined round trip with short timeouts and no
   retries (``STATUS_BROKER_TIMEOUT_SECONDS``).
2. ``completed``: every worker adds one to ``queueing:completed`` (a Redis hash, field = queue) when a task
   succeeds (``task_success``, ``queueing/signals.py``). Read in the same round trip as ``waiting``.
3. ``active`` and ``delayed`` (tasks held by a worker with an ETA or countdown, immediate retries
   included): the workers, asked by broadcast (``inspect().active()`` then ``scheduled()``). Never per
   request: their answer is kept in Redis for ``STATUS_WORKERS_CACHE_SECONDS`` and refreshed at most once per
   period, across all processes, under a Redis lock, in a background thread; requests meanwhile get the
   previous answer. Nobody answering is itself an answer (kept for the period too): both figures are then
   ``None``.
4. ``failed``, ``dead`` and ``retrying``: ``FailedJob``, one grouped query; ``recentFailed``: the newest
   failed and dead rows of each queue (``RECENT_FAILED_LIMIT``). Both are kept in Redis for
   ``STATUS_COUNTS_CACHE_SECONDS`` (shared by all processes; one of them refreshes while the others use the
   previous copy), because the grouped count grows with the table.

A figure that cannot be had is ``None`` and named in ``unavailable`` with the reason; nothing waits on
Redis longer than ``STATUS_BROKER_TIMEOUT_SECONDS`` per round trip, or on the workers at all (except
``check_queue``, which may wait one broadcast).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from django.db import connections
from django.db.models import Count
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry

from queueing import registry
from queueing.conf import get_settings
from queueing.models import FailedJob

logger = logging.getLogger(__name__)

Status = FailedJob.Status

#: The figures of one queue, in the order ``check_queue`` prints them.
FIGURES = ("waiting", "active", "completed", "failed", "delayed", "dead")
#: Most recent failed/dead jobs listed per queue.
RECENT_FAILED_LIMIT = 10
#: Counters kept in Redis by the signal handlers (``queueing/signals.py``), one hash each, field = queue.
COUNTERS = ("completed", "failed", "retried", "resolved")
#: Upper bounds (seconds) of the sweep-duration histogram's buckets.
SWEEP_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Seconds past ``STATUS_COUNTS_CACHE_SECONDS`` that an out-of-date copy of the counts may still be answered.
STALE_COUNTS_GRACE_SECONDS = 3.0

_WORKERS_KEY = "queueing:status:workers"
_JOBS_KEY = "queueing:status:jobs"
_SWEEP_KEY = "queueing:sweep:duration"


class Unavailable(Exception):
    """A source of figures cannot answer; the message says why, for the ``unavailable`` list."""


# --- the report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RecentFailure:
    id: int
    name: str
    failed_reason: str
    attempts_made: int
    timestamp_ms: int
    status: str
    retry_count: int
    next_retry_at_ms: int | None
    status_reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "failedReason": self.failed_reason,
            "attemptsMade": self.attempts_made,
            "timestamp": self.timestamp_ms,
            "status": self.status,
            "retryCount": self.retry_count,
            "nextRetryAt": self.next_retry_at_ms,
            "statusReason": self.status_reason,
        }


@dataclass(frozen=True, kw_only=True)
class QueueStatus:
    name: str
    waiting: int | None
    active: int | None
    completed: int | None
    failed: int
    delayed: int | None
    dead: int
    retrying: int
    recent_failed: list[RecentFailure]
    #: figure -> why it is None
    unavailable: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "active": self.active,
            "completed": self.completed,
            "failed": self.failed,
            "delayed": self.delayed,
            "dead": self.dead,
            "retrying": self.retrying,
            "unavailable": sorted(self.unavailable, key=FIGURES.index),
            "recentFailed": [job.as_dict() for job in self.recent_failed],
        }


@dataclass(frozen=True, kw_only=True)
class StatusReport:
    queues: dict[str, QueueStatus]
    #: figure -> why it is None (the same for every queue)
    unavailable: dict[str, str]
    generated_at: datetime
    workers: list[str] = field(default_factory=list)
    workers_reported_at: datetime | None = None
    counts_as_of: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/queue/status`` (and of ``check_queue --json``)."""
        return {
            "queues": {name: queue.as_dict() for name, queue in self.queues.items()},
            "unavailable": dict(sorted(self.unavailable.items(), key=lambda item: FIGURES.index(item[0]))),
            "workers": {"names": self.workers, "reportedAt": _ms(self.workers_reported_at)},
            "countsAsOf": _ms(self.counts_as_of),
            "generatedAt": _ms(self.generated_at),
        }


def queue_status(*, queue: str | None = None, wait_for_workers: bool = False) -> StatusReport:
    """Every known queue's figures (or only ``queue``'s; an unknown name raises ``UnknownQueue``).

    ``wait_for_workers`` (for one-off readers such as ``check_queue``): count the jobs now rather than take
    the shared copy, and when the workers' report is out of date, ask them and wait for the answer (up to
    two broadcasts) instead of answering ``None`` for ``active`` and ``delayed``.
    """
    client, broker_problem = _client_or_reason()
    try:
        jobs = job_snapshot(client=client, max_age_seconds=0 if wait_for_workers else None)
    except redis.RedisError as exc:
        # Redis does not answer: say so once, and do not wait for it again in this request.
        client, broker_problem = None, f"the broker did not answer: {_describe(exc)}"
        jobs = _query_jobs()
    names = sorted(registry.declared_queues() | set(jobs["counts"]))
    if queue is not None:
        if queue not in names:
            registry.validate_queue(queue)  # UnknownQueue, listing the known ones, unless it has only old rows
        names = [queue]

    unavailable: dict[str, str] = {}
    broker: dict[str, dict[str, int]] = {}
    if client is not None:
        try:
            broker = _broker_figures(client, names)
        except Unavailable as exc:
            client, broker_problem = None, str(exc)
    if client is None:
        unavailable["waiting"] = unavailable["completed"] = broker_problem

    workers = _workers_snapshot(client, broker_problem, wait=wait_for_workers)
    if not workers.get("ok"):
        unavailable["active"] = unavailable["delayed"] = workers["reason"]

    queues = {}
    for name in names:
        counts = jobs["counts"].get(name, {})
        queues[name] = QueueStatus(
            name=name,
            waiting=broker["waiting"].get(name, 0) if broker else None,
            completed=broker["completed"].get(name, 0) if broker else None,
            active=workers["active"].get(name, 0) if workers.get("ok") else None,
            delayed=workers["delayed"].get(name, 0) if workers.get("ok") else None,
            failed=counts.get(Status.FAILED, 0),
            dead=counts.get(Status.DEAD, 0),
            retrying=counts.get(Status.RETRYING, 0),
            recent_failed=[RecentFailure(**row) for row in jobs["recent"].get(name, [])],
            unavailable=unavailable,
        )
    return StatusReport(
        queues=queues,
        unavailable=unavailable,
        generated_at=datetime.now(UTC),
        workers=workers.get("workers", []),
        workers_reported_at=_datetime(workers.get("at")),
        counts_as_of=_datetime(jobs["at"]),
    )


# --- the database: counts and the newest failures -----------------------------------------------------------


def job_snapshot(*, client: redis.Redis | None = None, max_age_seconds: float | None = None) -> dict[str, Any]:
    """``{"at", "counts": {queue: {status: n}}, "recent": {queue: [RecentFailure fields]}}``.

    Kept in Redis for ``max_age_seconds`` (default ``STATUS_COUNTS_CACHE_SECONDS``; 0: always query). An
    out-of-date copy is still answered while one process refreshes it in the background, but only for a
    few seconds more: after that it is gone, and the next request waits for the query, so that a reader
    who comes after a quiet spell never gets old counts.
    """
    max_age = get_settings().status_counts_cache_seconds if max_age_seconds is None else max_age_seconds
    if max_age <= 0 or client is None:
        return _query_jobs()
    copy = _shared_copy(
        client,
        _JOBS_KEY,
        fresh_seconds=max_age,
        keep_seconds=max_age + STALE_COUNTS_GRACE_SECONDS,
        lock_seconds=60.0,
        wait_seconds=5.0,
        compute=_query_jobs,
        block_if_missing=True,
    )
    return copy if copy is not None else _query_jobs()


def count_jobs() -> dict[str, dict[str, int]]:
    """``{queue: {status: n}}`` of the failed, dead and retrying jobs (queues without any are left out).

    One grouped query; naming the statuses keeps the resolved and discarded rows (the bulk of an old table)
    out. Its cost still grows with the failed rows: on PostgreSQL about 70 ms for 10,000 and 0.3 s for
    250,000 (of 1,000,000; ``docs/bench-status.md``), which is why ``job_snapshot`` keeps the answer for
    ``STATUS_COUNTS_CACHE_SECONDS``.
    """
    counts: dict[str, dict[str, int]] = {}
    rows = (
        FailedJob.objects.filter(status__in=[Status.FAILED, Status.DEAD, Status.RETRYING])
        .order_by()
        .values_list("queue", "status")
        .annotate(n=Count("id"))
    )
    for queue, status, n in rows:
        counts.setdefault(queue, {})[status] = n
    return counts


def _query_jobs() -> dict[str, Any]:
    at = time.time()
    counts = count_jobs()
    recent = {
        queue: _recent_failures(queue, [s for s in (Status.FAILED, Status.DEAD) if by_status.get(s)])
        for queue, by_status in counts.items()
    }
    return {"at": at, "counts": counts, "recent": {q: rows for q, rows in recent.items() if rows}}


def _recent_failures(queue: str, statuses: list[str]) -> list[dict[str, Any]]:
    """The newest failed/dead rows of ``queue``: one query per status, each a short index scan (a few ms)."""
    fields = [
        "id",
        "task_name",
        "exception_class",
        "exception_message",
        "status_reason",
        "attempts",
        "last_failed_at",
        "status",
        "retry_count",
        "next_retry_at",
    ]
    jobs: list[FailedJob] = []
    for status in statuses:
        jobs += (
            FailedJob.objects.filter(status=status, queue=queue)
            .order_by("-last_failed_at", "-id")
            .only(*fields)[:RECENT_FAILED_LIMIT]
        )
    jobs.sort(key=lambda job: (job.last_failed_at, job.pk), reverse=True)
    return [_recent_failure(job) for job in jobs[:RECENT_FAILED_LIMIT]]


def _recent_failure(job: FailedJob) -> dict[str, Any]:
    if job.exception_class:
        reason = f"{job.exception_class}: {job.exception_message}" if job.exception_message else job.exception_class
    else:
        reason = job.status_reason
    return {
        "id": job.pk,
        "name": job.task_name,
        "failed_reason": reason,
        "attempts_made": job.attempts,
        "timestamp_ms": _ms(job.last_failed_at),
        "status": job.status,
        "retry_count": job.retry_count,
        "next_retry_at_ms": _ms(job.next_retry_at),
        "status_reason": job.status_reason,
    }


# --- the broker: waiting messages and the counters ----------------------------------------------------------


_clients: dict[tuple[int, str, float], redis.Redis] = {}
_clients_lock = threading.Lock()


def broker_redis() -> redis.Redis:
    """A client of the broker's Redis: short timeouts, no retries. ``Unavailable`` for another transport.

    One per process (redis-py's pool is thread-safe, and rebuilt after a fork).
    """
    app = registry.celery_app()
    url = _broker_url()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise Unavailable(f"the broker is {scheme}://; these figures need the Redis transport")
    timeout = get_settings().status_broker_timeout_seconds
    key = (os.getpid(), url, timeout)
    with _clients_lock:
        if (client := _clients.get(key)) is None:
            ssl = app.conf.broker_use_ssl if scheme == "rediss" and isinstance(app.conf.broker_use_ssl, dict) else {}
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                **ssl,
            )
            _clients[key] = client
    return client


@functools.cache
def _broker_layout() -> tuple[str, str, tuple[int, ...]]:
    """(broker URL, kombu's ``global_keyprefix``, priority steps), read once from the Celery app."""
    app = registry.celery_app()
    url = app.conf.broker_url or ""
    if isinstance(url, list | tuple):
        url = url[0]
    options = app.conf.broker_transport_options or {}
    return (
        url.split(";")[0],
        str(options.get("global_keyprefix", "")),
        tuple(options.get("priority_steps", PRIORITY_STEPS)),
    )


def _broker_url() -> str:
    return _broker_layout()[0]


def _key(name: str) -> str:
    """A Redis key, with the broker's ``global_keyprefix`` (kombu prefixes its own keys with it too)."""
    return _broker_layout()[1] + name


def _client_or_reason() -> tuple[redis.Redis | None, str]:
    try:
        return broker_redis(), ""
    except Unavailable as exc:
        return None, str(exc)


def _broker_figures(client: redis.Redis, queues: list[str]) -> dict[str, dict[str, int]]:
    steps = _broker_layout()[2]
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for step in steps:
                    pipe.llen(_key(f"{queue}{RedisChannel.sep}{step}" if step else queue))
            pipe.hmget(_key("queueing:completed"), queues)
            replies = pipe.execute()
    except redis.RedisError as exc:
        raise Unavailable(f"the broker did not answer: {_describe(exc)}") from exc
    *lengths, completed = replies
    waiting = {queue: sum(lengths[i * len(steps) : (i + 1) * len(steps)]) for i, queue in enumerate(queues)}
    return {"waiting": waiting, "completed": {q: int(n or 0) for q, n in zip(queues, completed, strict=True)}}


def count(counter: str, queue: str, *, by: int = 1) -> None:
    """Add to one of ``COUNTERS`` for ``queue``. Never raises: a metric must not fail a task."""
    try:
        broker_redis().hincrby(_key(f"queueing:{counter}"), queue, by)
    except (Unavailable, redis.RedisError) as exc:
        logger.warning("could not count %s for queue %s: %s", counter, queue, _describe(exc))


def counters() -> dict[str, dict[str, int]]:
    """``{counter: {queue: n}}`` for every one of ``COUNTERS`` (``Unavailable`` if Redis does not answer)."""
    client = broker_redis()
    try:
        with client.pipeline(transaction=False) as pipe:
            for counter in COUNTERS:
                pipe.hgetall(_key(f"queueing:{counter}"))
            replies = pipe.execute()
    except redis.RedisError as exc:
        raise Unavailable(f"the broker did not answer: {_describe(exc)}") from exc
    return {
        counter: {field.decode(): int(n) for field, n in reply.items()}
        for counter, reply in zip(COUNTERS, replies, strict=True)
    }


def record_sweep_duration(seconds: float) -> None:
    """Add one sweep's duration to the histogram kept in Redis. Never raises."""
    i = bisect.bisect_left(SWEEP_DURATION_BUCKETS, seconds)
    bucket = SWEEP_DURATION_BUCKETS[i] if i < len(SWEEP_DURATION_BUCKETS) else math.inf
    try:
        with broker_redis().pipeline(transaction=False) as pipe:
            pipe.hincrby(_key(_SWEEP_KEY), f"le:{bucket}", 1)
            pipe.hincrby(_key(_SWEEP_KEY), "count", 1)
            pipe.hincrbyfloat(_key(_SWEEP_KEY), "sum", seconds)
            pipe.execute()
    except (Unavailable, redis.RedisError) as exc:
        logger.warning("could not record the sweep's duration: %s", _describe(exc))


def sweep_durations() -> tuple[list[tuple[str, int]], int, float]:
    """The sweep-duration histogram: (cumulative ``[(le, count)]`` with ``+Inf`` last, count, sum)."""
    try:
        raw = {k.decode(): v for k, v in broker_redis().hgetall(_key(_SWEEP_KEY)).items()}
    except redis.RedisError as exc:
        raise Unavailable(f"the broker did not answer: {_describe(exc)}") from exc
    buckets, running = [], 0
    for bound in (*SWEEP_DURATION_BUCKETS, math.inf):
        running += int(raw.get(f"le:{bound}", 0))
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return buckets, int(raw.get("count", 0)), float(raw.get("sum", 0.0))


# --- the workers: active and delayed tasks -------------------------------------------------------------------


def _workers_snapshot(client: redis.Redis | None, broker_problem: str, *, wait: bool) -> dict[str, Any]:
    if client is None:
        return {"ok": False, "reason": broker_problem}
    conf = get_settings()
    timeout = conf.status_inspect_timeout_seconds
    try:
        snapshot = _shared_copy(
            client,
            _WORKERS_KEY,
            fresh_seconds=conf.status_workers_cache_seconds,
            # kept a little longer than fresh, so that requests during the next refresh still have it
            keep_seconds=conf.status_workers_cache_seconds + 2 * timeout + 5,
            lock_seconds=2 * timeout + 5,
            compute=lambda: _ask_workers_or_why_not(timeout=timeout),
            block_if_missing=wait,
            block_if_stale=wait,
        )
    except redis.RedisError as exc:
        return {"ok": False, "reason": f"the broker did not answer: {_describe(exc)}"}
    if snapshot is None:
        return {"ok": False, "reason": "the workers are being asked right now; ask again in a second"}
    return snapshot


def _ask_workers_or_why_not(*, timeout: float) -> dict[str, Any]:
    try:
        return ask_workers(timeout=timeout)
    except Exception as exc:  # noqa: BLE001  (whatever went wrong is the answer, until the next refresh)
        logger.warning("could not ask the workers for their tasks: %r", exc)
        return {"at": time.time(), "ok": False, "reason": f"could not ask the workers: {_describe(exc)}"}


def ask_workers(*, timeout: float) -> dict[str, Any]:
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
            return {"at": at, "ok": False, "reason": f"no worker answered within {timeout:g} s"}
        scheduled = (
            app.control.inspect(
                timeout=timeout, connection=connection, destination=list(active), limit=len(active)
            ).scheduled()
            or {}
        )
    return {
        "at": at,
        "ok": True,
        "reason": "",
        "workers": sorted(active),
        "active": _per_queue(task for tasks in active.values() for task in tasks),
        "delayed": _per_queue(entry.get("request", {}) for entries in scheduled.values() for entry in entries),
    }


def _per_queue(tasks: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for task in tasks:
        delivery = task.get("delivery_info") or {}
        counts[delivery.get("routing_key") or "?"] += 1
    return dict(counts)


# --- shared, short-lived copies in Redis ---------------------------------------------------------------------


def _read(client: redis.Redis, key: str) -> dict[str, Any] | None:
    raw = client.get(_key(key))
    return json.loads(raw) if raw else None


#: Keys being refreshed by a thread of this process (at most one thread per key, whatever the Redis lock does).
_refreshing: set[str] = set()
_refreshing_lock = threading.Lock()


def _shared_copy(
    client: redis.Redis,
    key: str,
    *,
    fresh_seconds: float,
    keep_seconds: float,
    lock_seconds: float,
    compute: Callable[[], dict[str, Any]],
    block_if_missing: bool,
    block_if_stale: bool = False,
    wait_seconds: float | None = None,
) -> dict[str, Any] | None:
    """A copy of ``compute()``'s value kept in Redis, refreshed at most once per ``fresh_seconds`` by all
    processes together (stale-while-revalidate).

    Out of date: the one caller that takes the Redis lock refreshes it, in a background thread unless
    ``block_if_stale``; every caller meanwhile gets the old copy. Missing: with ``block_if_missing`` the
    lock holder computes while the others wait for its copy (no stampede); without, a background refresh
    starts and the answer is ``None``. A blocked caller waits at most ``wait_seconds`` (default
    ``lock_seconds``) for another's copy. ``compute()``'s value must hold ``"at"`` (epoch seconds).
    """
    copy = _read(client, key)
    if copy is not None and time.time() - copy["at"] <= fresh_seconds:
        return copy
    block = block_if_missing if copy is None else block_if_stale
    lock = client.lock(_key(key + ":lock"), timeout=lock_seconds, blocking=False, thread_local=False)
    if lock.acquire():
        refresh = functools.partial(_refresh, client, key, lock, compute=compute, keep_seconds=keep_seconds)
        if block:
            return refresh()
        with _refreshing_lock:
            if key in _refreshing:
                return copy
            _refreshing.add(key)
        threading.Thread(target=_refresh_in_background, args=(key, refresh), name=f"refresh {key}", daemon=True).start()
        return copy
    if block:
        # Someone else is computing it: wait for their copy rather than compute it too.
        deadline = time.monotonic() + (lock_seconds if wait_seconds is None else wait_seconds)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            newer = _read(client, key)
            if newer is not None and (copy is None or newer["at"] > copy["at"]):
                return newer
    return copy


def _refresh(
    client: redis.Redis, key: str, lock: Any, *, compute: Callable[[], dict[str, Any]], keep_seconds: float
) -> dict[str, Any]:
    try:
        value = compute()
        client.set(_key(key), json.dumps(value), ex=max(1, math.ceil(keep_seconds)))
        return value
    finally:
        # Expired meanwhile (and maybe taken by another): then it is not ours to free.
        with contextlib.suppress(redis.RedisError):
            lock.release()


def _refresh_in_background(key: str, refresh: Callable[[], Any]) -> None:
    try:
        refresh()
    except Exception:  # a thread has no caller to tell; the next refresh tries again
        logger.exception("could not refresh %s", key)
    finally:
        with _refreshing_lock:
            _refreshing.discard(key)
        connections.close_all()  # this thread's database connections, if it opened any


# --- small helpers -------------------------------------------------------------------------------------------


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _datetime(epoch_seconds: float | None) -> datetime | None:
    return None if epoch_seconds is None else datetime.fromtimestamp(epoch_seconds, UTC)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
