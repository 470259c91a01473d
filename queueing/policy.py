"""The automatic retry policy: what is in force, as a plain value (no Django here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """The automatic retry policy in force: settings, changed by ``start_auto_retry`` at run time."""

    max_retries: int
    retry_delay_seconds: float
    check_interval_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "check_interval_seconds": self.check_interval_seconds,
        }
