"""Alerts when a queue's failed or dead jobs cross a threshold, and when they fall back below it.

How it works:

1. At the end of every sweep (``queueing.sweep_failed_jobs``), ``evaluate()`` counts the failed and dead
   jobs per queue (one grouped query) and compares each count with ``ALERT_FAILED_THRESHOLD`` /
   ``ALERT_DEAD_THRESHOLD`` (at or above: firing; 0 switches that alert off).
2. Whether an alert fires is kept in ``AlertState``, one row per (queue, metric), so it survives restarts
   and is shared by every worker. A change is written with a conditional ``UPDATE … WHERE firing = <old>``
   (or the row's first ``INSERT``): when two sweeps see the same crossing, one changes the row and sends
   the alert, the other changes nothing and sends nothing. So an alert fires once per crossing, and its
   recovery is reported once, whatever the number of sweeps in between.
3. Each change goes to every sink in ``ALERT_SINKS`` (dotted paths of classes with ``send(alert)``,
   instantiated without arguments): ``LogSink`` (default), ``MailAdminsSink`` (Django's ``mail_admins``:
   set ``ADMINS`` and the e-mail settings), ``WebhookSink`` (a JSON POST to ``ALERT_WEBHOOK_URL``,
   Slack-compatible). A sink that raises is logged and skipped: it neither stops the other sinks nor the
   sweep, and the alert is not sent to it again (at most once per sink).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import requests
from django.core import checks
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from queueing import registry, status
from queueing.conf import get_settings
from queueing.models import AlertState

logger = logging.getLogger(__name__)

Metric = AlertState.Metric


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One crossing: ``firing`` True when the count reached the threshold, False when it fell below."""

    queue: str
    metric: str
    firing: bool
    value: int
    threshold: int
    at: datetime

    @property
    def state(self) -> str:
        return "firing" if self.firing else "resolved"

    @property
    def text(self) -> str:
        if self.firing:
            return (
                f"[queueing] queue {self.queue!r}: {self.value} {self.metric} job(s), at or above the alert "
                f"threshold of {self.threshold}"
            )
        return (
            f"[queueing] resolved: queue {self.queue!r} is back to {self.value} {self.metric} job(s), below the "
            f"alert threshold of {self.threshold}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "metric": self.metric,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "at": self.at.isoformat(),
        }


class Sink(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogSink:
    """Log each alert: a warning when it fires, an info line when it is resolved."""

    def send(self, alert: Alert) -> None:
        logger.log(logging.WARNING if alert.firing else logging.INFO, "alert %s: %s", alert.state, alert.text)


class MailAdminsSink:
    """E-mail ``settings.ADMINS`` (Django's ``mail_admins``; nothing is sent while ``ADMINS`` is empty)."""

    def send(self, alert: Alert) -> None:
        subject = f"{alert.state}: queue {alert.queue} {alert.metric} jobs {alert.value} (threshold {alert.threshold})"
        mail_admins(subject, alert.text + "\n", fail_silently=False)


class WebhookSink:
    """POST ``{"text": …, "queue", "metric", "state", "value", "threshold", "at"}`` to ``ALERT_WEBHOOK_URL``.

    ``text`` makes it a Slack (or Mattermost, Rocket.Chat) incoming-webhook message; the other fields are for
    anything else. A status other than 2xx, or no answer within ``ALERT_WEBHOOK_TIMEOUT_SECONDS``, raises.
    """

    def __init__(self, url: str | None = None, *, timeout_seconds: float | None = None) -> None:
        conf = get_settings()
        self.url = url or conf.alert_webhook_url
        self.timeout_seconds = timeout_seconds or conf.alert_webhook_timeout_seconds
        if not self.url:
            raise ValueError("WebhookSink needs QUEUEING['ALERT_WEBHOOK_URL'] (or QUEUEING_ALERT_WEBHOOK_URL)")

    def send(self, alert: Alert) -> None:
        response = requests.post(self.url, json={"text": alert.text, **alert.as_dict()}, timeout=self.timeout_seconds)
        response.raise_for_status()


def evaluate(*, now: datetime | None = None, sinks: list[Sink] | None = None) -> list[Alert]:
    """Compare each queue's failed/dead counts with the thresholds; send the alerts whose state changed here."""
    conf = get_settings()
    now = now or timezone.now()
    thresholds = {Metric.FAILED: conf.alert_failed_threshold, Metric.DEAD: conf.alert_dead_threshold}
    counts = status.job_counts(statuses=(Metric.FAILED, Metric.DEAD))
    states = {(s.queue, s.metric): s.firing for s in AlertState.objects.all()}
    queues = set(counts) | registry.declared_queues() | {queue for queue, _ in states}
    alerts = []
    for queue in sorted(queues):
        for metric, threshold in thresholds.items():
            if threshold <= 0:
                continue
            value = counts.get(queue, {}).get(metric, 0)
            firing = value >= threshold
            was_firing = states.get((queue, metric))
            if bool(was_firing) == firing:
                continue
            exists = was_firing is not None
            if _flip(queue, metric, firing=firing, value=value, threshold=threshold, now=now, exists=exists):
                alerts.append(
                    Alert(queue=queue, metric=str(metric), firing=firing, value=value, threshold=threshold, at=now)
                )
    if alerts:
        send(alerts, sinks=load_sinks() if sinks is None else sinks)
    return alerts


def _flip(queue: str, metric: str, *, firing: bool, value: int, threshold: int, now: datetime, exists: bool) -> bool:
    """Set the row to ``firing``; True only for the one caller whose write changed it."""
    if not exists:
        if not firing:
            return False  # no row is "not firing" already
        try:
            with transaction.atomic():
                AlertState.objects.create(
                    queue=queue, metric=metric, firing=True, value=value, threshold=threshold, changed_at=now
                )
            return True
        except IntegrityError:
            pass  # another sweep created it a moment ago: the conditional update below decides
    changed = AlertState.objects.filter(queue=queue, metric=metric, firing=not firing).update(
        firing=firing, value=value, threshold=threshold, changed_at=now
    )
    return changed == 1


def send(alerts: list[Alert], *, sinks: list[Sink]) -> None:
    """Give every alert to every sink; a sink that raises is logged and the others still get it."""
    for alert in alerts:
        for sink in sinks:
            try:
                sink.send(alert)
            except Exception:  # a broken sink must not stop the others, nor the sweep
                logger.exception("alert sink %s could not send: %s", type(sink).__name__, alert.text)


def load_sinks(paths: tuple[str, ...] | None = None) -> list[Sink]:
    """Instantiate ``ALERT_SINKS``; one that cannot be loaded is logged and left out."""
    sinks: list[Sink] = []
    for path in get_settings().alert_sinks if paths is None else paths:
        try:
            sinks.append(import_string(path)())
        except Exception:  # the system check names it at start-up; here, keep the others
            logger.exception("alert sink %r could not be loaded; check QUEUEING['ALERT_SINKS']", path)
    return sinks


def evaluate_safely() -> list[Alert]:
    """``evaluate()`` for the sweep: whatever goes wrong is logged, never raised."""
    try:
        return evaluate()
    except Exception:  # alerts must not fail the sweep
        logger.exception("could not evaluate the alerts")
        return []


@checks.register("queueing")
def check_alert_sinks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check`` (and runserver, migrate): every sink in ``ALERT_SINKS`` loads and has its settings."""
    errors: list[checks.CheckMessage] = []
    for path in get_settings().alert_sinks:
        try:
            import_string(path)()
        except Exception as exc:  # noqa: BLE001
            errors.append(
                checks.Error(
                    f"alert sink {path!r} in QUEUEING['ALERT_SINKS'] cannot be used: {exc}",
                    hint="Give the dotted path of a class with send(alert); see queueing/alerts.py.",
                    id="queueing.E001",
                )
            )
    return errors
