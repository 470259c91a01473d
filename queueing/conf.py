"""The ``QUEUEING`` settings namespace: declared defaults, units in the names, unknown keys rejected.

Precedence, lowest first: the defaults below, ``settings.QUEUEING["KEY"]``, the environment variable
``QUEUEING_KEY``. ``start_auto_retry()`` (``queueing/retry.py``) can further change ``MAX_RETRIES``,
``RETRY_DELAY`` and ``CHECK_INTERVAL`` while the system runs; those changes live in the database.

Each setting is declared once, as one field of ``QueueingSettings`` made by ``setting()`` (``declaration.py``): its
attribute, type, default, key, unit, smallest allowed value and help. The key list (``SETTINGS``), the parsing of
settings and environment, the table at the end of this docstring and the check of the README's configuration table
(``tests/test_conf.py``) are all derived from those fields. The queue status (``queueing/status/``: the API,
``check_queue`` and ``/metrics``) reads the ``STATUS_*`` keys, the alerts (``queueing/alerts.py``) the ``ALERT_*``
ones.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from queueing.declaration import Setting, declared_in, parse, setting, table


@dataclass(frozen=True, kw_only=True)
class QueueingSettings:
    """The effective static settings, one attribute per key (``get_settings()``; the table in ``queueing.conf``)."""

    max_retries: int = setting(
        3, key="MAX_RETRIES", unit="retries", minimum=0, help="automatic retries by the sweep before a job is `dead`"
    )
    retry_delay_seconds: float = setting(
        300.0,
        key="RETRY_DELAY",
        unit="seconds",
        minimum=0,
        help="seconds a failed job waits before the sweep re-sends it",
    )
    check_interval_seconds: int = setting(
        60, key="CHECK_INTERVAL", unit="seconds", minimum=1, help="seconds between two sweeps (the Beat interval)"
    )
    immediate_retries: int = setting(
        3,
        key="IMMEDIATE_RETRIES",
        unit="retries",
        minimum=0,
        help="Celery retries of one call before it is recorded as failed",
    )
    backoff_base_seconds: float = setting(
        2.0,
        key="BACKOFF_BASE",
        unit="seconds",
        minimum=0,
        help="seconds before the first immediate retry; doubles each time (2, 4, 8)",
    )
    backoff_max_seconds: float = setting(
        600.0, key="BACKOFF_MAX", unit="seconds", minimum=0, help="seconds, cap of one immediate-retry delay"
    )
    backoff_jitter: bool = setting(
        False, key="BACKOFF_JITTER", unit="", help="draw each delay from [d/2, d] instead of exactly d"
    )
    lease_seconds: float = setting(
        1800.0,
        key="LEASE_SECONDS",
        unit="seconds",
        minimum=1,
        help="seconds a claimed job may stay `retrying` before the sweep takes it back",
    )
    batch_size: int = setting(
        500,
        key="BATCH_SIZE",
        unit="jobs",
        minimum=1,
        help="most jobs one sweep (or one batch of a bulk retry) claims",
    )
    api_token: str = setting(
        "",
        key="API_TOKEN",
        unit="",
        secret=True,
        help="bearer token of the JSON API, read and write, named `api-token` (or `sha256:<hex digest>` of it); "
        "empty: only `API_TOKENS` and staff sessions get in",
    )
    api_tokens: tuple[str, ...] = setting(
        (),
        key="API_TOKENS",
        unit="",
        secret=True,
        help="named API tokens, comma-separated, each `name:read:<token>` (status, metrics) or `name:write:<token>` "
        "(also retry, pause, send); the token may be `sha256:<hex digest>` of it",
    )
    traceback_max_chars: int = setting(
        10_000,
        key="TRACEBACK_MAX_CHARS",
        unit="characters",
        minimum=100,
        help="stored traceback is cut to its last this-many characters",
    )
    message_max_chars: int = setting(
        2_000,
        key="MESSAGE_MAX_CHARS",
        unit="characters",
        minimum=10,
        help="stored exception message is cut to this many characters",
    )
    record_failures_of: tuple[str, ...] = setting(
        (),
        key="RECORD_FAILURES_OF",
        unit="",
        help="name patterns (fnmatch; comma-separated in the environment) of tasks that are not `RetryableTask` "
        "whose final failures are recorded and retried too (docs/workflows.md)",
    )
    retry_after_max_seconds: float = setting(
        3600.0,
        key="RETRY_AFTER_MAX",
        unit="seconds",
        minimum=0,
        help="seconds, the longest wait a server's `Retry-After` may ask for; a longer one is cut to this",
    )
    retry_after_jitter_ratio: float = setting(
        0.1,
        key="RETRY_AFTER_JITTER",
        unit="share",
        minimum=0,
        help="up to this share of a `Retry-After` wait is added at random; never earlier than the server asked",
    )
    error_policies: tuple[str, ...] = setting(
        (),
        key="ERROR_POLICIES",
        unit="",
        help="`queue=dotted.path` of each queue's default error policy (an `ErrorPolicy` or a function returning "
        "one; comma-separated in the environment)",
    )
    status_broker_timeout_seconds: float = setting(
        0.5,
        key="STATUS_BROKER_TIMEOUT_SECONDS",
        unit="seconds",
        minimum=0.01,
        help="seconds the queue status waits for the broker and Redis (connect, then each reply)",
    )
    status_inspect_timeout_seconds: float = setting(
        1.0,
        key="STATUS_INSPECT_TIMEOUT_SECONDS",
        unit="seconds",
        minimum=0.01,
        help="seconds a broadcast to the workers waits for their replies",
    )
    status_workers_cache_seconds: float = setting(
        5.0,
        key="STATUS_WORKERS_CACHE_SECONDS",
        unit="seconds",
        minimum=0,
        help="seconds the workers' report (active, delayed) is reused",
    )
    status_counts_cache_seconds: float = setting(
        1.0,
        key="STATUS_COUNTS_CACHE_SECONDS",
        unit="seconds",
        minimum=0,
        help="seconds the failed/dead counts and recent failures are reused; 0: query the database on every request",
    )
    status_groups_cache_seconds: float = setting(
        30.0,
        key="STATUS_GROUPS_CACHE_SECONDS",
        unit="seconds",
        minimum=0,
        help="seconds the failure groups' job counts are reused (they read every job of each failing group); "
        "never less than STATUS_COUNTS_CACHE_SECONDS, and 0 with it",
    )
    alert_sinks: tuple[str, ...] = setting(
        ("queueing.alerts.LogSink",),
        key="ALERT_SINKS",
        unit="",
        help="dotted paths of the alert sinks (comma-separated in the environment); "
        "`queueing.alerts.MailAdminsSink` and `queueing.alerts.WebhookSink` ship too",
    )
    alert_failed_threshold: int = setting(
        10,
        key="ALERT_FAILED_THRESHOLD",
        unit="jobs",
        minimum=0,
        help="alert when a queue has at least this many failed jobs; 0: off",
    )
    alert_dead_threshold: int = setting(
        1,
        key="ALERT_DEAD_THRESHOLD",
        unit="jobs",
        minimum=0,
        help="alert when a queue has at least this many dead jobs; 0: off",
    )
    alert_webhook_url: str = setting(
        "",
        key="ALERT_WEBHOOK_URL",
        unit="",
        secret=True,
        help="where `queueing.alerts.WebhookSink` POSTs (Slack-compatible JSON)",
    )
    alert_webhook_timeout_seconds: float = setting(
        5.0,
        key="ALERT_WEBHOOK_TIMEOUT_SECONDS",
        unit="seconds",
        minimum=0.01,
        help="seconds one webhook POST may take",
    )
    max_age_seconds: float = setting(
        86_400.0,
        key="MAX_AGE",
        unit="seconds",
        minimum=0,
        help="seconds after its first failure a job still failing is `dead` (`max_age_exceeded`); 0: no limit",
    )
    breaker_enabled: bool = setting(
        True,
        key="BREAKER_ENABLED",
        unit="",
        help="probe before flooding: while a failure group fails, the sweep sends a few canaries, not the whole group",
    )
    breaker_canaries: int = setting(
        3, key="BREAKER_CANARIES", unit="jobs", minimum=1, help="jobs one probe of a failing group sends"
    )
    breaker_max_delay_seconds: float = setting(
        3_600.0,
        key="BREAKER_MAX_DELAY",
        unit="seconds",
        minimum=0,
        help="cap of a failing group's delay between probes (it doubles from RETRY_DELAY)",
    )
    breaker_first_wave: int = setting(
        10, key="BREAKER_FIRST_WAVE", unit="jobs", minimum=1, help="jobs the first wave after a successful probe sends"
    )
    breaker_wave_growth: int = setting(
        5,
        key="BREAKER_WAVE_GROWTH",
        unit="times",
        minimum=1,
        help="each wave sends this many times the one before (one wave per CHECK_INTERVAL)",
    )
    sweep_budget_seconds: float = setting(
        0.0,
        key="SWEEP_BUDGET",
        unit="seconds",
        minimum=0,
        help="seconds one sweep may spend claiming and sending batch after batch; 0, or not below "
        "`CHECK_INTERVAL`: 80 % of `CHECK_INTERVAL`",
    )
    throttle: tuple[str, ...] = setting(
        (),
        key="THROTTLE",
        unit="",
        help="re-sent jobs per second, per queue: `queue=rate` items (comma-separated in the environment), "
        "`*=rate` for every queue not named; a queue without a rate is not throttled",
    )
    retry_queues: tuple[str, ...] = setting(
        (),
        key="RETRY_QUEUES",
        unit="",
        help="queues whose re-sent jobs go to `<queue>.retry` (comma-separated in the environment); `*`: every queue",
    )
    retain_finished_days: float = setting(
        7.0,
        key="RETAIN_FINISHED_DAYS",
        unit="days",
        minimum=0,
        help="days resolved and discarded jobs are kept before the prune deletes them; 0: kept for ever",
    )
    retain_dead_days: float = setting(
        180.0,
        key="RETAIN_DEAD_DAYS",
        unit="days",
        minimum=0,
        help="days dead jobs are kept before the prune deletes them; 0: kept for ever",
    )
    prune_interval_seconds: int = setting(
        3600, key="PRUNE_INTERVAL", unit="seconds", minimum=60, help="seconds between two prunes (the Beat interval)"
    )
    prune_batch_size: int = setting(
        1000, key="PRUNE_BATCH_SIZE", unit="jobs", minimum=1, help="most jobs one `DELETE` of the prune removes"
    )
    prune_max_jobs: int = setting(
        100_000,
        key="PRUNE_MAX_JOBS",
        unit="jobs",
        minimum=1,
        help="most jobs one periodic prune deletes; the rest goes at the next one",
    )

    spool_dir: str = setting(
        "",
        key="SPOOL_DIR",
        unit="",
        help="directory of the local spool of failures neither the database nor the broker took; "
        "empty: `<QUEUEING_VAR_DIR>/spool`",
    )
    spool_replay_interval_seconds: float = setting(
        30.0,
        key="SPOOL_REPLAY_INTERVAL_SECONDS",
        unit="seconds",
        minimum=0.1,
        help="seconds between two replays of the spool in each worker",
    )
    encryption_keys: tuple[str, ...] = setting(
        (),
        key="ENCRYPTION_KEYS",
        unit="",
        secret=True,
        help="Fernet keys (comma-separated in the environment) of sensitive arguments at rest, the first encrypting, "
        "any decrypting; empty: keys derived from `SECRET_KEY` and `SECRET_KEY_FALLBACKS` (docs/security.md)",
    )
    sensitive_arguments: tuple[str, ...] = setting(
        ("password", "token", "secret", "api_key", "authorization"),
        key="SENSITIVE_ARGUMENTS",
        unit="",
        help="argument names (any case; keys of nested dicts too) stored encrypted and shown masked, "
        "besides each task's own `sensitive_args` and `sensitive_kwargs`",
    )

    def __post_init__(self) -> None:
        from queueing.throttle import ThrottleSyntaxError, parse_rates

        try:
            parse_rates(self.throttle)
        except ThrottleSyntaxError as exc:
            raise ImproperlyConfigured(f"QUEUEING THROTTLE: {exc}") from None
        from queueing.sensitive import check_keys

        check_keys(self.encryption_keys)


#: Every setting, in declaration order; the only key list.
SETTINGS: tuple[Setting, ...] = declared_in(QueueingSettings)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


@functools.cache
def get_settings() -> QueueingSettings:
    """The effective static settings; raises ``ImproperlyConfigured`` naming the bad key and the fix."""
    configured: dict[str, Any] = dict(getattr(settings, "QUEUEING", {}) or {})
    unknown = sorted(set(configured) - set(BY_KEY))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown key(s) in settings.QUEUEING: {', '.join(unknown)}; known keys: {', '.join(BY_KEY)}"
        )
    values: dict[str, Any] = {}
    for declared in SETTINGS:
        if (env_value := os.environ.get(declared.env_var)) is not None:
            values[declared.field] = parse(f"environment variable {declared.env_var}", env_value, declared)
        elif declared.key in configured:
            values[declared.field] = parse(f'setting QUEUEING["{declared.key}"]', configured[declared.key], declared)
    return QueueingSettings(**values)


@receiver(setting_changed)
def _forget_settings(*, setting: str, **_: Any) -> None:
    if setting == "QUEUEING":
        get_settings.cache_clear()


# The table is derived from the declarations above.
__doc__ = (__doc__ or "") + table(SETTINGS)
