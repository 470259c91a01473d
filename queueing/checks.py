"""Safe settings, checked at start-up: the time limits, the lease and the backoff must fit inside each other.

A Redis broker hands an unacknowledged message to another worker once it has been out for the transport's
``visibility_timeout``; a claimed job is taken back once its lease runs out. So, for a task never to run twice
at once and a running retry never to lose its claim:

1. soft time limit < hard time limit (the task gets its ``SoftTimeLimitExceeded`` before it is killed);
2. hard time limit + the longest immediate-retry countdown < the visibility timeout (Redis only): an
   immediate retry waits in the worker unacknowledged for its countdown, then runs up to the hard limit;
3. the lease > the hard time limit + the longest immediate-retry countdown of a task that can be re-sent:
   each attempt of a retry renews its lease when it starts, runs up to the hard limit, and waits the
   countdown before the next attempt renews it again.

``safe_settings_problems()`` lists what is wrong, naming the settings and the fix. Two places refuse to start
on it: Django's system checks (``manage.py`` commands, ``runserver``, ``migrate``) and the start of a Celery
worker or Beat (which do not run Django's checks).

More than one Beat sending the sweep is detected and warned about, whatever the broker: each Beat keeps a
heartbeat key in the status Redis (the broker's own when the broker is Redis, Sentinel included; beside RabbitMQ
or another broker, the Redis of ``REDIS_URL``: ``status.broker_redis``) under ``BEAT_KEY_PREFIX``, expiring after
``BEAT_HEARTBEAT_TTL_SECONDS``, and, on each beat, looks for another; the first sight of another logs one WARNING
naming both. Without any Redis (another broker and ``REDIS_URL`` empty) the Beat says at start that it cannot
tell.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import beat_init, worker_init
from django.conf import settings
from django.core import checks

from queueing import backoff
from queueing.conf import get_settings

logger = logging.getLogger(__name__)

#: Celery's default visibility timeout of the Redis transport, in seconds (when the setting leaves it out).
REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")

BEAT_KEY_PREFIX = "queueing:beat:"
BEAT_HEARTBEAT_SECONDS = 10.0
BEAT_HEARTBEAT_TTL_SECONDS = 30


@dataclass(frozen=True)
class Problem:
    """One inconsistency: a stable id, what is wrong (naming the settings and their values), and the fix."""

    id: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.hint}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def is_redis_broker(app: Celery) -> bool:
    url = str(app.conf.broker_url or "")
    return urlsplit(url.split(";")[0]).scheme in REDIS_SCHEMES


def visibility_timeout_seconds(app: Celery) -> float:
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS))


def longest_countdown_seconds(app: Celery, *, resendable_only: bool) -> tuple[float, str]:
    """The longest immediate-retry countdown of the registered ``RetryableTask`` tasks, and the task's name.

    ``resendable_only``: only the tasks whose failures are recorded (those the sweep can re-send as a retry).
    """
    from queueing.tasks import RetryableTask

    conf = get_settings()
    longest, name = 0.0, ""
    for task in list(app.tasks.values()):
        if not isinstance(task, RetryableTask) or task.name.startswith("celery."):
            continue  # Celery's own tasks (backend_cleanup …) are never recorded nor re-sent
        if resendable_only and not task.record_failures:
            continue
        retries = task.max_retries
        if not retries:
            continue
        delay = backoff.delay_seconds(
            retries_done=retries - 1, base_seconds=conf.backoff_base_seconds, max_seconds=conf.backoff_max_seconds
        )
        if delay > longest:
            longest, name = delay, task.name
    return longest, name


def longest_hard_limit_seconds(app: Celery) -> tuple[float | None, str]:
    """The longest hard time limit of any task (a task's own ``time_limit`` or the setting), and where it is set.

    ``None``: some task has no hard limit at all.
    """
    default = app.conf.task_time_limit
    longest: float | None = float(default) if default else None
    where = "CELERY_TASK_TIME_LIMIT"
    if longest is None:
        return None, where
    for task in list(app.tasks.values()):
        own = getattr(task, "time_limit", None)
        if own and float(own) > longest:
            longest, where = float(own), f"the time_limit of task {task.name}"
    return longest, where


_loading = threading.local()


def _project_app() -> Celery:
    """The project's Celery app with its task modules imported (their own time limits count).

    Importing them makes Celery's Django fix-up run Django's checks, this one included: that inner run checks
    the tasks registered so far instead of importing them again.
    """
    from celery.app import app_or_default

    from queueing.registry import celery_app

    if getattr(_loading, "active", False):
        return app_or_default()
    _loading.active = True
    try:
        return celery_app()
    finally:
        _loading.active = False


def safe_settings_problems(app: Celery | None = None) -> list[Problem]:
    """Every inconsistency between the time limits, the visibility timeout, the lease and the backoff."""
    app = app or _project_app()
    conf = get_settings()
    problems: list[Problem] = []
    soft, hard_setting = app.conf.task_soft_time_limit, app.conf.task_time_limit
    hard, hard_where = longest_hard_limit_seconds(app)
    if hard is None:
        problems.append(
            Problem(
                "queueing.E101",
                "CELERY_TASK_TIME_LIMIT is not set: a task may run forever, past its lease and the visibility timeout.",
                "set CELERY_TASK_TIME_LIMIT (seconds) to the longest a task may run, e.g. 600.",
            )
        )
        return problems
    if soft and hard_setting and float(soft) >= float(hard_setting):
        problems.append(
            Problem(
                "queueing.E102",
                f"CELERY_TASK_SOFT_TIME_LIMIT ({_seconds(soft)}) is not below CELERY_TASK_TIME_LIMIT "
                f"({_seconds(hard_setting)}): the task is killed before it hears SoftTimeLimitExceeded.",
                "set CELERY_TASK_SOFT_TIME_LIMIT below CELERY_TASK_TIME_LIMIT (e.g. 540 and 600).",
            )
        )
    if is_redis_broker(app):
        visibility = visibility_timeout_seconds(app)
        countdown, task = longest_countdown_seconds(app, resendable_only=False)
        if hard + countdown >= visibility:
            problems.append(
                Problem(
                    "queueing.E103",
                    f"the hard time limit ({_seconds(hard)}, {hard_where}) plus the longest immediate-retry "
                    f"countdown ({_seconds(countdown)}, task {task or '-'}; QUEUEING_BACKOFF_BASE, "
                    "QUEUEING_BACKOFF_MAX, QUEUEING_IMMEDIATE_RETRIES) is not below the broker's visibility timeout "
                    f"({_seconds(visibility)}, CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout']): Redis would "
                    "deliver the message "
                    "a second time while the first copy still waits or runs.",
                    "raise the visibility timeout above both, or lower CELERY_TASK_TIME_LIMIT or QUEUEING_BACKOFF_MAX.",
                )
            )
    countdown, task = longest_countdown_seconds(app, resendable_only=True)
    if conf.lease_seconds <= hard + countdown:
        problems.append(
            Problem(
                "queueing.E104",
                f"QUEUEING_LEASE_SECONDS ({_seconds(conf.lease_seconds)}) is not longer than the hard time limit "
                f"({_seconds(hard)}, {hard_where}) plus the longest immediate-retry countdown of a task the sweep "
                f"can re-send ({_seconds(countdown)}, task {task or '-'}): the sweep would take back a retry that "
                "is still running.",
                "raise QUEUEING_LEASE_SECONDS above both (default 1800), or lower CELERY_TASK_TIME_LIMIT.",
            )
        )
    return problems


# --- Django: manage.py refuses to run --------------------------------------------------------------------------


@checks.register("queueing")
def check_safe_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check`` (and every command that checks): the settings of ``safe_settings_problems``."""
    return [checks.Error(p.message, hint=p.hint, id=p.id) for p in safe_settings_problems()]


# --- Celery: a worker or Beat refuses to start -----------------------------------------------------------------


def refuse_to_start_if_unsafe(what: str) -> None:
    """Log each problem and exit (status 1): a Celery signal handler's exception would only be logged.

    A problem whose id is in ``SILENCED_SYSTEM_CHECKS`` is accepted knowingly, as Django's own checks are.
    """
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
    problems = [problem for problem in safe_settings_problems() if problem.id not in silenced]
    if not problems:
        return
    for problem in problems:
        logger.critical("%s refuses to start: %s", what, problem)
    raise SystemExit(f"{what} refuses to start: unsafe settings: " + " | ".join(map(str, problems)))


@worker_init.connect
def _check_at_worker_start(sender: Any = None, **_: Any) -> None:
    refuse_to_start_if_unsafe("worker")


@beat_init.connect
def _check_at_beat_start(sender: Any = None, **_: Any) -> None:
    refuse_to_start_if_unsafe("beat")
    BeatHeartbeat.start_in_status_redis()


# --- more than one Beat ---------------------------------------------------------------------------------------


class BeatHeartbeat:
    """This Beat's heartbeat key in the status Redis, and a warning when another Beat's key is there too."""

    def __init__(self, client: Any, *, identity: str | None = None) -> None:
        self.client = client
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self.warned: set[str] = set()

    @classmethod
    def start_in_status_redis(cls) -> BeatHeartbeat | None:
        """Start beating in a daemon thread, in the status Redis (the broker's, or ``REDIS_URL`` beside RabbitMQ).

        None, said once, when there is no Redis to beat in: a second Beat is then not detected.
        """
        from queueing.status import Unavailable, broker_redis

        try:
            client = broker_redis()
        except Unavailable as exc:
            logger.warning("beat: a second Beat cannot be detected, run exactly one: %s", exc)
            return None
        heartbeat = cls(client)
        atexit.register(heartbeat.stop_quietly)  # a Beat started again at once must not see itself as another
        thread = threading.Thread(target=heartbeat.run_forever, name="queueing beat heartbeat", daemon=True)
        thread.start()
        return heartbeat

    @property
    def key(self) -> str:
        return BEAT_KEY_PREFIX + self.identity

    def beat(self) -> list[str]:
        """Refresh this Beat's key; warn (once each) about other Beats. Returns the other Beats seen now."""
        value = json.dumps({"identity": self.identity, "started_at": self.started_at})
        self.client.set(self.key, value, ex=BEAT_HEARTBEAT_TTL_SECONDS)
        others = sorted(
            key.decode() if isinstance(key, bytes) else str(key)
            for key in self.client.scan_iter(match=BEAT_KEY_PREFIX + "*", count=100)
        )
        others = [key.removeprefix(BEAT_KEY_PREFIX) for key in others if key != self.key]
        others = [other for other in others if not self._gone(other)]
        for other in others:
            if other not in self.warned:
                self.warned.add(other)
                logger.warning(
                    "more than one Beat runs the sweep: this one (%s) and %s; each sends every sweep. "
                    "Run exactly one Beat: stop the other, or start `celery worker -B` on one node only",
                    self.identity,
                    other,
                )
        return others

    def _gone(self, other: str) -> bool:
        """A Beat of this host whose process no longer runs (killed before it could remove its key): forget it."""
        host, _, pid = other.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            self.client.delete(BEAT_KEY_PREFIX + other)
            return True
        except PermissionError:  # it runs, as another user
            return False
        return False

    def stop(self) -> None:
        self.client.delete(self.key)

    def stop_quietly(self) -> None:
        try:
            self.stop()
        except Exception as exc:  # noqa: BLE001  (exiting: Redis may be gone; the key expires by itself)
            logger.debug("beat heartbeat key not removed: %r", exc)

    def run_forever(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001  (Redis away: try again at the next beat)
                logger.debug("beat heartbeat failed: %r", exc)
            time.sleep(BEAT_HEARTBEAT_SECONDS)


@checks.register("queueing")
def check_api_tokens(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``QUEUEING_API_TOKENS``: every entry well formed, every name once (``queueing/tokens.py``)."""
    from queueing.tokens import configured

    return [
        checks.Error(
            f"QUEUEING_API_TOKENS: {problem}",
            hint="write each token as name:read:<token> or name:write:<token>, comma-separated",
            id="queueing.E110",
        )
        for problem in configured()[1]
    ]
