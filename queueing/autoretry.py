"""The automatic retry policy in force: the settings, changed at run time by ``start_auto_retry``."""

from __future__ import annotations

import json
import time
from typing import Any

from queueing.conf import get_settings
from queueing.models import AutoRetryConfig
from queueing.policy import RetryPolicy

__all__ = ["RetryPolicy", "current_policy", "describe"]


#: Seconds a process may reuse the policy it last read (0: read it every time). Workers set it
#: (``WORKER_POLICY_MAX_AGE_SECONDS``, project/celery.py): a recorded failure then skips one of its queries
#: (docs/benchmarks.md), and a ``start_auto_retry`` reaches them within that time.
policy_max_age_seconds = 0.0
_last_read: tuple[float, RetryPolicy] | None = None


def current_policy() -> RetryPolicy:
    global _last_read
    if policy_max_age_seconds and _last_read and time.monotonic() - _last_read[0] < policy_max_age_seconds:
        return _last_read[1]
    policy = _read_policy()
    _last_read = (time.monotonic(), policy)
    return policy


def _read_policy() -> RetryPolicy:
    conf = get_settings()
    row = AutoRetryConfig.objects.filter(pk=1).first()

    def pick(override: Any, default: Any) -> Any:
        return default if override is None else override

    return RetryPolicy(
        max_retries=pick(row and row.max_retries, conf.max_retries),
        retry_delay_seconds=pick(row and row.retry_delay_seconds, conf.retry_delay_seconds),
        check_interval_seconds=pick(row and row.check_interval_seconds, conf.check_interval_seconds),
    )


def describe(policy: RetryPolicy) -> str:
    conf = get_settings()
    return json.dumps(
        {
            **policy.as_dict(),
            "immediate_retries": conf.immediate_retries,
            "backoff_base_seconds": conf.backoff_base_seconds,
            "backoff_jitter": conf.backoff_jitter,
            "lease_seconds": conf.lease_seconds,
            "batch_size": conf.batch_size,
        }
    )
