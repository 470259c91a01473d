"""Where a failing job goes, and why: the pure retry policy (no database, no broker, no Django)."""

from __future__ import annotations

import pytest

from queueing.policy import Reason, RetryPolicy, after_failure, after_lost_clone, out_of_automatic_retries

POLICY = RetryPolicy(max_retries=3, retry_delay_seconds=300, check_interval_seconds=60)


def test_a_first_failure_waits_for_the_retry_delay() -> None:
    verdict = after_failure(permanent=False, retry_count=0, from_dead=False, policy=POLICY)

    assert (verdict.dead, verdict.reason, verdict.text, verdict.retry_in_seconds) == (False, Reason.NONE, "", 300)


def test_a_failure_with_retries_left_is_failed_again() -> None:
    assert not after_failure(permanent=False, retry_count=2, from_dead=False, policy=POLICY).dead


def test_a_failure_after_the_last_automatic_retry_is_dead_with_the_count() -> None:
    verdict = after_failure(permanent=False, retry_count=3, from_dead=False, policy=POLICY)

    assert (verdict.dead, verdict.reason, verdict.retry_in_seconds) == (True, Reason.RETRIES_USED_UP, None)
    assert verdict.text == "automatic retries used up (3 of 3)"


def test_a_permanent_error_is_dead_at_once() -> None:
    verdict = after_failure(permanent=True, retry_count=0, from_dead=False, policy=POLICY)

    assert (verdict.dead, verdict.reason) == (True, Reason.PERMANENT_ERROR)
    assert "permanent" in verdict.text


def test_no_automatic_retries_at_all_means_every_failure_is_dead() -> None:
    policy = RetryPolicy(max_retries=0, retry_delay_seconds=300, check_interval_seconds=60)

    assert out_of_automatic_retries(retry_count=0, max_retries=0)
    assert (
        after_failure(permanent=False, retry_count=0, from_dead=False, policy=policy).reason == Reason.RETRIES_USED_UP
    )


def test_a_dead_job_retried_by_hand_that_fails_again_is_dead_again_whatever_its_retries_left() -> None:
    verdict = after_failure(permanent=False, retry_count=0, from_dead=True, policy=POLICY)

    assert (verdict.dead, verdict.reason) == (True, Reason.FAILED_AFTER_OPERATOR_RETRY)


@pytest.mark.parametrize(("retry_count", "from_dead", "dead"), [(1, False, False), (3, False, True), (0, True, True)])
def test_a_clone_that_started_and_vanished_used_up_its_retry(retry_count: int, from_dead: bool, dead: bool) -> None:
    verdict = after_lost_clone(
        started_at="2026-01-01T00:00:00", retry_count=retry_count, from_dead=from_dead, policy=POLICY
    )

    assert (verdict.dead, verdict.reason) == (dead, Reason.LEASE_EXPIRED)
    assert verdict.text == "lease expired: the retry started at 2026-01-01T00:00:00 and never finished"
    assert verdict.retry_in_seconds == (None if dead else 300)


def test_the_models_reasons_are_the_policys_reasons() -> None:
    from queueing.models import FailedJob

    assert FailedJob.Reason.values == [reason.value for reason in Reason]
