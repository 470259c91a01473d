"""The ``QUEUEING`` settings namespace: declared defaults, units in the names, unknown keys rejected.

Precedence, lowest first: the defaults below, ``settings.QUEUEING["KEY"]``, the environment variable
``QUEUEING_KEY``. ``start_auto_retry()`` (``queueing/retry.py``) can further change ``MAX_RETRIES``,
``RETRY_DELAY`` and ``CHECK_INTERVAL`` while the system runs; those changes live in the database.

Each setting is declared once, as one field of ``QueueingSettings`` made by ``setting()``: its attribute, type,
default, key, unit, smallest allowed value and help. The key list (``SETTINGS``), the parsing of settings and
environment, the table at the end of this docstring and the check of the README's configuration table
(``tests/test_conf.py``) are all derived from those fields. The queue status (``queueing/status/``: the API,
``check_queue`` and ``/metrics``) reads the ``STATUS_*`` keys, the alerts (``queueing/alerts.py``) the
``ALERT_*`` ones.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

ENV_PREFIX = "QUEUEING_"

T = TypeVar("T")


def setting(default: T, *, key: str, unit: str, help: str, minimum: float | None = None, secret: bool = False) -> T:
    """Declare one setting: a dataclass field of ``QueueingSettings`` carrying its key, unit and help.

    ``unit`` is what one of it counts ("seconds", "jobs", ...; "" for a switch, a text or a list); ``minimum``
    the smallest value accepted; ``secret`` keeps the value out of the ``repr``.
    """
    metadata = {"key": key, "unit": unit, "help": help, "minimum": minimum}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


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

    def __post_init__(self) -> None:
        from queueing.throttle import ThrottleSyntaxError, parse_rates

        try:
            parse_rates(self.throttle)
        except ThrottleSyntaxError as exc:
            raise ImproperlyConfigured(f"QUEUEING THROTTLE: {exc}") from None


@dataclass(frozen=True)
class Setting:
    """One declared setting, as read from its ``QueueingSettings`` field."""

    key: str
    field: str
    kind: type  # int, float, bool, str or tuple (of strings)
    default: Any
    unit: str
    help: str
    minimum: float | None

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.key

    @property
    def default_text(self) -> str:
        """The default as the README and the table below write it: ``300``, ``0.5``, ``false``, ``empty``."""
        value = self.default
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(value) or "empty"
        return str(value) if value != "" else "empty"


def _declared() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(QueueingSettings)
    declared = []
    for field in dataclasses.fields(QueueingSettings):
        hint = hints[field.name]
        kind = typing.get_origin(hint) or hint
        if kind not in (int, float, bool, str, tuple):
            raise TypeError(f"QueueingSettings.{field.name}: a setting is an int, float, bool, str or tuple[str, ...]")
        meta = field.metadata
        declared.append(
            Setting(meta["key"], field.name, kind, field.default, meta["unit"], meta["help"], meta["minimum"])
        )
    return tuple(declared)


#: Every setting, in declaration order; the only key list.
SETTINGS: tuple[Setting, ...] = _declared()
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(where: str, raw: Any, declared: Setting) -> Any:
    kind, minimum = declared.kind, declared.minimum
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
        unit = "a whole number" if kind is int else f"a number of {declared.unit or 'units'}"
        raise ImproperlyConfigured(f"{where} must be {unit}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{where} must be at least {minimum}, got {raw!r}")
    return value


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
            values[declared.field] = _parse(f"environment variable {declared.env_var}", env_value, declared)
        elif declared.key in configured:
            values[declared.field] = _parse(f'setting QUEUEING["{declared.key}"]', configured[declared.key], declared)
    return QueueingSettings(**values)


@receiver(setting_changed)
def _forget_settings(*, setting: str, **_: Any) -> None:
    if setting == "QUEUEING":
        get_settings.cache_clear()


def _table() -> str:
    """The settings as a reStructuredText table, for this module's docstring."""
    rows = [(s.key, s.default_text, s.unit or "-", s.help) for s in SETTINGS]
    widths = [max(len(row[i]) for row in [("key", "default", "unit", "meaning"), *rows]) for i in range(4)]
    rule = "  ".join("=" * width for width in widths)
    lines = [
        "",
        "",
        rule,
        "  ".join(h.ljust(w) for h, w in zip(("key", "default", "unit", "meaning"), widths, strict=True)),
    ]
    lines.append(rule)
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines) + "\n"


# The table is derived from the declarations above.
__doc__ = (__doc__ or "") + _table()
