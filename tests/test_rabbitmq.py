"""RabbitMQ as the broker: queue lengths read from RabbitMQ itself, priorities, the status Redis beside it,
the consumer_timeout check; and the status figures on Redis over TLS and behind Sentinel.

The tests that need RabbitMQ run in bin/test's RabbitMQ pass (``TEST_BROKERS="redis rabbitmq"``, a vhost of
their own); in the Redis passes they are skipped. The pipeline, status and outage tests that run on RabbitMQ
too are listed in ``RABBITMQ_TESTS`` (tests/conftest.py).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core import checks
from django.test import Client
from kombu import Connection

from queueing import status
from queueing.broker_checks import check_consumer_timeout
from queueing.models import FailedJob
from queueing.status import broker as status_broker
from queueing.status.broker import AmqpBroker, Unavailable
from tests import tasks
from tests.conftest import broker_is_amqp, free_port, stop, wait_for
from tests.test_admin import OPERATOR_VERBS, _run_action, _staff, _status

pytestmark = pytest.mark.django_db(transaction=True)

needs_rabbitmq = pytest.mark.skipif(
    not broker_is_amqp(), reason="needs CELERY_BROKER_URL=amqp://… (bin/test's RabbitMQ pass)"
)


def _amqp_broker() -> AmqpBroker:
    return AmqpBroker(settings.CELERY_BROKER_URL, 2.0)


@needs_rabbitmq
def test_waiting_is_the_number_of_messages_rabbitmq_holds_on_each_queue(broker: redis.Redis) -> None:
    # Given three messages on whatsapp-send and one on default, and no worker
    for _ in range(3):
        tasks.succeed.apply_async(queue="whatsapp-send")
    tasks.succeed.apply_async(queue="default")

    # Then the status reads them from RabbitMQ (publishes are asynchronous: poll), and counts nothing else
    def waiting() -> dict[str, int | None]:
        return {name: queue.waiting for name, queue in status.queue_status().queues.items()}

    wait_for(lambda: waiting() == {"default": 1, "whatsapp-send": 3}, what="the four messages to be counted")
    assert "waiting" not in status.queue_status().unavailable


@needs_rabbitmq
def test_a_queue_rabbitmq_does_not_have_holds_nothing(broker: redis.Redis) -> None:
    assert _amqp_broker().queue_lengths(["no-such-queue", "default", "no-such-queue-either"]) == {
        "no-such-queue": 0,
        "default": 0,
        "no-such-queue-either": 0,
    }


@needs_rabbitmq
def test_a_more_urgent_message_is_delivered_first_because_the_queues_have_x_max_priority(broker: redis.Redis) -> None:
    # Given a message of priority 0, then one of priority 9, on a queue nobody consumes yet
    low = tasks.succeed.apply_async(args=["low"], queue="default", priority=0)
    high = tasks.succeed.apply_async(args=["high"], queue="default", priority=9)
    wait_for(lambda: _amqp_broker().queue_lengths(["default"])["default"] == 2, what="both messages")

    # When a consumer takes one, then the other
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        first = channel.basic_get("default", no_ack=True)
        second = channel.basic_get("default", no_ack=True)

    # Then the urgent one comes first
    assert [first.headers["id"], second.headers["id"]] == [high.id, low.id]


@needs_rabbitmq
def test_an_operators_retry_from_the_admin_goes_through_rabbitmq_and_resolves_the_job(
    celery_worker: Any, broker: redis.Redis, make_failed_job: Any
) -> None:
    # Given a failed job of a task that now succeeds, and an operator
    job = make_failed_job(task_name="tests.tasks.succeed", args=["admin-on-rabbitmq"])
    operator = Client()
    operator.force_login(_staff("operator", "view_failedjob", *OPERATOR_VERBS))

    # When the operator picks "Retry selected now" and confirms
    _run_action(operator, "retry_selected", [job])

    # Then the clone goes through RabbitMQ to the worker, and the row is resolved
    wait_for(lambda: _status(job) == FailedJob.Status.RESOLVED, what="the retried job to be resolved")


def test_a_rabbitmq_that_does_not_answer_is_named_after_one_timeout(silent_port: int) -> None:
    # Given an AMQP port that accepts connections and never answers
    hung = AmqpBroker(f"amqp://guest:guest@127.0.0.1:{silent_port}//", 0.5)

    # Then the queue lengths are unavailable, saying why, after about one timeout
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"^the broker did not answer: "):
        hung.queue_lengths(["default"])
    assert time.monotonic() - started < 2


def test_a_rabbitmq_that_is_not_there_is_named_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"^the broker did not answer: ConnectionRefusedError"):
        AmqpBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}//", 0.5).queue_lengths(["default"])
    assert time.monotonic() - started < 1


@needs_rabbitmq
def test_without_a_status_redis_the_counters_are_unavailable_and_the_queue_lengths_are_not(
    broker: redis.Redis, settings: Any
) -> None:
    # Given RabbitMQ as the broker and no Redis for the status
    settings.REDIS_URL = ""
    tasks.succeed.apply_async(queue="default")

    # Then waiting still comes from RabbitMQ, and completed says what to set
    report = wait_for(
        lambda: (r := status.queue_status()).queues["default"].waiting == 1 and r, what="the message to be counted"
    )
    assert report.queues["default"].completed is None
    assert report.unavailable["completed"].startswith("the broker is amqp:// and REDIS_URL is empty")
    assert "set REDIS_URL" in report.unavailable["completed"]
    # and a worker's count is dropped (said once), never raised
    status.count("completed", "default")


@needs_rabbitmq
def test_a_status_redis_that_does_not_answer_costs_the_counters_not_the_queue_lengths(
    broker: redis.Redis, settings: Any, silent_port: int
) -> None:
    # Given RabbitMQ as the broker and a status Redis that accepts connections and never answers
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_port}/0"
    tasks.succeed.apply_async(queue="whatsapp-send")

    # Then waiting still comes from RabbitMQ, and the figures kept in Redis name it, not the broker
    report = wait_for(
        lambda: (r := status.queue_status()).queues["whatsapp-send"].waiting == 1 and r,
        what="the message to be counted",
    )
    assert report.queues["whatsapp-send"].completed is None
    assert report.unavailable["completed"].startswith("the status Redis (REDIS_URL) did not answer: ")
    assert "waiting" not in report.unavailable


def test_the_consumer_timeout_check_warns_when_a_worker_could_hold_a_message_longer(settings: Any) -> None:
    # Given RabbitMQ, whose consumer_timeout is 30 minutes
    settings.BROKER_IS_AMQP = True
    settings.RABBITMQ_CONSUMER_TIMEOUT_SECONDS = 1800

    # Then the default countdown cap (600 s) and hard time limit (600 s) fit
    settings.CELERY_TASK_TIME_LIMIT = 600
    assert check_consumer_timeout() == []

    # and a 1500 s time limit does not: 600 + 1500 s is over 1800 s
    settings.CELERY_TASK_TIME_LIMIT = 1500
    [warning] = check_consumer_timeout()
    assert warning.id == "queueing.W101" and warning.level == checks.WARNING
    assert "2100 s" in warning.msg and "consumer_timeout (1800 s" in warning.msg

    # nor does no time limit at all
    settings.CELERY_TASK_TIME_LIMIT = None
    [warning] = check_consumer_timeout()
    assert "CELERY_TASK_TIME_LIMIT is not set" in warning.msg

    # and on Redis the check has nothing to say (its visibility_timeout is set longer by the settings)
    settings.BROKER_IS_AMQP = False
    assert check_consumer_timeout() == []


# --- Redis Sentinel ----------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_port(redis_client: redis.Redis, tmp_path: Path) -> Iterator[int]:
    """A Redis Sentinel (``redis-server --sentinel``) that names the tests' Redis as master ``queueing``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    host, port = (
        redis_client.connection_pool.connection_kwargs["host"],
        redis_client.connection_pool.connection_kwargs["port"],
    )
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor queueing {host} {port} 1\nsentinel down-after-milliseconds queueing 60000\n"
    )
    process = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        probe = redis.Redis(port=sentinel_port, socket_timeout=1)
        wait_for(lambda: _answers(probe), timeout=10, what="the sentinel to answer")
        yield sentinel_port
    finally:
        stop(process)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_with_a_sentinel_url_the_status_reads_the_master_the_sentinels_name(
    sentinel_port: int, redis_client: redis.Redis
) -> None:
    # Given the broker URL kombu takes for Sentinel, with the master_name transport option
    db = redis_client.connection_pool.connection_kwargs["db"]
    url = f"sentinel://127.0.0.1:{sentinel_port}/{db}"
    layout = status_broker._Layout(
        url=url,
        urls=(url, f"sentinel://127.0.0.1:{free_port()}/{db}"),
        scheme="sentinel",
        key_prefix="",
        priority_steps=(0,),
        master_name="queueing",
    )
    redis_client.rpush("default", b"one", b"two")

    # Then the status's Redis is that master (the second, absent sentinel is passed over)
    client = status_broker._sentinel_master(layout, 1.0)
    assert client.llen("default") == 2
    assert status_broker.RedisBroker(client).queue_lengths(["default"]) == {"default": 2}


def test_a_sentinel_url_without_a_master_name_is_named() -> None:
    layout = status_broker._Layout(
        url="sentinel://127.0.0.1:26379",
        urls=("sentinel://127.0.0.1:26379",),
        scheme="sentinel",
        key_prefix="",
        priority_steps=(0,),
        master_name="",
    )
    with pytest.raises(Unavailable, match="master_name"):
        status_broker._sentinel_master(layout, 0.5)


# --- Redis over TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Redis that speaks TLS only (a self-signed certificate for 127.0.0.1): its port and the certificate."""
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=1)
        wait_for(lambda: _answers(probe), timeout=10, what="the TLS Redis to answer")
        yield port, cert
    finally:
        stop(process)


def test_with_a_rediss_broker_the_status_reads_queue_lengths_and_counters_over_tls(
    tls_redis: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, celery_app: Any
) -> None:
    # Given a rediss:// broker whose certificate is checked against its CA (Celery's broker_use_ssl)
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    layout = status_broker._Layout(
        url=url, urls=(url,), scheme="rediss", key_prefix="", priority_steps=(0, 3, 6, 9), master_name=""
    )
    monkeypatch.setattr(status_broker, "_layout", lambda: layout)
    previous_ssl = celery_app.conf.broker_use_ssl
    celery_app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(cert)}
    try:
        client = status_broker.broker_redis()
        client.rpush("whatsapp-send", b"one", b"two")
        status.count("completed", "whatsapp-send", by=5)

        # Then the status reads both over TLS
        report = status.queue_status(queue="whatsapp-send")
        assert (report.queues["whatsapp-send"].waiting, report.queues["whatsapp-send"].completed) == (2, 5)
        assert "waiting" not in report.unavailable and "completed" not in report.unavailable
    finally:
        celery_app.conf.broker_use_ssl = previous_ssl
        # the workers' report is refreshed in the background: let it end before this Redis does
        for thread in threading.enumerate():
            if thread.name.startswith("refresh queueing:"):
                thread.join(timeout=10)
