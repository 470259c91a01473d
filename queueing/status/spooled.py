"""The ``spooled`` figure: failures waiting in a worker host's local spool (``queueing/spool.py``).

Each worker publishes its host's count every ``SPOOL_REPLAY_INTERVAL_SECONDS`` (a broker key that expires
after three intervals, so a host that went away stops being reported); the report adds the answering host's
own count, read from its disk, so that the figure is there even when the broker is not.
"""

from __future__ import annotations

import logging
from typing import Any

from queueing import spool
from queueing.conf import get_settings
from queueing.status.broker import Unavailable, broker_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "queueing:spooled:"


def publish_spooled_figure() -> None:
    """Tell the status how many failures wait in this host's spool. Never raises for a broker that is down."""
    ttl = max(60, int(3 * get_settings().spool_replay_interval_seconds))
    errors: tuple[type[BaseException], ...] = (*spool.BROKER_ERRORS, Unavailable)
    try:
        broker_redis().set(f"{KEY_PREFIX}{spool.host()}", spool.pending(), ex=ttl)
    except errors as exc:  # the next interval tells it
        logger.debug("spool: could not publish the spooled figure (%r)", exc)


def spooled_figures(client: Any | None) -> dict[str, int]:
    """Host -> spooled failures: what each worker host published (``client``: the broker's Redis, ``None``
    when it is down) and this host's own spool."""
    found: dict[str, int] = {}
    if client is not None:
        try:
            for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=100):
                name = key.decode() if isinstance(key, bytes) else str(key)
                value = client.get(key)
                if value is not None:
                    found[name[len(KEY_PREFIX) :]] = int(value)
        except spool.BROKER_ERRORS as exc:
            logger.debug("spool: could not read the spooled figures (%r)", exc)
    found[spool.host()] = spool.pending()
    return found
