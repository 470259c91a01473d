"""The periodic replay of the spool (``queueing/spool.py``) in each worker's main process: a thread that replays
it every ``SPOOL_REPLAY_INTERVAL_SECONDS`` (``start_replayer``, started by ``signals.py`` when a worker is ready).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from queueing import spool
from queueing.conf import get_settings

logger = logging.getLogger(__name__)


class Replayer(threading.Thread):
    """Replays the spool every ``SPOOL_REPLAY_INTERVAL_SECONDS`` in a worker's main process, then calls
    ``after_each`` (the worker tells the status its spooled figure)."""

    def __init__(self, interval_seconds: float, *, after_each: Callable[[], None] | None = None) -> None:
        super().__init__(name="queueing spool replay", daemon=True)
        self.interval_seconds = interval_seconds
        self.after_each = after_each
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connection

        while True:
            try:
                spool.replay()
                if self.after_each is not None:
                    self.after_each()
            except Exception:
                logger.exception("spool: replay failed; trying again in %ss", self.interval_seconds)
            finally:
                connection.close()
            if self.stopping.wait(self.interval_seconds):
                return


_replayer: Replayer | None = None


def start_replayer(*, after_each: Callable[[], None] | None = None) -> None:
    """Replay once now, then every ``SPOOL_REPLAY_INTERVAL_SECONDS`` (once per process)."""
    global _replayer
    if _replayer is None or not _replayer.is_alive():
        _replayer = Replayer(get_settings().spool_replay_interval_seconds, after_each=after_each)
        _replayer.start()
