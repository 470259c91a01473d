"""The project's settings, with the few knobs the fault scenarios turn (``tests/faults.py``).

``FAULTS_VISIBILITY_TIMEOUT`` (seconds): the Redis visibility timeout, so that a scenario sees an unacknowledged
message come back in seconds rather than two hours. ``FAULTS_MAX_MEMORY_PER_CHILD_KB``: Celery's
``worker_max_memory_per_child``.
"""

from __future__ import annotations

import os

from project.settings import *  # noqa: F403
from project.settings import CELERY_BROKER_TRANSPORT_OPTIONS

# The scenarios shorten the visibility timeout and the lease on purpose, below the time limits, to provoke the
# very redelivery and lease expiry that the start-up checks (queueing/checks.py) exist to prevent.
SILENCED_SYSTEM_CHECKS = ["queueing.E103", "queueing.E104"]

if "FAULTS_VISIBILITY_TIMEOUT" in os.environ:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **CELERY_BROKER_TRANSPORT_OPTIONS,
        "visibility_timeout": float(os.environ["FAULTS_VISIBILITY_TIMEOUT"]),
        # kombu scans for messages past their visibility timeout every interval * throttle seconds (100 s)
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if "FAULTS_MAX_MEMORY_PER_CHILD_KB" in os.environ:
    CELERY_WORKER_MAX_MEMORY_PER_CHILD = int(os.environ["FAULTS_MAX_MEMORY_PER_CHILD_KB"])
