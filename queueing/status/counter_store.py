"""The counters store: what the workers count as it happens, kept in the status Redis (the broker's own when the
broker is Redis; beside RabbitMQ, ``REDIS_URL``; none when that is empty: then nothing is counted and the
figures say why, see ``broker.broker_redis``).

``COUNTERS``, one Redis hash each (field = queue), added to by the signal handlers
(``queueing/signals.py``): ``completed`` is read by the status report, all four by ``/metrics``. The sweep's
durations are a histogram in one more hash (``le:<bound>``, ``count``, ``sum``). Writing never raises (a
metric must not fail a task); reading raises ``Unavailable`` when Redis does not answer.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from queueing.status.broker import Unavailable, answered, broker_redis, describe, key

logger = logging.getLogger(__name__)

#: Counters kept in Redis by the signal handlers, one hash each, field = queue.
COUNTERS = ("completed", "failed", "retried", "resolved")
#: Upper bounds (seconds) of the sweep-duration histogram's buckets.
SWEEP_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_SWEEP_KEY = "queueing:sweep:duration"


def _text(field: bytes | str) -> str:
    """A hash field as text (the client answers bytes: ``decode_responses`` is off)."""
    return field.decode() if isinstance(field, bytes) else field


def _counter_key(counter: str) -> str:
    return key(f"queueing:{counter}")


#: Said once per process: there is no status Redis (the broker is not Redis and REDIS_URL is empty).
_no_store_said = False


def count(counter: str, queue: str, *, by: int = 1) -> None:
    """Add to one of ``COUNTERS`` for ``queue``. Never raises: a metric must not fail a task."""
    global _no_store_said
    try:
        client = broker_redis()
    except Unavailable as exc:  # a setting, not an outage: said once, not once per task
        if not _no_store_said:
            _no_store_said = True
            logger.warning("the counters are not kept: %s", exc)
        return
    try:
        client.hincrby(_counter_key(counter), queue, by)
    except redis.RedisError as exc:
        logger.warning("could not count %s for queue %s: %s", counter, queue, describe(exc))


def counters() -> dict[str, dict[str, int]]:
    """``{counter: {queue: n}}`` for every one of ``COUNTERS`` (``Unavailable`` if Redis does not answer)."""
    client = broker_redis()
    with answered(), client.pipeline(transaction=False) as pipe:
        for counter in COUNTERS:
            pipe.hgetall(_counter_key(counter))
        replies = pipe.execute()
    return {
        counter: {_text(field): int(n) for field, n in reply.items()}
        for counter, reply in zip(COUNTERS, replies, strict=True)
    }


def counter(counter: str, queues: Sequence[str], *, client: redis.Redis | None = None) -> dict[str, int]:
    """One counter of ``queues`` (0 for a queue never counted). ``Unavailable`` if Redis does not answer."""
    with answered():
        values = (client or broker_redis()).hmget(_counter_key(counter), list(queues))
    return {queue: int(n or 0) for queue, n in zip(queues, values, strict=True)}


@dataclass(frozen=True, kw_only=True)
class SweepDurations:
    """The sweep-duration histogram: cumulative ``(le, count)`` buckets, ``+Inf`` last."""

    buckets: list[tuple[str, int]]
    count: int
    sum_seconds: float


def record_sweep_duration(seconds: float) -> None:
    """Add one sweep's duration to the histogram kept in Redis. Never raises."""
    i = bisect.bisect_left(SWEEP_DURATION_BUCKETS, seconds)
    bucket = SWEEP_DURATION_BUCKETS[i] if i < len(SWEEP_DURATION_BUCKETS) else math.inf
    try:
        with broker_redis().pipeline(transaction=False) as pipe:
            pipe.hincrby(key(_SWEEP_KEY), f"le:{bucket}", 1)
            pipe.hincrby(key(_SWEEP_KEY), "count", 1)
            pipe.hincrbyfloat(key(_SWEEP_KEY), "sum", seconds)
            pipe.execute()
    except (Unavailable, redis.RedisError) as exc:
        logger.warning("could not record the sweep's duration: %s", describe(exc))


def sweep_durations() -> SweepDurations:
    """The histogram as recorded so far (``Unavailable`` if Redis does not answer)."""
    client = broker_redis()
    with answered():
        raw = {_text(k): v for k, v in client.hgetall(key(_SWEEP_KEY)).items()}
    buckets, running = [], 0
    for bound in (*SWEEP_DURATION_BUCKETS, math.inf):
        running += int(raw.get(f"le:{bound}", 0))
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return SweepDurations(buckets=buckets, count=int(raw.get("count", 0)), sum_seconds=float(raw.get("sum", 0.0)))
