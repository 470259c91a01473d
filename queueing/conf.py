"""The ``QUEUEING`` settings namespace: declared defaults, units in the names, unknown keys rejected.

Precedence, lowest first: the defaults below, ``settings.QUEUEING["KEY"]``, the environment variable
``QUEUEING_KEY``. ``start_auto_retry()`` (``queueing/retry.py``) can further change ``MAX_RETRIES``,
``RETRY_DELAY`` and ``CHECK_INTERVAL`` while the system runs; those changes live in the database.

=====================  =======  ==========================================================================
key                    default  meaning
=====================  =======  ==========================================================================
MAX_RETRIES            3        automatic retries by the sweep before a job is ``dead``
RETRY_DELAY            300      seconds a failed job waits before the sweep re-sends it
CHECK_INTERVAL         60       seconds between two sweeps (the beat interval)
IMMEDIATE_RETRIES      3        Celery retries of one call before it is recorded as failed
BACKOFF_BASE           2        seconds before the first immediate retry; doubles each time (2, 4, 8)
BACKOFF_MAX            600      seconds, cap of one immediate-retry delay
BACKOFF_JITTER         False    draw each delay from [d/2, d] instead of exactly d
LEASE_SECONDS          1800     seconds a claimed job may stay ``retrying`` before the sweep takes it back
BATCH_SIZE             500      most jobs one sweep (or one batch of a bulk retry) claims
API_TOKEN              ""       bearer token of the JSON API; empty: only staff sessions get in
TRACEBACK_MAX_CHARS    10000    stored traceback is cut to its last this-many characters
MESSAGE_MAX_CHARS      2000     stored exception message is cut to this many characters
=====================  =======  ==========================================================================

Queue status (``queueing/status.py``: the API, ``check_queue`` and ``/metrics``) and alerts
(``queueing/alerts.py``):

==============================  =========================  ===========================================================
key                             default                    meaning
==============================  =========================  ===========================================================
STATUS_BROKER_TIMEOUT_SECONDS   0.5                        seconds to wait for Redis (connect, then each reply)
STATUS_INSPECT_TIMEOUT_SECONDS  1.0                        seconds a broadcast to the workers waits for their replies
STATUS_WORKERS_CACHE_SECONDS    5.0                        seconds the workers' report (active, delayed) is reused
STATUS_COUNTS_CACHE_SECONDS     1.0                        seconds the failed/dead counts and recent failures are
                                                           reused; 0: query the database on every request
ALERT_SINKS                     queueing.alerts.LogSink    dotted paths of the alert sinks (comma-separated in the
                                                           environment); ``queueing.alerts.MailAdminsSink`` and
                                                           ``queueing.alerts.WebhookSink`` ship too
ALERT_FAILED_THRESHOLD          10                         alert when a queue has at least this many failed jobs; 0: off
ALERT_DEAD_THRESHOLD            1                          alert when a queue has at least this many dead jobs; 0: off
ALERT_WEBHOOK_URL               ""                         where ``WebhookSink`` POSTs (Slack-compatible JSON)
ALERT_WEBHOOK_TIMEOUT_SECONDS   5.0                        seconds one webhook POST may take
==============================  =========================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

ENV_PREFIX = "QUEUEING_"


@dataclass(frozen=True, kw_only=True)
class QueueingSettings:
    max_retries: int = 3
    retry_delay_seconds: float = 300.0
    check_interval_seconds: int = 60
    immediate_retries: int = 3
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    backoff_jitter: bool = False
    lease_seconds: float = 1800.0
    batch_size: int = 500
    api_token: str = dataclasses.field(default="", repr=False)
    traceback_max_chars: int = 10_000
    message_max_chars: int = 2_000
    status_broker_timeout_seconds: float = 0.5
    status_inspect_timeout_seconds: float = 1.0
    status_workers_cache_seconds: float = 5.0
    status_counts_cache_seconds: float = 1.0
    alert_sinks: tuple[str, ...] = ("queueing.alerts.LogSink",)
    alert_failed_threshold: int = 10
    alert_dead_threshold: int = 1
    alert_webhook_url: str = dataclasses.field(default="", repr=False)
    alert_webhook_timeout_seconds: float = 5.0


#: settings key -> (field name, parser, smallest allowed value or None)
_KEYS: dict[str, tuple[str, type, float | None]] = {
    "MAX_RETRIES": ("max_retries", int, 0),
    "RETRY_DELAY": ("retry_delay_seconds", float, 0),
    "CHECK_INTERVAL": ("check_interval_seconds", int, 1),
    "IMMEDIATE_RETRIES": ("immediate_retries", int, 0),
    "BACKOFF_BASE": ("backoff_base_seconds", float, 0),
    "BACKOFF_MAX": ("backoff_max_seconds", float, 0),
    "BACKOFF_JITTER": ("backoff_jitter", bool, None),
    "LEASE_SECONDS": ("lease_seconds", float, 1),
    "BATCH_SIZE": ("batch_size", int, 1),
    "API_TOKEN": ("api_token", str, None),
    "TRACEBACK_MAX_CHARS": ("traceback_max_chars", int, 100),
    "MESSAGE_MAX_CHARS": ("message_max_chars", int, 10),
    "STATUS_BROKER_TIMEOUT_SECONDS": ("status_broker_timeout_seconds", float, 0.01),
    "STATUS_INSPECT_TIMEOUT_SECONDS": ("status_inspect_timeout_seconds", float, 0.01),
    "STATUS_WORKERS_CACHE_SECONDS": ("status_workers_cache_seconds", float, 0),
    "STATUS_COUNTS_CACHE_SECONDS": ("status_counts_cache_seconds", float, 0),
    "ALERT_SINKS": ("alert_sinks", tuple, None),
    "ALERT_FAILED_THRESHOLD": ("alert_failed_threshold", int, 0),
    "ALERT_DEAD_THRESHOLD": ("alert_dead_threshold", int, 0),
    "ALERT_WEBHOOK_URL": ("alert_webhook_url", str, None),
    "ALERT_WEBHOOK_TIMEOUT_SECONDS": ("alert_webhook_timeout_seconds", float, 0.01),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(key: str, source: str, raw: Any, kind: type, minimum: float | None) -> Any:
    where = f"{source} {key}"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ImproperlyConfigured(f"{where} must be true or false, got {raw!r}")
    if kind is str:
        return str(raw)
    if kind is tuple:
        # A list of names: a list or tuple in settings, comma-separated text in the environment.
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise ImproperlyConfigured(f"{where} must be a list of strings (comma-separated in the environment)")
        return tuple(item.strip() for item in items if item.strip())
    try:
        value = kind(raw)
        if kind is int and isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        unit = "a whole number" if kind is int else "a number of seconds"
        raise ImproperlyConfigured(f"{where} must be {unit}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{where} must be at least {minimum}, got {raw!r}")
    return value


@functools.cache
def get_settings() -> QueueingSettings:
    """The effective static settings; raises ``ImproperlyConfigured`` naming the bad key and the fix."""
    configured: dict[str, Any] = dict(getattr(settings, "QUEUEING", {}) or {})
    unknown = sorted(set(configured) - set(_KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown key(s) in settings.QUEUEING: {', '.join(unknown)}; known keys: {', '.join(_KEYS)}"
        )
    values: dict[str, Any] = {}
    for key, (field, kind, minimum) in _KEYS.items():
        if (env_value := os.environ.get(ENV_PREFIX + key)) is not None:
            values[field] = _parse(ENV_PREFIX + key, "environment variable", env_value, kind, minimum)
        elif key in configured:
            values[field] = _parse(f'QUEUEING["{key}"]', "setting", configured[key], kind, minimum)
    return QueueingSettings(**values)


@receiver(setting_changed)
def _forget_settings(*, setting: str, **_: Any) -> None:
    if setting == "QUEUEING":
        get_settings.cache_clear()
