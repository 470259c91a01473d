"""A running clone has a state of its own: a second copy of the same retry message does not run beside it."""

from __future__ import annotations

from queueing.lifecycle import moves, runners
from queueing.models import FailedJob


def _job(running_on: str) -> FailedJob:
    return FailedJob(status=FailedJob.Status.RETRYING, running_on=running_on)


def _mark(host: str = "node-a", pid: int = 100, attempt: int = 0) -> str:
    return runners.runner_mark(host=host, pid=pid, attempt=attempt)


def alive(pid: int) -> bool:
    return True


def dead(pid: int) -> bool:
    return False


def test_the_first_copy_of_a_clone_starts() -> None:
    assert not runners.held_by_another_copy(_job(""), runner=_mark(), alive=alive)


def test_a_second_copy_of_the_same_message_is_refused_while_the_first_runs() -> None:
    job = _job(_mark(pid=100))
    assert runners.held_by_another_copy(job, runner=_mark(pid=200), alive=alive)


def test_a_second_copy_on_another_host_is_refused_the_lease_takes_the_job_back_if_the_first_died() -> None:
    job = _job(_mark(host="node-a"))
    assert runners.held_by_another_copy(job, runner=_mark(host="node-b"), alive=dead)


def test_a_copy_whose_marking_process_on_this_host_died_takes_over() -> None:
    job = _job(_mark(pid=100))
    assert not runners.held_by_another_copy(job, runner=_mark(pid=200), alive=dead)


def test_the_clones_next_immediate_retry_takes_over_the_mark() -> None:
    job = _job(_mark(pid=100, attempt=0))
    assert not runners.held_by_another_copy(job, runner=_mark(pid=200, attempt=1), alive=alive)


def test_a_copy_finds_its_own_mark_and_runs() -> None:
    assert not runners.held_by_another_copy(_job(_mark()), runner=_mark(), alive=alive)


def test_ending_a_claim_clears_the_running_mark() -> None:
    assert moves.NO_CLAIM["running_on"] == ""
