"""Alerts: once per threshold crossing, recovery reported, pluggable sinks, and a sweep that a sink cannot break."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from django.core import mail
from django.core.checks import run_checks
from django.db import connection

from queueing import alerts
from queueing.conf import get_settings
from queueing.models import AlertState, FailedJob
from queueing.periodic import sweep_failed_jobs

pytestmark = pytest.mark.django_db(transaction=True)

Status = FailedJob.Status


class RecordingSink:
    """A sink that keeps what it was given (the tests configure it by its dotted path)."""

    sent: ClassVar[list[alerts.Alert]] = []

    def send(self, alert: alerts.Alert) -> None:
        RecordingSink.sent.append(alert)


class BrokenSink:
    def send(self, alert: alerts.Alert) -> None:
        raise RuntimeError("the pager is down")


RECORDING = "tests.test_alerts.RecordingSink"


@pytest.fixture(autouse=True)
def recording(configure: Any) -> Iterator[list[alerts.Alert]]:
    RecordingSink.sent = []
    configure(ALERT_SINKS=[RECORDING], ALERT_FAILED_THRESHOLD=2, ALERT_DEAD_THRESHOLD=1)
    yield RecordingSink.sent


def states() -> dict[tuple[str, str], bool]:
    return {(s.queue, s.metric): s.firing for s in AlertState.objects.all()}


def test_an_alert_fires_once_when_failed_jobs_reach_the_threshold_not_every_sweep(
    make_failed_job: Any, recording: list[alerts.Alert]
) -> None:
    # Given one failed job on whatsapp-send (threshold 2): nothing to say
    make_failed_job(queue="whatsapp-send")
    assert alerts.evaluate() == []

    # When a second one fails, then the alert fires; and the sweeps after that stay quiet
    make_failed_job(queue="whatsapp-send")
    alerts.evaluate()
    alerts.evaluate()
    alerts.evaluate()

    assert [(a.queue, a.metric, a.state, a.value, a.threshold) for a in recording] == [
        ("whatsapp-send", "failed", "firing", 2, 2)
    ]
    assert "'whatsapp-send': 2 failed job(s)" in recording[0].text
    assert states() == {("whatsapp-send", "failed"): True}


def test_recovery_below_the_threshold_is_reported_once_and_a_new_crossing_fires_again(
    make_failed_job: Any, recording: list[alerts.Alert]
) -> None:
    dead = make_failed_job(queue="default", status=Status.DEAD)
    alerts.evaluate()

    # When the dead job is dealt with, then recovery is reported once
    FailedJob.objects.filter(pk=dead.pk).update(status=Status.DISCARDED)
    alerts.evaluate()
    alerts.evaluate()
    # And a new dead job is a new crossing
    make_failed_job(queue="default", status=Status.DEAD)
    alerts.evaluate()

    assert [(a.queue, a.metric, a.state, a.value) for a in recording] == [
        ("default", "dead", "firing", 1),
        ("default", "dead", "resolved", 0),
        ("default", "dead", "firing", 1),
    ]
    assert "resolved" in recording[1].text


def test_a_zero_threshold_switches_that_alert_off(
    make_failed_job: Any, configure: Any, recording: list[alerts.Alert]
) -> None:
    configure(ALERT_SINKS=[RECORDING], ALERT_FAILED_THRESHOLD=0, ALERT_DEAD_THRESHOLD=0)
    make_failed_job(status=Status.DEAD)
    make_failed_job()

    assert alerts.evaluate() == []
    assert recording == []


def test_sweeps_running_at_the_same_time_fire_a_crossing_once(
    make_failed_job: Any, recording: list[alerts.Alert]
) -> None:
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)
    barrier = threading.Barrier(4)
    fired: list[int] = []

    def sweep_end() -> None:
        try:
            barrier.wait()
            fired.append(len(alerts.evaluate(sinks=[])))
        finally:
            connection.close()

    # When four processes evaluate the same crossing at once
    threads = [threading.Thread(target=sweep_end) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then exactly one of them changed the row, so exactly one alert goes out
    assert sorted(fired) == [0, 0, 0, 1]
    assert states() == {("whatsapp-send", "dead"): True}


def test_a_sink_that_raises_breaks_neither_the_other_sinks_nor_the_sweep(
    make_failed_job: Any, configure: Any, recording: list[alerts.Alert], caplog: pytest.LogCaptureFixture
) -> None:
    configure(
        ALERT_SINKS=["tests.test_alerts.BrokenSink", RECORDING, "no.such.Sink"],
        ALERT_DEAD_THRESHOLD=1,
        MAX_RETRIES=0,
    )
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)

    with caplog.at_level(logging.ERROR, logger="queueing.alerts"):
        result = sweep_failed_jobs()

    assert result["sent"] == 0
    assert [(a.queue, a.state) for a in recording] == [("whatsapp-send", "firing")]
    assert "alert sink BrokenSink could not send" in caplog.text
    assert "alert sink 'no.such.Sink' could not be loaded" in caplog.text


def test_the_log_sink_warns_when_firing_and_informs_when_resolved(
    make_failed_job: Any, configure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    configure(ALERT_SINKS=["queueing.alerts.LogSink"], ALERT_DEAD_THRESHOLD=1)
    dead = make_failed_job(status=Status.DEAD)

    with caplog.at_level(logging.INFO, logger="queueing.alerts"):
        alerts.evaluate()
        dead.delete()
        alerts.evaluate()

    assert [(r.levelname, r.getMessage()[:20]) for r in caplog.records] == [
        ("WARNING", "alert firing: [queue"),
        ("INFO", "alert resolved: [que"),
    ]


def test_the_mail_admins_sink_emails_the_admins(make_failed_job: Any, configure: Any, settings: Any) -> None:
    settings.ADMINS = [("Ops", "ops@example.com")]
    configure(ALERT_SINKS=["queueing.alerts.MailAdminsSink"], ALERT_DEAD_THRESHOLD=1)
    make_failed_job(queue="whatsapp-send", status=Status.DEAD)

    alerts.evaluate()

    [message] = mail.outbox
    assert message.to == ["ops@example.com"]
    assert "firing: queue whatsapp-send dead jobs 1 (threshold 1)" in message.subject
    assert "at or above the alert threshold of 1" in message.body


# --- the webhook, against a real HTTP server ------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000", _Hook.received
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_posts_slack_compatible_json_for_firing_and_resolved(
    make_failed_job: Any, configure: Any, webhook_server: tuple[str, list[Any]]
) -> None:
    url, received = webhook_server
    configure(ALERT_SINKS=["queueing.alerts.WebhookSink"], ALERT_WEBHOOK_URL=url, ALERT_FAILED_THRESHOLD=1)
    job = make_failed_job(queue="whatsapp-send")

    alerts.evaluate()
    job.delete()
    alerts.evaluate()

    assert len(received) == 2
    headers, body = received[0]
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["text"].startswith("[queueing] queue 'whatsapp-send': 1 failed job(s)")
    assert {k: payload[k] for k in ("queue", "metric", "state", "value", "threshold")} == {
        "queue": "whatsapp-send",
        "metric": "failed",
        "state": "firing",
        "value": 1,
        "threshold": 1,
    }
    assert json.loads(received[1][1])["state"] == "resolved"


def test_a_webhook_that_never_answers_is_given_up_after_its_timeout(
    make_failed_job: Any,
    configure: Any,
    recording: list[alerts.Alert],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    posts: list[dict[str, Any]] = []
    real_post = alerts.requests.post

    def post(url: str, **kwargs: Any) -> Any:
        posts.append(kwargs)
        if kwargs.get("timeout") is None:  # it would wait for the silent server forever: fail instead
            raise AssertionError("a webhook post without a timeout")
        return real_post(url, **kwargs)

    monkeypatch.setattr(alerts.requests, "post", post)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        configure(
            ALERT_SINKS=["queueing.alerts.WebhookSink", RECORDING],
            ALERT_WEBHOOK_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
            ALERT_WEBHOOK_TIMEOUT_SECONDS=0.3,
            ALERT_DEAD_THRESHOLD=1,
        )
        make_failed_job(status=Status.DEAD)

        # When the alert goes to a webhook that accepts the connection and never answers
        alerts.evaluate_safely()

    # Then the post carried the configured timeout, gave up on it, and the next sink still got the alert
    assert [p["timeout"] for p in posts] == [0.3]
    assert "ReadTimeout" in caplog.text
    assert len(recording) == 1


# --- configuration --------------------------------------------------------------------------------------------


def test_alert_settings_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch, configure: Any) -> None:
    monkeypatch.setenv("QUEUEING_ALERT_SINKS", "queueing.alerts.LogSink, queueing.alerts.MailAdminsSink")
    monkeypatch.setenv("QUEUEING_ALERT_FAILED_THRESHOLD", "25")
    get_settings.cache_clear()
    try:
        conf = get_settings()
        assert conf.alert_sinks == ("queueing.alerts.LogSink", "queueing.alerts.MailAdminsSink")
        assert conf.alert_failed_threshold == 25
    finally:
        monkeypatch.delenv("QUEUEING_ALERT_SINKS")
        monkeypatch.delenv("QUEUEING_ALERT_FAILED_THRESHOLD")
        get_settings.cache_clear()


def test_the_system_check_names_a_sink_that_cannot_be_used(configure: Any) -> None:
    configure(ALERT_SINKS=["queueing.alerts.LogSink", "queueing.alerts.Nope", "queueing.alerts.WebhookSink"])

    errors = [e for e in run_checks() if e.id == "queueing.E001"]

    assert len(errors) == 2
    assert "'queueing.alerts.Nope'" in errors[0].msg
    assert "ALERT_WEBHOOK_URL" in errors[1].msg
