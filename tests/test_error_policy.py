"""The error policy: what each kind of error gets (pure, no database, no broker), and where it is declared."""

from __future__ import annotations

import pickle
import random
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from messaging.gateway import GatewayRefused, GatewayUnavailable, InvalidRecipient, SessionNotFound
from messaging.policy import whatsapp_error_policy
from messaging.tasks import send_whatsapp_message
from queueing.exceptions import PermanentError, TransientError
from queueing.policy import (
    ClassifiedError,
    ErrorKind,
    ErrorPolicy,
    HintLimits,
    OnError,
    Reason,
    RetryPolicy,
    after_failure,
    classify,
    deferral_seconds,
    retry_after_of,
)
from tests import tasks

POLICY = RetryPolicy(max_retries=3, retry_delay_seconds=300, check_interval_seconds=60)
EXACT = HintLimits(max_seconds=3600, jitter_ratio=0)
NO_RULES = ErrorPolicy()


class Busy(Exception):
    pass


# --- classify: the kinds -----------------------------------------------------------------------------------


def test_an_error_no_rule_names_is_transient_retried_at_once_then_after_the_retry_delay() -> None:
    error = classify(RuntimeError("boom"), NO_RULES, limits=EXACT)

    assert error == ClassifiedError(kind=ErrorKind.TRANSIENT, retry_now=True)
    verdict = after_failure(error=error, retry_count=0, from_dead=False, policy=POLICY)
    assert (verdict.dead, verdict.reason, verdict.retry_in_seconds) == (False, Reason.NONE, 300)


def test_a_permanent_error_is_dead_at_once_without_immediate_retries() -> None:
    error = classify(PermanentError("no such user"), NO_RULES, limits=EXACT)

    assert (error.kind, error.retry_now) == (ErrorKind.PERMANENT, False)
    verdict = after_failure(error=error, retry_count=0, from_dead=False, policy=POLICY)
    assert (verdict.dead, verdict.reason) == (True, Reason.PERMANENT_ERROR)
    assert verdict.text.startswith("permanent error (PermanentError)")


def test_a_transient_error_with_a_retry_after_is_a_deferral_due_when_the_server_said() -> None:
    error = classify(TransientError("busy", retry_after=timedelta(seconds=90)), NO_RULES, limits=EXACT)

    assert (error.kind, error.retry_now, error.retry_after_seconds, error.delay_seconds) == (
        ErrorKind.DEFERRED,
        True,
        90,
        90,
    )
    verdict = after_failure(error=error, retry_count=2, from_dead=False, policy=POLICY)
    assert (verdict.dead, verdict.reason, verdict.retry_in_seconds) == (False, Reason.SERVER_DEFERRED, 90)
    assert "asked to wait 90 s (Retry-After)" in verdict.text


def test_a_deferral_is_never_dead_for_want_of_retries_when_its_retry_was_given_back() -> None:
    deferred = classify(TransientError("busy", retry_after=5), NO_RULES, limits=EXACT)

    # retry_count is the count with the deferred retry given back: below the limit, however often it happened
    assert not after_failure(error=deferred, retry_count=2, from_dead=False, policy=POLICY).dead
    off = RetryPolicy(max_retries=0, retry_delay_seconds=300, check_interval_seconds=60)
    assert after_failure(error=deferred, retry_count=0, from_dead=False, policy=off).reason == Reason.RETRIES_USED_UP


def test_a_deferral_of_an_operators_retry_of_a_dead_job_is_dead_again() -> None:
    deferred = classify(TransientError("busy", retry_after=5), NO_RULES, limits=EXACT)

    verdict = after_failure(error=deferred, retry_count=0, from_dead=True, policy=POLICY)

    assert (verdict.dead, verdict.reason) == (True, Reason.FAILED_AFTER_OPERATOR_RETRY)


def test_a_rule_can_give_an_error_its_own_delay_without_immediate_retries() -> None:
    policy = ErrorPolicy.of({Busy: OnError.later(delay_seconds=900, label="busy")})

    error = classify(Busy(), policy, limits=EXACT)

    assert (error.kind, error.retry_now, error.delay_seconds) == (ErrorKind.TRANSIENT, False, 900)
    verdict = after_failure(error=error, retry_count=0, from_dead=False, policy=POLICY)
    assert (verdict.reason, verdict.retry_in_seconds) == (Reason.POLICY_DELAY, 900)
    assert verdict.text == "busy: retried automatically after 900 s (the task's error policy)"


def test_a_rule_delay_still_uses_up_automatic_retries() -> None:
    error = classify(Busy(), ErrorPolicy.of({Busy: OnError.later(delay_seconds=900)}), limits=EXACT)

    assert after_failure(error=error, retry_count=3, from_dead=False, policy=POLICY).reason == Reason.RETRIES_USED_UP


def test_a_rule_can_retry_a_permanent_error_subclass_and_kill_a_transient_one() -> None:
    class Softer(PermanentError):
        pass

    policy = ErrorPolicy.of({Softer: OnError(), Busy: OnError.dead(label="busy for good")})

    assert classify(Softer(), policy, limits=EXACT).kind is ErrorKind.TRANSIENT
    assert classify(PermanentError(), policy, limits=EXACT).kind is ErrorKind.PERMANENT
    dead = classify(Busy(), policy, limits=EXACT)
    assert (dead.kind, dead.text) == (ErrorKind.PERMANENT, "permanent error (busy for good): not retried automatically")


def test_a_rule_that_ignores_the_servers_hint_keeps_the_error_transient() -> None:
    policy = ErrorPolicy.of({TransientError: OnError(honour_retry_after=False)})

    assert classify(TransientError(retry_after=5), policy, limits=EXACT).kind is ErrorKind.TRANSIENT


# --- ErrorPolicy: the most specific class wins, a task's rules over its queue's over the defaults ------------


def test_the_most_specific_class_wins_whatever_the_order_of_the_rules() -> None:
    policy = ErrorPolicy.of({GatewayRefused: OnError.dead(label="refused"), SessionNotFound: OnError(label="s")})

    assert policy.rule_for(SessionNotFound("x")).label == "s"
    assert policy.rule_for(InvalidRecipient("x")).label == "refused"
    assert policy.rule_for(ValueError()) == OnError()


def test_a_tasks_rules_come_before_its_queues_for_the_classes_they_both_name() -> None:
    task = ErrorPolicy.of({Busy: OnError(label="task")})
    queue = ErrorPolicy.of({Busy: OnError(label="queue"), KeyError: OnError(label="queue")})

    merged = task.over(queue)

    assert merged.rule_for(Busy()).label == "task"
    assert merged.rule_for(KeyError()).label == "queue"
    assert merged.rule_for(PermanentError()).retry is False


def test_a_rule_for_a_base_class_does_not_override_the_kind_a_subclass_declares() -> None:
    class Throttled(Exception):
        error_kind = "permanent"  # a library's own exception, declaring its kind without subclassing ours

    policy = ErrorPolicy.of({Exception: OnError(retry_now=False)})

    assert policy.rule_for(PermanentError()).retry is False
    assert policy.rule_for(Throttled()).retry is False
    assert policy.rule_for(TransientError()) == OnError()
    assert ErrorPolicy.of({PermanentError: OnError()}).rule_for(PermanentError()).retry is True


def test_a_policy_refuses_what_is_not_an_exception_class_or_a_rule() -> None:
    with pytest.raises(TypeError, match="maps exception classes to OnError rules"):
        ErrorPolicy.of({"Busy": OnError()})  # type: ignore[dict-item]


# --- the server's hint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [(10, 10.0), (2.5, 2.5), (0, 0.0), (None, None), (-1, None), ("10", None), (True, None)]
)
def test_the_hint_is_a_number_of_seconds_an_exception_carries(value: Any, seconds: float | None) -> None:
    exc = GatewayUnavailable("429", status_code=429, retry_after_seconds=value)

    assert retry_after_of(exc) == seconds


def test_a_deferral_is_never_shorter_than_the_hint_and_its_jitter_is_bounded() -> None:
    limits = HintLimits(max_seconds=3600, jitter_ratio=0.1)
    rng = random.Random(7)

    waits = [deferral_seconds(10, limits=limits, rng=rng) for _ in range(500)]

    assert all(10 <= wait <= 11 for wait in waits)
    assert max(waits) - min(waits) > 0.5  # spread out, not all at once


def test_a_hint_longer_than_the_cap_is_cut_to_the_cap() -> None:
    assert deferral_seconds(86_400, limits=HintLimits(max_seconds=600, jitter_ratio=0)) == 600


# --- TransientError ---------------------------------------------------------------------------------------


def test_a_transient_error_keeps_its_hint_across_pickling() -> None:
    exc = pickle.loads(pickle.dumps(TransientError("busy", retry_after=timedelta(minutes=2))))

    assert (str(exc), exc.retry_after_seconds) == ("busy", 120)


def test_a_transient_error_refuses_a_negative_wait() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        TransientError("busy", retry_after=-1)


# --- the WhatsApp defaults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "retry_now", "delay"),
    [
        (GatewayUnavailable("429", status_code=429, retry_after_seconds=120), ErrorKind.DEFERRED, True, 120),
        (GatewayUnavailable("503", status_code=503, retry_after_seconds=30), ErrorKind.DEFERRED, True, 30),
        (GatewayUnavailable("503", status_code=503), ErrorKind.TRANSIENT, True, None),
        (GatewayUnavailable("unreachable: ReadTimeout"), ErrorKind.TRANSIENT, True, None),
        (SessionNotFound("404", status_code=404), ErrorKind.TRANSIENT, False, 900),
        (InvalidRecipient("400", status_code=400, field="to"), ErrorKind.PERMANENT, False, None),
        (GatewayRefused("413", status_code=413, field="message"), ErrorKind.PERMANENT, False, None),
    ],
)
def test_the_whatsapp_policy_gives_each_gateway_error_its_kind(
    settings: Any, exc: Exception, kind: ErrorKind, retry_now: bool, delay: float | None
) -> None:
    settings.WHATSAPP_SESSION_RETRY_DELAY_SECONDS = 900

    error = classify(exc, whatsapp_error_policy(), limits=EXACT)

    assert (error.kind, error.retry_now, error.delay_seconds) == (kind, retry_now, delay)


def test_an_invalid_recipient_is_dead_with_the_field_named(settings: Any) -> None:
    error = classify(InvalidRecipient("400", status_code=400, field="to"), whatsapp_error_policy(), limits=EXACT)

    assert error.text == "permanent error (invalid recipient, field 'to', HTTP 400): not retried automatically"


def test_the_whatsapp_task_declares_its_policy_and_reads_the_session_delay_when_it_fails(settings: Any) -> None:
    settings.WHATSAPP_SESSION_RETRY_DELAY_SECONDS = 5

    error = send_whatsapp_message.classify(SessionNotFound("404", status_code=404))

    assert (error.kind, error.retry_now, error.delay_seconds) == (ErrorKind.TRANSIENT, False, 5)


# --- a queue's default, in the settings ------------------------------------------------------------------------

#: A queue default for the tests below (``QUEUEING["ERROR_POLICIES"]`` names it).
BUSY_LATER = ErrorPolicy.of({tasks.Boom: OnError.later(delay_seconds=42, label="boom")})


def busy_dead() -> ErrorPolicy:
    return ErrorPolicy.of({tasks.Boom: OnError.dead()})


def test_a_queue_default_in_the_settings_applies_to_the_tasks_of_that_queue(configure: Any) -> None:
    configure(ERROR_POLICIES=["default=tests.test_error_policy.BUSY_LATER"])

    assert tasks.fail_times.classify(tasks.Boom()).delay_seconds == 42
    send_whatsapp_message.push_request(delivery_info={"routing_key": "whatsapp-send"})
    try:
        assert send_whatsapp_message.classify(tasks.Boom()).delay_seconds is None  # another queue
    finally:
        send_whatsapp_message.pop_request()


def test_a_queue_default_can_be_a_function_returning_the_policy(configure: Any) -> None:
    configure(ERROR_POLICIES=["default=tests.test_error_policy.busy_dead"])

    assert tasks.fail_times.classify(tasks.Boom()).kind is ErrorKind.PERMANENT


def test_a_queue_default_that_cannot_be_imported_says_what_to_give(configure: Any) -> None:
    configure(ERROR_POLICIES=["default=tests.nowhere.POLICY"])

    with pytest.raises(ImproperlyConfigured, match=r"'tests.nowhere.POLICY', which cannot be imported"):
        tasks.fail_times.classify(tasks.Boom())


def test_a_queue_default_that_is_not_a_pair_names_the_entry_and_the_form(configure: Any) -> None:
    configure(ERROR_POLICIES=["tests.test_error_policy.BUSY_LATER"])

    with pytest.raises(ImproperlyConfigured, match=r"entry 'tests.test_error_policy.BUSY_LATER' is not queue=dotted"):
        tasks.fail_times.classify(tasks.Boom())


def test_the_failure_recorders_own_retries_do_not_depend_on_a_queues_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import DatabaseError

    from queueing.tasks import RetryableTask, record_failed_job

    asked: list[str] = []

    def classify_and_note(task: RetryableTask, exc: BaseException) -> ClassifiedError:
        asked.append(task.name)
        return ClassifiedError(kind=ErrorKind.TRANSIENT, retry_now=True)

    monkeypatch.setattr(RetryableTask, "classify", classify_and_note)

    # Called directly, Celery's retry raises the error itself; only a task that records failures asks the policy
    with pytest.raises(DatabaseError, match="database is down"):
        record_failed_job.retry(exc=DatabaseError("database is down"))
    with pytest.raises(tasks.Boom):
        tasks.fail_times.retry(exc=tasks.Boom())
    assert asked == ["tests.tasks.fail_times"]
