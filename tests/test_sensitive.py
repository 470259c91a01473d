"""Sensitive arguments: which are, their encryption at rest (keys, rotation), masking, and a row no key opens."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured

from queueing import operations, sensitive, sweep
from queueing.conf import QueueingSettings
from queueing.models import FailedJob
from tests import tasks
from tests.conftest import wait_for

Status = FailedJob.Status
OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def encrypted_token(value: Any) -> str:
    """The Fernet token of a stored ``{"$encrypted": token}``."""
    assert set(value) == {sensitive.ENCRYPTED}, value
    return str(value[sensitive.ENCRYPTED])


# --- keys and rotation ----------------------------------------------------------------------------------------


def test_the_first_key_encrypts_and_every_key_decrypts(configure: Any) -> None:
    configure(ENCRYPTION_KEYS=[OLD_KEY])
    stored = sensitive.protect(None, [], {"token": "t-123"}, {})

    # When a new key is put first, the old one kept after it
    configure(ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY])

    # Then the value stored under the old key still decrypts, unchanged (no re-encryption needed)
    assert sensitive.reveal(stored.kwargs) == {"token": "t-123"}
    # And a new value is encrypted with the new key alone
    token = encrypted_token(sensitive.protect(None, [], {"token": "t-456"}, {}).kwargs["token"])
    assert json.loads(Fernet(NEW_KEY.encode()).decrypt(token.encode())) == "t-456"
    with pytest.raises(InvalidToken):
        Fernet(OLD_KEY.encode()).decrypt(token.encode())


def test_a_value_whose_key_was_removed_cannot_be_revealed(configure: Any) -> None:
    configure(ENCRYPTION_KEYS=[OLD_KEY])
    stored = sensitive.protect(None, [], {"password": "p-1"}, {})

    configure(ENCRYPTION_KEYS=[NEW_KEY])

    with pytest.raises(sensitive.Undecryptable):
        sensitive.reveal(stored.kwargs)


def test_without_keys_of_its_own_it_derives_them_from_secret_key_and_its_fallbacks(settings: Any) -> None:
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "old-django-secret-key" * 3, []
    stored = sensitive.protect(None, [], {"api_key": "k-1"}, {})

    # When Django's secret key is rotated the Django way: the old one moves to SECRET_KEY_FALLBACKS
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "new-django-secret-key" * 3, ["old-django-secret-key" * 3]

    assert sensitive.reveal(stored.kwargs) == {"api_key": "k-1"}
    assert sensitive.keys().decrypt(encrypted_token(stored.kwargs["api_key"]).encode()) == b'"k-1"'
    settings.SECRET_KEY_FALLBACKS = []
    with pytest.raises(sensitive.Undecryptable):
        sensitive.reveal(stored.kwargs)


def test_a_malformed_key_is_refused_at_start_by_its_position_never_its_value() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"key 2 of 2 is not a Fernet key.*Fernet.generate_key") as caught:
        QueueingSettings(encryption_keys=(OLD_KEY, "not-a-key-but-a-secret"))

    assert "not-a-key-but-a-secret" not in str(caught.value)
    assert "not-a-key-but-a-secret" not in repr(QueueingSettings(encryption_keys=(OLD_KEY,)))


# --- which arguments ------------------------------------------------------------------------------------------


def test_named_kwargs_nested_keys_and_declared_positions_are_encrypted_and_the_rest_kept() -> None:
    args = ["k", "1234", 2]
    kwargs = {"Token": "tok", "headers": {"Authorization": "Bearer b", "Accept": "json"}, "to": "+49"}
    options = {"chain": [{"task": "x", "kwargs": {"password": "pw"}, "args": []}]}

    stored = sensitive.protect(tasks.use_secrets, args, kwargs, options)

    assert stored.args[0] == "k" and stored.args[2] == 2
    assert sensitive.is_encrypted(stored.args[1])  # sensitive_args=(1,)
    assert sensitive.is_encrypted(stored.kwargs["Token"])  # a configured name, in any case
    assert sensitive.is_encrypted(stored.kwargs["headers"]["Authorization"])  # a nested key
    assert (stored.kwargs["headers"]["Accept"], stored.kwargs["to"]) == ("json", "+49")
    assert sensitive.is_encrypted(stored.options["chain"][0]["kwargs"]["password"])  # the chain's next call
    assert set(stored.secrets) == {"1234", "tok", "Bearer b", "pw"}
    # And revealing gives the call back exactly; the inputs were not changed
    assert (sensitive.reveal(stored.args), sensitive.reveal(stored.kwargs)) == (args, kwargs)
    assert sensitive.reveal(stored.options) == options
    assert kwargs["Token"] == "tok"
    # Protecting a stored call again keeps it as it is
    assert sensitive.protect(tasks.use_secrets, stored.args, stored.kwargs, {}).kwargs == stored.kwargs


def test_a_parameter_of_a_sensitive_name_is_sensitive_when_passed_by_position(configure: Any) -> None:
    configure(SENSITIVE_ARGUMENTS=["key"])

    stored = sensitive.protect(tasks.use_secrets, ["the-key", "1234", 0], {}, {})

    assert sensitive.is_encrypted(stored.args[0]) and sensitive.is_encrypted(stored.args[1])
    assert stored.args[2] == 0


def test_a_call_with_nothing_sensitive_is_left_as_it_is() -> None:
    assert sensitive.protect(tasks.succeed, ["k"], {"to": "x"}, {}) == sensitive.Protected(["k"], {"to": "x"}, {}, ())
    assert sensitive.message_reprs(tasks.succeed, ["k"], {"to": "x"}) == {}


def test_the_message_reprs_mask_sensitive_values_and_stored_encrypted_ones() -> None:
    reprs = sensitive.message_reprs(tasks.use_secrets, ["k", "1234", 0], {"token": "tok"})

    assert reprs == {"argsrepr": "('k', '********', 0)", "kwargsrepr": "{'token': '********'}"}
    stored = sensitive.protect(tasks.use_secrets, ["k", "1234", 0], {"token": "tok"}, {})
    assert sensitive.message_reprs(None, stored.args, {})["argsrepr"] == "('k', '********', 0)"


def test_secret_values_are_masked_in_error_texts_but_not_very_short_ones() -> None:
    text = "refused pin 1234 with token abcd-efgh for 1"

    assert sensitive.redact(text, ["1234", "abcd-efgh", "1"]) == "refused pin ******** with token ******** for 1"


def test_a_task_sent_by_name_has_its_message_reprs_masked_too(broker: redis.Redis) -> None:
    # (no RetryableTask.apply_async here: the before_task_publish handler masks the headers)
    tasks.use_secrets.app.send_task("tests.tasks.use_secrets", args=["k", "1234", 0], kwargs={"token": "tok"})

    [message] = [json.loads(raw) for raw in broker.lrange("default", 0, -1)]
    assert message["headers"]["argsrepr"] == "('k', '********', 0)"
    assert message["headers"]["kwargsrepr"] == "{'token': '********'}"


# --- sent again ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_sweep_sends_the_decrypted_value_under_masked_reprs(broker: redis.Redis, make_failed_job: Any) -> None:
    # Given a row whose argument was stored encrypted (even one the task does not, or no longer, name sensitive)
    stored = {"key": {sensitive.ENCRYPTED: sensitive.keys().encrypt(b'"clear-value"').decode()}}
    job = make_failed_job(task_name="tests.tasks.succeed", kwargs=stored)

    # When the sweep sends it again
    assert sweep.sweep().sent == 1

    # Then the message carries the real value to the worker, its reprs (logs, events, Flower) masked
    [message] = [json.loads(raw) for raw in broker.lrange("default", 0, -1)]
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {"key": "clear-value"})
    assert message["headers"]["kwargsrepr"] == "{'key': '********'}"
    assert FailedJob.objects.get(pk=job.pk).kwargs == stored


@pytest.mark.django_db(transaction=True)
def test_a_secret_in_the_error_is_masked_in_the_stored_message_and_traceback(
    configure: Any, celery_worker: Any
) -> None:
    configure(IMMEDIATE_RETRIES=0)

    result = tasks.use_secrets.delay("k", "1234", 1, token="tok-in-the-error", echo=True)

    job = wait_for(lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), what="the failure recorded")
    assert job.exception_message == "gateway refused k with token ********"
    assert "tok-in-the-error" not in job.traceback and "with token ********" in job.traceback


# --- a row that no key opens ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_row_whose_key_is_lost_is_dead_with_the_fix_and_never_sent(
    configure: Any, celery_worker: Any, broker: redis.Redis
) -> None:
    # Given a call that failed for good through a worker, its secrets encrypted with the key then in force
    configure(ENCRYPTION_KEYS=[OLD_KEY], IMMEDIATE_RETRIES=0)
    key = uuid.uuid4().hex
    result = tasks.use_secrets.delay(key, "1234", 99, token="tok")
    job = wait_for(lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), what="the failure recorded")
    assert sensitive.is_encrypted(job.kwargs)
    runs = int(broker.get(f"runs:{key}") or 0)

    # When that key is removed, and the sweep and then an operator try to send it again
    configure(ENCRYPTION_KEYS=[NEW_KEY], IMMEDIATE_RETRIES=0)
    planned = operations.retry_now(ids=[job.pk], dry_run=True).report()
    outcome = sweep.sweep()

    # Then an operator's dry run had said it would not be sent, and it is dead with the reason and the fix, and
    # never sent (no run, nothing on the broker)
    assert (planned["wouldSend"], planned["notSent"]["unsendable"]) == (0, 1)
    job.refresh_from_db()
    assert (outcome.claimed, outcome.sent) == (1, 0)
    assert (job.status, job.reason_code) == (Status.DEAD, FailedJob.Reason.UNDECRYPTABLE)
    assert "cannot be decrypted" in job.status_reason and "QUEUEING_ENCRYPTION_KEYS" in job.status_reason
    assert job.retry_count == 0
    retried = operations.retry_now(ids=[job.pk])
    assert (retried.retried, retried.unsendable) == (0, 1)
    # (one worker, one queue, in order: once a call sent after them has run, anything sent before it has too)
    sentinel = tasks.succeed.delay(f"{key}-after")
    wait_for(lambda: broker.get(f"runs:{key}-after"), what="a call sent afterwards to run")
    assert sentinel.id and int(broker.get(f"runs:{key}") or 0) == runs
    assert FailedJob.objects.get(pk=job.pk).status == Status.DEAD
