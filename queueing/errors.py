"""Which error policy a task's call is under, and what an error is under it (``policy.classify``).

A task's own ``retry_policy`` (``RetryableTask``, or any task class that declares one) over its queue's default
(``QUEUEING["ERROR_POLICIES"]``, dotted paths imported once); the kinds exception classes declare come under
both (``policy.declared_kind``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Task
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from queueing import policy
from queueing.conf import get_settings

logger = logging.getLogger(__name__)


def classify(task: Task, exc: BaseException) -> policy.ClassifiedError:
    """What ``exc`` is for ``task``: its kind, whether to retry at once, the sweep's wait, the words."""
    conf = get_settings()
    limits = policy.HintLimits(max_seconds=conf.retry_after_max_seconds, jitter_ratio=conf.retry_after_jitter_ratio)
    return policy.classify(exc, error_policy_of(task), limits=limits)


def queue_of(task: Task) -> str:
    """The queue of the call ``task`` runs (its delivery), else the task's own, else the default queue."""
    delivery = task.request.delivery_info or {}
    return str(delivery.get("routing_key") or getattr(task, "queue", None) or task.app.conf.task_default_queue)


def error_policy_of(task: Task) -> policy.ErrorPolicy:
    """A task's ``retry_policy`` (any task class may declare one) over its queue's default."""
    declared = getattr(type(task), "retry_policy", None)  # on the class: a function there is not bound
    own = declared() if callable(declared) else declared
    return (own or policy.ErrorPolicy()).over(queue_error_policy(queue_of(task)))


def classify_safely(task: Task, exc: BaseException) -> policy.ClassifiedError:
    """What ``exc`` is for ``task``; a broken error policy (a bad ``ERROR_POLICIES`` path) neither hides nor
    loses the error: it is logged, and the defaults decide."""
    try:
        own = getattr(task, "classify", None)  # RetryableTask.classify, which a test or subclass may replace
        return own(exc) if callable(own) else classify(task, exc)
    except Exception:
        logger.exception(
            "task %s %s: its error policy failed; %r taken by the defaults", task.name, task.request.id, exc
        )
        return policy.classify(exc, policy.ErrorPolicy(), limits=policy.HintLimits())


def queue_error_policy(queue: str) -> policy.ErrorPolicy:
    """The default error policy of a queue (``QUEUEING["ERROR_POLICIES"]``); empty when it has none."""
    path = _queue_policy_paths(get_settings().error_policies).get(queue)
    if not path:
        return policy.ErrorPolicy()
    found = _import_error_policy(path)
    loaded = found() if callable(found) else found  # a function: called each time (it may read settings)
    if not isinstance(loaded, policy.ErrorPolicy):
        raise ImproperlyConfigured(
            f"QUEUEING['ERROR_POLICIES'] names {path!r}, which is {type(loaded).__name__}, not an ErrorPolicy"
        )
    return loaded


def _queue_policy_paths(entries: tuple[str, ...]) -> dict[str, str]:
    paths = {}
    for entry in entries:
        queue, _, path = entry.partition("=")
        if not (queue.strip() and path.strip()):
            raise ImproperlyConfigured(
                f"QUEUEING['ERROR_POLICIES'] entry {entry!r} is not queue=dotted.path; "
                "e.g. 'whatsapp-send=myapp.policies.whatsapp'"
            )
        paths[queue.strip()] = path.strip()
    return paths


@functools.cache
def _import_error_policy(path: str) -> Any:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"QUEUEING['ERROR_POLICIES'] names {path!r}, which cannot be imported ({exc}); "
            "give the dotted path of an ErrorPolicy or of a function returning one"
        ) from exc
