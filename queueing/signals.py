"""Worker and Beat start-up: make sure the sweep is scheduled and say that auto-retry runs, and how."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init, worker_ready

logger = logging.getLogger(__name__)


@beat_init.connect
def _schedule_sweep_when_beat_starts(sender: Any = None, **_: Any) -> None:
    from queueing.schedule import ensure_sweep_schedule

    ensure_sweep_schedule()


@worker_ready.connect
def _log_auto_retry_started(sender: Any = None, **_: Any) -> None:
    from queueing import services

    policy = services.current_policy()
    logger.info("auto-retry started: %s", services.describe(policy))
