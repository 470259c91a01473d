"""The sweep's throttle: at most so many re-sent jobs per second, per queue. Pure: no Django, no broker.

``THROTTLE`` names the rates (``queue=jobs per second``; ``*`` for every queue not named); a queue with no
rate is not throttled. The sweep asks ``Pacer.room(queue, seconds)`` how many jobs of a queue it may still
claim in the time it has left, and calls ``Pacer.wait(queue)`` before each send, which sleeps until that
queue's next slot. Slots are spaced evenly (``1 / rate`` seconds apart), so a recovering service sees a steady
trickle, never a burst. The rate holds within one sweep; two sweeps running at once each keep it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

#: The rate of every queue that ``THROTTLE`` does not name.
ANY_QUEUE = "*"

T = TypeVar("T")


class ThrottleSyntaxError(ValueError):
    """A ``THROTTLE`` entry that is not ``queue=jobs per second``."""


def parse_rates(entries: Iterable[str]) -> dict[str, float]:
    """``["whatsapp-send=20", "*=100"]`` -> ``{"whatsapp-send": 20.0, "*": 100.0}`` (jobs per second, > 0)."""
    rates: dict[str, float] = {}
    for entry in entries:
        queue, sep, rate_text = entry.partition("=")
        queue = queue.strip()
        try:
            rate = float(rate_text) if sep and queue else math.nan
        except ValueError:
            rate = math.nan
        if not rate > 0 or math.isinf(rate):
            raise ThrottleSyntaxError(
                f"throttle entry {entry!r} is not queue=jobs per second (a number > 0); "
                "write e.g. whatsapp-send=20, or *=100 for every other queue"
            )
        rates[queue] = rate
    return rates


@dataclass
class Pacer:
    """Spaces the sends of each throttled queue ``1 / rate`` seconds apart, from the first send on."""

    rates_per_second: Mapping[str, float]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _next_slot: dict[str, float] = field(default_factory=dict)

    def rate(self, queue: str) -> float | None:
        """Jobs per second allowed for ``queue``; None: not throttled."""
        return self.rates_per_second.get(queue, self.rates_per_second.get(ANY_QUEUE))

    def room(self, queue: str, *, seconds: float) -> int | None:
        """How many more jobs of ``queue`` fit in the next ``seconds``; None: as many as there are."""
        rate = self.rate(queue)
        if rate is None:
            return None
        now = self.clock()
        first_slot = max(now, self._next_slot.get(queue, now))
        # The slots first_slot + k / rate that come before now + seconds.
        return max(0, math.ceil((now + seconds - first_slot) * rate))

    def wait(self, queue: str) -> None:
        """Sleep until ``queue`` may send its next job, and book that slot."""
        rate = self.rate(queue)
        if rate is None:
            return
        now = self.clock()
        slot = max(now, self._next_slot.get(queue, now))
        if slot > now:
            self.sleep(slot - now)
        self._next_slot[queue] = slot + 1.0 / rate

    def interleave(self, items: Sequence[T], *, queue_of: Callable[[T], str]) -> list[T]:
        """``items`` in the order their queues' next slots come up: unthrottled ones first, then merged by slot.

        So that jobs of two throttled queues go out side by side, each at its rate, not one queue after the other.
        """
        now = self.clock()
        taken: dict[str, int] = {}

        def slot(item: T) -> float:
            queue = queue_of(item)
            rate = self.rate(queue)
            if rate is None:
                return -math.inf
            taken[queue] = index = taken.get(queue, 0) + 1
            return max(now, self._next_slot.get(queue, now)) + (index - 1) / rate

        keyed = [(slot(item), position) for position, item in enumerate(items)]
        return [items[position] for _, position in sorted(keyed)]
