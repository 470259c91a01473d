"""Tasks for the workflow tests: steps of chains and chords that keep their results, an outage switch, errbacks.

Side effects go to Redis (``REDIS_URL``, which stays Redis whatever the broker), so that the test sees them
from any process. A step fails while ``down:<key>:<name>`` is set: the outage of the service it calls.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task, shared_task
from django.conf import settings

from queueing.exceptions import PermanentError
from queueing.tasks import RetryableTask


def store() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


class GatewayDown(RuntimeError):
    pass


@shared_task(name="tests.workflow_tasks.step", ignore_result=False)
def step(key: str, name: str) -> str:
    """One step of a workflow: fails while the outage of ``key`` lasts, else notes ``name`` and returns it."""
    client = store()
    client.incr(f"runs:{key}:{name}")
    if client.exists(f"down:{key}:{name}"):
        raise GatewayDown(f"{name}: gateway down")
    client.rpush(f"steps:{key}", name)
    return name


@shared_task(name="tests.workflow_tasks.collect", ignore_result=False)
def collect(results: list[Any], key: str) -> list[Any]:
    """A chord body: notes each time it runs, with the header's results."""
    store().rpush(f"bodies:{key}", repr(sorted(results)))
    return sorted(results)


@shared_task(name="tests.workflow_tasks.note_error", ignore_result=True)
def note_error(task_id: str, key: str) -> None:
    """An error callback (``link_error``): Celery calls it with the failed task's id."""
    store().rpush(f"errors:{key}", task_id)


@shared_task(name="tests.workflow_tasks.give_up", ignore_result=False)
def give_up(key: str) -> None:
    """Fails with a permanent error: dead at once."""
    store().incr(f"runs:{key}:give_up")
    raise PermanentError("recipient does not exist")


@shared_task(name="tests.workflow_tasks.describe_call", ignore_result=False, bind=True)
def describe_call(self: Task, key: str) -> dict[str, Any]:
    """Fails while the outage lasts; then returns what its request looked like (ids, limits, headers)."""
    client = store()
    client.incr(f"runs:{key}:describe")
    if client.exists(f"down:{key}:describe"):
        raise GatewayDown("gateway down")
    request = self.request
    return {
        "id": request.id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "timelimit": list(request.timelimit or ()),
        "expires": request.expires,
        "order_ref": request.get("order_ref"),
        "priority": (request.delivery_info or {}).get("priority"),
    }


# --- tasks that are not RetryableTask ---------------------------------------------------------------------


class OwnBase(Task):
    """A task base class of someone else's: it counts its own failures."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        store().incr(f"own_on_failure:{args[0]}")


class CoveredBase(RetryableTask, OwnBase):
    """The documented way to cover a task with its own base class: RetryableTask first."""


@shared_task(name="tests.workflow_tasks.own_base_covered", base=CoveredBase, ignore_result=True)
def own_base_covered(key: str) -> None:
    store().incr(f"runs:{key}:own")
    if store().exists(f"down:{key}:own"):
        raise GatewayDown("gateway down")


@shared_task(name="tests.thirdparty.flaky", base=Task, ignore_result=True)
def thirdparty_flaky(key: str) -> str:
    """A third-party task: a plain ``celery.Task``, no immediate retries, covered only by name."""
    store().incr(f"runs:{key}:thirdparty")
    if store().exists(f"down:{key}:thirdparty"):
        raise GatewayDown("gateway down")
    store().rpush(f"steps:{key}", "thirdparty")
    return "ok"


@shared_task(name="tests.thirdparty.uncovered", base=Task, ignore_result=True)
def thirdparty_uncovered(key: str) -> None:
    store().incr(f"runs:{key}:uncovered")
    raise GatewayDown("gateway down")
