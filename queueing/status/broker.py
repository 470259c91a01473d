"""The broker, as the status sees it: how many messages wait on each queue, and the Redis the status keeps its
counters and shared copies in.

``Broker`` is the one question the report asks of the transport (``queue_lengths``):

- ``RedisBroker`` (``redis://``, ``rediss://``, ``sentinel://``): ``LLEN`` of the queue's list and of its priority
  lists, ``<queue>\\x06\\x16<step>``, in one pipelined round trip.
- ``AmqpBroker`` (``amqp://``, RabbitMQ): a passive ``queue_declare`` per queue on one short-lived connection;
  its ``message_count`` is what waits (ready, not yet delivered to a worker), as ``LLEN`` is on Redis. Needs
  nothing but the AMQP port (no management plugin).

The counters (``counter_store.py``) and the shared copies (``cache.py``) live in a Redis reached through
``broker_redis()`` (short timeouts, no retries): the broker's own when the broker is Redis (a Sentinel URL: the
master the sentinels name), else ``REDIS_URL``; with ``REDIS_URL`` empty there is none and those figures are
unavailable, with that reason. Every Redis call of the status goes through ``answered()``, which turns a Redis
error into ``Unavailable("the broker did not answer: …")`` (or "the status Redis (REDIS_URL) did not answer").
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import redis
from django.conf import settings
from kombu import Connection
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

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
        who = "the broker" if _layout().scheme in REDIS_SCHEMES else "the status Redis (REDIS_URL)"
        raise Unavailable(f"{who} did not answer: {describe(exc)}") from exc


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


@dataclass(frozen=True)
class AmqpBroker:
    """RabbitMQ: ``message_count`` of a passive ``queue_declare`` (a queue that does not exist holds 0)."""

    url: str
    timeout_seconds: float
    ssl: bool | dict[str, Any] = False

    def queue_lengths(self, queues: Sequence[str]) -> dict[str, int]:
        t = self.timeout_seconds
        connection = Connection(
            self.url,
            connect_timeout=t,
            ssl=self.ssl,
            heartbeat=0,
            transport_options={"read_timeout": t, "write_timeout": t},
        )
        lengths: dict[str, int] = {}
        errors: tuple[type[Exception], ...] = (
            *cast(tuple[type[Exception], ...], connection.connection_errors),
            OSError,
        )
        try:
            with connection:
                # One attempt: connect() would retry once after 2 s; a broker that does not answer costs one timeout.
                connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
                channel: Any = connection.channel()
                channel_errors = cast(tuple[type[Exception], ...], connection.channel_errors)
                for queue in queues:
                    try:
                        lengths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                    except channel_errors:  # 404 NOT_FOUND closes the channel: open another
                        lengths[queue] = 0
                        channel = connection.channel()
        except errors as exc:
            raise Unavailable(f"the broker did not answer: {describe(exc)}") from exc
        return lengths


#: kombu transports whose messages live in Redis lists.
REDIS_SCHEMES = ("redis", "rediss", "sentinel")
#: kombu transports that speak AMQP 0-9-1 to RabbitMQ.
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def redis_is_broker() -> bool:
    """The status Redis is the broker itself (one server: when it does not answer, neither does the broker)."""
    return _layout().scheme in REDIS_SCHEMES


def current_broker() -> Broker:
    """The broker of the Celery app. ``Unavailable`` for a transport the status cannot read."""
    layout = _layout()
    if layout.scheme in REDIS_SCHEMES:
        return RedisBroker(broker_redis())
    if layout.scheme in AMQP_SCHEMES:
        use_ssl = registry.celery_app().conf.broker_use_ssl
        ssl = use_ssl if isinstance(use_ssl, bool | dict) else False
        return AmqpBroker(layout.url, get_settings().status_broker_timeout_seconds, ssl=ssl)
    raise Unavailable(
        f"the broker is {layout.scheme}://; the status reads the queue lengths of Redis and RabbitMQ (amqp://) only"
    )


# --- the broker's Redis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    #: The broker's first URL (a failover list ``a;b`` is read at its first), and all of them.
    url: str
    urls: tuple[str, ...]
    scheme: str
    #: kombu's ``global_keyprefix``: it prefixes its own keys with it, and so do we.
    key_prefix: str
    priority_steps: tuple[int, ...]
    #: Sentinel's ``master_name`` transport option.
    master_name: str


@functools.cache
def _layout() -> _Layout:
    """Read once from the Celery app."""
    app = registry.celery_app()
    url = app.conf.broker_url or ""
    if isinstance(url, list | tuple):
        url = url[0]
    options = app.conf.broker_transport_options or {}
    urls = tuple(part.strip() for part in url.split(";") if part.strip())
    scheme = urlsplit(urls[0] if urls else "").scheme.split("+")[0].lower()
    return _Layout(
        url=urls[0] if urls else "",
        urls=urls,
        scheme=scheme,
        master_name=str(options.get("master_name", "")),
        key_prefix=str(options.get("global_keyprefix", "")),
        priority_steps=tuple(options.get("priority_steps", PRIORITY_STEPS)),
    )


def key(name: str) -> str:
    """A Redis key, with the broker's ``global_keyprefix``."""
    return _layout().key_prefix + name


_clients: dict[tuple[int, str, float], redis.Redis] = {}
_clients_lock = threading.Lock()


def status_redis_url() -> str:
    """The URL of the status's Redis: the broker's when it is Redis, else ``REDIS_URL`` ("" for none)."""
    layout = _layout()
    if layout.scheme in REDIS_SCHEMES:
        return layout.url
    return str(getattr(settings, "REDIS_URL", "") or "")


def broker_redis() -> redis.Redis:
    """A client of the status's Redis (the broker's when it is Redis, else ``REDIS_URL``): short timeouts, no
    retries. ``Unavailable`` when there is none.

    One per process (redis-py's pool is thread-safe, and rebuilt after a fork).
    """
    layout = _layout()
    url = status_redis_url()
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise Unavailable(
            f"the broker is {layout.scheme}:// and REDIS_URL is {'empty' if not url else scheme + '://'}: the "
            "counters and shared copies of the status need a Redis; set REDIS_URL (docs/brokers.md)"
        )
    timeout = get_settings().status_broker_timeout_seconds
    client_key = (os.getpid(), url, timeout)
    with _clients_lock:
        if (client := _clients.get(client_key)) is None:
            client = _sentinel_master(layout, timeout) if scheme == "sentinel" else _redis_client(url, timeout)
            _clients[client_key] = client
    return client


def _redis_client(url: str, timeout: float) -> redis.Redis:
    use_ssl = registry.celery_app().conf.broker_use_ssl
    ssl = use_ssl if urlsplit(url).scheme == "rediss" and isinstance(use_ssl, dict) else {}
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **ssl
    )


def _sentinel_master(layout: _Layout, timeout: float) -> redis.Redis:
    """The master that the broker's sentinels name (``master_name`` transport option), as kombu finds it."""
    if not layout.master_name:
        raise Unavailable("the broker is sentinel:// without the 'master_name' transport option")
    parts = [urlsplit(url) for url in layout.urls]
    first = parts[0]
    db = int(first.path.strip("/") or 0)
    sentinel = Sentinel(
        [(part.hostname or "127.0.0.1", part.port or 26379) for part in parts],
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    master: redis.Redis = sentinel.master_for(
        layout.master_name, db=db, username=first.username, password=first.password
    )
    return master
