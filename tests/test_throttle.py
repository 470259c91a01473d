"""The throttle's pacing, with a fake clock: no Django, no broker."""

from __future__ import annotations

import pytest

from queueing.throttle import Pacer, ThrottleSyntaxError, parse_rates


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def pacer(rates: dict[str, float]) -> tuple[Pacer, FakeClock]:
    clock = FakeClock()
    return Pacer(rates, clock=clock, sleep=clock.sleep), clock


def test_rates_are_read_as_queue_equals_jobs_per_second() -> None:
    assert parse_rates(["whatsapp-send=20", " * = 2.5 "]) == {"whatsapp-send": 20.0, "*": 2.5}


@pytest.mark.parametrize("entry", ["whatsapp-send", "whatsapp-send=", "=5", "q=0", "q=-1", "q=fast", "q=inf"])
def test_a_rate_that_is_not_a_positive_number_is_refused_with_an_example(entry: str) -> None:
    with pytest.raises(ThrottleSyntaxError, match="whatsapp-send=20"):
        parse_rates([entry])


def test_sends_of_a_throttled_queue_are_spaced_one_over_the_rate_apart() -> None:
    throttle, clock = pacer({"q": 4.0})
    times = []
    for _ in range(5):
        throttle.wait("q")
        times.append(clock.now)
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_queue_without_a_rate_never_waits_unless_every_queue_has_one() -> None:
    throttle, clock = pacer({"q": 1.0})
    for _ in range(3):
        throttle.wait("other")
    assert clock.slept == []
    assert throttle.room("other", seconds=10) is None
    assert pacer({"*": 1.0})[0].room("other", seconds=10) == 10


def test_room_counts_the_slots_left_before_the_deadline() -> None:
    throttle, _ = pacer({"q": 10.0})
    assert throttle.room("q", seconds=1.0) == 10
    for _ in range(4):
        throttle.wait("q")  # slots at 0.0, 0.1, 0.2, 0.3 (the clock is at 0.3 now); the next is 0.4
    assert throttle.room("q", seconds=0.7) == 6  # 0.4 … 0.9, before 1.0
    assert throttle.room("q", seconds=0) == 0


def test_two_throttled_queues_are_interleaved_by_their_slots() -> None:
    throttle, _ = pacer({"slow": 1.0, "fast": 2.0})
    jobs = ["slow-1", "slow-2", "fast-1", "fast-2", "fast-3", "free-1"]
    ordered = throttle.interleave(jobs, queue_of=lambda job: job.split("-")[0])
    # free first (no rate); then by slot: slow 0, 1; fast 0, 0.5, 1.0 (ties keep their order)
    assert ordered == ["free-1", "slow-1", "fast-1", "fast-2", "slow-2", "fast-3"]
