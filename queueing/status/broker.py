"""The broker, as the status sees it: how many messages wait on each queue, and the Redis it talks to.

``Broker`` is the one question the report asks of the transport (``queue_lengths``); ``RedisBroker`` answers
it for kombu's Redis transport (``LLEN`` of the queue's list and of its priority lists,
``<queue>\\x06\\x16<step>``, in one pipelined round trip). Another transport (RabbitMQ: a passive
``queue_declare`` per queue) is one more class here and one more branch in ``current_broker()``.

The counters (``counter_store.py``) and the shared copies (``cache.py``) live in the broker's Redis too, reached
through ``broker_redis()``: short timeouts, no retries. Every Redis call of the status goes through
``answered()``, which turns a Redis error into ``Unavailable("the broker did not answer: …")``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry

from queueing import registry
from queueing.conf import get_settings


class Unavailable(Exception):
    """A source of figures cannot answer; the message says why, for the ``unavailable`` list."""


def describe(exc: BaseException) -> str:
    """``TimeoutError: Timeout reading from socket``: the class, and the message when there is one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextlib.contextmanager
def answered() -> Iterator[None]:
    """Around a call to the broker's Redis: a Redis error becomes ``Unavailable`` naming it."""
    try:
        yield
    except redis.RedisError as exc:
        raise Unavailable(f"the broker did not answer: {describe(exc)}") from exc


class Broker(Protocol):
    """What the status report asks of the broker."""

    def queue_lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting on each of ``queues`` (0 for one that does not exist). ``Unavailable`` if the
        broker does not answer within ``STATUS_BROKER_TIMEOUT_SECONDS``."""
        ...


@dataclass(frozen=True)
class RedisBroker:
    """kombu's Redis transport: a queue is a list, plus one list per priority step."""

    client: redis.Redis

    def queue_lengths(self, queues: Sequence[str]) -> dict[str, int]:
        steps = _layout().priority_steps
        with answered(), self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for step in steps:
                    pipe.llen(key(f"{queue}{RedisChannel.sep}{step}" if step else queue))
            lengths = pipe.execute()
        return {queue: sum(lengths[i * len(steps) : (i + 1) * len(steps)]) for i, queue in enumerate(queues)}


def current_broker() -> Broker:
    """The broker of the Celery app. ``Unavailable`` for a transport the status cannot read yet."""
    return RedisBroker(broker_redis())


# --- the broker's Redis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    url: str
    #: kombu's ``global_keyprefix``: it prefixes its own keys with it, and so do we.
    key_prefix: str
    priority_steps: tuple[int, ...]


@functools.cache
def _layout() -> _Layout:
    """Read once from the Celery app."""
    app = registry.celery_app()
    url = app.conf.broker_url or ""
    if isinstance(url, list | tuple):
        url = url[0]
    options = app.conf.broker_transport_options or {}
    return _Layout(
        url=url.split(";")[0],
        key_prefix=str(options.get("global_keyprefix", "")),
        priority_steps=tuple(options.get("priority_steps", PRIORITY_STEPS)),
    )


def key(name: str) -> str:
    """A Redis key, with the broker's ``global_keyprefix``."""
    return _layout().key_prefix + name


_clients: dict[tuple[int, str, float], redis.Redis] = {}
_clients_lock = threading.Lock()


def broker_redis() -> redis.Redis:
    """A client of the broker's Redis: short timeouts, no retries. ``Unavailable`` for another transport.

    One per process (redis-py's pool is thread-safe, and rebuilt after a fork).
    """
    url = _layout().url
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise Unavailable(f"the broker is {scheme}://; these figures need the Redis transport")
    timeout = get_settings().status_broker_timeout_seconds
    client_key = (os.getpid(), url, timeout)
    with _clients_lock:
        if (client := _clients.get(client_key)) is None:
            use_ssl = registry.celery_app().conf.broker_use_ssl
            ssl = use_ssl if scheme == "rediss" and isinstance(use_ssl, dict) else {}
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                **ssl,
            )
            _clients[client_key] = client
    return client
