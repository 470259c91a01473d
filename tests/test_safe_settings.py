"""The safe Celery settings, pinned: changing any of them must fail a test here (research: reliability.md §1).

- one message reserved at a time (``worker_prefetch_multiplier = 1``), acknowledged when the task ends
  (``task_acks_late``), a killed worker's call retried (``task_retry_on_worker_lost``);
- the Redis visibility timeout, two hours: far above the hard time limit plus the longest countdown;
- JSON only: no pickle is ever accepted (CVE-2021-23727 is one reason among several);
- a task that overran its soft time limit is not retried at once (it may still be running: a "doom spiral");
- a pool child grown past 500 MB (``worker_max_memory_per_child``) is replaced after its task, not killed by the
  kernel in the middle of one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis
from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from queueing import checks
from queueing.models import FailedJob
from queueing.tasks import RetryableTask
from tests.conftest import ROOT, wait_for


@shared_task(name="tests.test_safe_settings.overran_soft_limit")
def overran_soft_limit(key: str) -> None:
    """What a call that overran its soft time limit raises (a real limit needs a prefork pool)."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).incr(f"runs:{key}")
    raise SoftTimeLimitExceeded("soft time limit exceeded")


def test_a_worker_reserves_one_message_at_a_time(celery_app: Celery) -> None:
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert celery_app.conf.worker_prefetch_multiplier == 1


def test_a_worker_child_is_replaced_after_its_task_once_past_512000_kib(celery_app: Celery) -> None:
    assert settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD == 512_000
    assert celery_app.conf.worker_max_memory_per_child == 512_000


@pytest.mark.parametrize(("value", "setting"), [("1048576", "1048576"), ("0", "None")])
def test_the_worker_memory_limit_comes_from_the_environment_and_0_turns_it_off(value: str, setting: str) -> None:
    env = {**os.environ, "CELERY_WORKER_MAX_MEMORY_PER_CHILD": value}
    code = "import project.settings as s; print(s.CELERY_WORKER_MAX_MEMORY_PER_CHILD)"

    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.stdout.strip() == setting, done.stderr[-2000:]


def test_a_message_is_acknowledged_when_its_task_ends(celery_app: Celery) -> None:
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert celery_app.conf.task_acks_late is True
    assert celery_app.conf.task_acks_on_failure_or_timeout is True  # the FailedJob row is the record
    assert celery_app.conf.task_retry_on_worker_lost is True


def test_the_visibility_timeout_is_two_hours_and_fits_the_limits(celery_app: Celery, configure: Any) -> None:
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] == 2 * 3600
    assert checks.visibility_timeout_seconds(celery_app) == 2 * 3600
    # With the production defaults, the hard limit plus the longest countdown stays far below it
    configure(LEASE_SECONDS=1800)
    celery_app.conf.update(task_soft_time_limit=540, task_time_limit=600)
    try:
        countdown, _ = checks.longest_countdown_seconds(celery_app, resendable_only=False)
        assert 600 + countdown < 2 * 3600
        assert checks.safe_settings_problems(celery_app) == []
    finally:
        celery_app.conf.update(
            task_soft_time_limit=int(settings.CELERY_TASK_SOFT_TIME_LIMIT),
            task_time_limit=int(settings.CELERY_TASK_TIME_LIMIT),
        )


def test_only_json_is_accepted_and_sent(celery_app: Celery) -> None:
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_RESULT_ACCEPT_CONTENT == ["json"]
    assert (settings.CELERY_TASK_SERIALIZER, settings.CELERY_RESULT_SERIALIZER) == ("json", "json")
    assert list(celery_app.conf.accept_content) == ["json"]
    assert list(celery_app.conf.result_accept_content) == ["json"]
    assert (celery_app.conf.task_serializer, celery_app.conf.result_serializer) == ("json", "json")


def test_a_worker_refuses_a_pickled_message(celery_app: Celery, celery_worker: Any, broker: redis.Redis) -> None:
    # Given a message whose body is pickle (what an attacker with broker access would send)
    key = uuid.uuid4().hex
    with celery_app.producer_or_acquire() as producer:
        celery_app.amqp.send_task_message(
            producer,
            "tests.tasks.succeed",
            celery_app.amqp.as_task_v2(str(uuid.uuid4()), "tests.tasks.succeed", args=[key]),
            serializer="pickle",
            queue="default",
        )
    # And a JSON one after it, to know the worker has looked at both
    done = celery_app.tasks["tests.tasks.succeed"].delay(f"{key}-json")
    wait_for(lambda: broker.get(f"runs:{key}-json"), what="the JSON message to run")

    # Then the pickled one never ran
    assert broker.get(f"runs:{key}") is None
    assert done.id


def test_the_soft_time_limit_is_excluded_from_the_immediate_retries() -> None:
    assert SoftTimeLimitExceeded in RetryableTask.dont_autoretry_for


def test_a_call_that_overran_its_soft_limit_is_recorded_without_immediate_retries(
    celery_worker: Any, broker: redis.Redis, transactional_db: None
) -> None:
    key = uuid.uuid4().hex

    result = overran_soft_limit.delay(key)

    job = wait_for(lambda: FailedJob.objects.filter(origin_task_id=result.id).first(), what="the failure record")
    assert int(broker.get(f"runs:{key}")) == 1  # run once: not retried at once
    assert job.attempts == 1
    assert job.exception_class.endswith(".SoftTimeLimitExceeded")
    assert job.status == FailedJob.Status.FAILED  # the sweep still retries it later, after the delay
