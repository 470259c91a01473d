"""Backoff policy for immediate retries: pure functions, no Django, no Celery.

Celery's own ``retry_backoff`` rounds its factor to a whole number of at least one second and applies full
jitter by default (which can give a 0 s retry), so ``RetryableTask`` computes its countdowns here instead.
"""

from __future__ import annotations

import random


def delay_seconds(
    *,
    retries_done: int,
    base_seconds: float,
    max_seconds: float,
    jitter: bool = False,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next immediate retry.

    ``base * 2**retries_done``, capped at ``max_seconds``: 2, 4, 8 … for a base of 2. With ``jitter`` the
    delay is drawn from the upper half, ``[d/2, d]`` ("equal jitter"), so it never collapses to zero.
    """
    if retries_done < 0:
        raise ValueError(f"retries_done must be >= 0, got {retries_done}")
    factor: int = 2**retries_done  # an int (typeshed types int ** int as Any: a negative power is a float)
    delay = min(max_seconds, base_seconds * factor)
    if jitter:
        delay = delay / 2 + (rng.uniform if rng else random.uniform)(0, delay / 2)
    return delay
