"""Shared, short-lived copies in the broker's Redis (stale-while-revalidate), for the figures that are too
dear to compute per request: the workers' report (a broadcast) and the job counts (a grouped query).

A copy is a typed record (a dataclass with ``at``, epoch seconds, when it was computed), stored as JSON and
validated back into its type on every read (pydantic's ``TypeAdapter``), so no untyped dict leaves this
module. The refresh is shared by all processes: one takes a Redis lock and computes, the others answer the
previous copy (or wait for the new one, when asked to).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pydantic
import redis
from django.db import connections

from queueing.status.broker import key

logger = logging.getLogger(__name__)


class Timestamped(Protocol):
    @property
    def at(self) -> float: ...


T = TypeVar("T", bound=Timestamped)

#: Keys being refreshed by a thread of this process (at most one thread per key, whatever the Redis lock does).
_refreshing: set[str] = set()
_refreshing_lock = threading.Lock()


@functools.cache
def _adapter(kind: type[Any]) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(kind)


def read(client: redis.Redis, name: str, kind: type[T]) -> T | None:
    """The copy kept under ``name``, or ``None`` (also for one that is not a ``kind``: it is replaced at the
    next refresh). A Redis error is raised as it is (see ``broker.answered``)."""
    raw = client.get(key(name))
    if not raw:
        return None
    try:
        value: T = _adapter(kind).validate_json(raw)
    except pydantic.ValidationError as exc:
        logger.warning("the copy under %s is not a %s; computing it again: %s", name, kind.__name__, exc)
        return None
    return value


def shared_copy(
    client: redis.Redis,
    name: str,
    kind: type[T],
    *,
    fresh_seconds: float,
    keep_seconds: float,
    lock_seconds: float,
    compute: Callable[[], T],
    block_if_missing: bool,
    block_if_stale: bool = False,
    wait_seconds: float | None = None,
) -> T | None:
    """A copy of ``compute()``'s value kept in Redis, refreshed at most once per ``fresh_seconds`` by all
    processes together.

    Out of date: the one caller that takes the Redis lock refreshes it, in a background thread unless
    ``block_if_stale``; every caller meanwhile gets the old copy. Missing: with ``block_if_missing`` the
    lock holder computes while the others wait for its copy (no stampede); without, a background refresh
    starts and the answer is ``None``. A blocked caller waits at most ``wait_seconds`` (default
    ``lock_seconds``) for another's copy. The copy expires ``keep_seconds`` after it was written.
    """
    copy = read(client, name, kind)
    if copy is not None and time.time() - copy.at <= fresh_seconds:
        return copy
    block = block_if_missing if copy is None else block_if_stale
    lock = client.lock(key(name + ":lock"), timeout=lock_seconds, blocking=False, thread_local=False)
    if lock.acquire():
        refresh = functools.partial(_refresh, client, name, kind, lock, compute=compute, keep_seconds=keep_seconds)
        if block:
            return refresh()
        with _refreshing_lock:
            if name in _refreshing:
                return copy
            _refreshing.add(name)
        threading.Thread(
            target=_refresh_in_background, args=(name, refresh), name=f"refresh {name}", daemon=True
        ).start()
        return copy
    if block:
        # Someone else is computing it: wait for their copy rather than compute it too.
        deadline = time.monotonic() + (lock_seconds if wait_seconds is None else wait_seconds)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            newer = read(client, name, kind)
            if newer is not None and (copy is None or newer.at > copy.at):
                return newer
    return copy


def _refresh(
    client: redis.Redis,
    name: str,
    kind: type[T],
    lock: Any,
    *,
    compute: Callable[[], T],
    keep_seconds: float,
) -> T:
    try:
        value = compute()
        client.set(key(name), _adapter(kind).dump_json(value), ex=max(1, math.ceil(keep_seconds)))
        return value
    finally:
        # Expired meanwhile (and maybe taken by another): then it is not ours to free.
        with contextlib.suppress(redis.RedisError):
            lock.release()


def _refresh_in_background(name: str, refresh: Callable[[], Any]) -> None:
    try:
        refresh()
    except Exception:  # a thread has no caller to tell; the next refresh tries again
        logger.exception("could not refresh %s", name)
    finally:
        with _refreshing_lock:
            _refreshing.discard(name)
        connections.close_all()  # this thread's database connections, if it opened any
