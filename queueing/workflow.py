"""Workflow fidelity: the whole Celery call kept on the row, sent again as the same call, failed when given up.

``docs/workflows.md`` states the semantics primitive by primitive. In short: a job the system will still
retry is *pending* for its workflow; a clone is the same call (same task id, same chain, callbacks, error
callbacks, group/chord membership, ids, expiry, time limits, routing, priority and headers), so when it
succeeds Celery's own machinery goes on as if the first call had; when the job is given up, ``fail_workflow``
tells the workflow (error callbacks, chord error, the chain's results, the stored result), once.

Three pieces, each a plain function:

- ``capture_call(task, request)``: what made the call, as JSON only (stored in ``FailedJob.options``).
- ``send_options(options)``: the ``apply_async`` options that make the same call again.
- ``fail_workflow(job)``: the failure side of a given-up job, through the result backend's public
  ``mark_as_failure`` (which runs the error callbacks, returns the chord part and fails the chain).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.app import task as celery_task
from celery.app.task import Context
from django.utils.dateparse import parse_datetime

from queueing import sensitive

if TYPE_CHECKING:
    from queueing.models import FailedJob

logger = logging.getLogger(__name__)

#: ``Context.as_execution_options()`` keys kept as they are: the workflow and the call's own limits.
KEPT_OPTIONS = (
    "root_id",
    "parent_id",
    "group_id",
    "group_index",
    "shadow",
    "chord",
    "chain",
    "link",
    "link_error",
    "expires",
    "soft_time_limit",
    "time_limit",
    "replaced_task_nesting",
)

#: Headers the retry system adds itself (``registry``); never kept as the caller's own.
OWN_HEADER_PREFIX = "queueing_"


def jsonable(value: Any) -> bool:
    """Whether ``value`` survives the standard JSON encoder unchanged in kind (what a JSONField stores)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def capture_call(task: Task, request: Context) -> dict[str, Any]:
    """Everything that made the running call, beyond its name and arguments, as JSON only.

    A value that JSON cannot hold is left out, named under ``"dropped"`` and logged: the row then says
    which part of the call a re-send cannot keep.
    """
    execution = request.as_execution_options()
    call: dict[str, Any] = {key: execution.get(key) for key in KEPT_OPTIONS}
    delivery = request.delivery_info or {}
    call["priority"] = delivery.get("priority")
    call["exchange"] = delivery.get("exchange") or None
    call["routing_key"] = delivery.get("routing_key")
    # The call's own choice, else the task's (Celery's rule; the stubs do not know the function yet).
    call["ignore_result"] = bool(celery_task.get_actual_ignore_result(task, request))  # type: ignore[attr-defined]
    headers = {k: v for k, v in (execution.get("headers") or {}).items() if not str(k).startswith(OWN_HEADER_PREFIX)}
    call["headers"] = headers or None
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in call.items():
        if value in (None, [], {}, ""):
            continue
        if jsonable(value):
            kept[key] = value
        else:
            dropped.append(key)
    if dropped:
        logger.warning("task %s[%s]: %s not JSON; a re-send goes without", task.name, request.id, dropped)
        kept["dropped"] = dropped
    return kept


def send_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``apply_async`` options that make the stored call again (without task id, queue and headers).

    ``queue`` and the task id come from the row's own columns; the caller merges the claim headers into
    ``options["headers"]``. A call stored before this module existed holds only ``priority``: it is sent
    as before.
    """
    sent = {key: options[key] for key in KEPT_OPTIONS if options.get(key) is not None}
    if options.get("priority") is not None:
        sent["priority"] = options["priority"]
    if options.get("exchange"):
        # A named exchange and its routing key, as Celery's own retry sends them; the default exchange ("")
        # routes by queue name, which the row's ``queue`` column gives.
        sent["exchange"] = options["exchange"]
        if options.get("routing_key"):
            sent["routing_key"] = options["routing_key"]
    if "ignore_result" in options:
        sent["ignore_result"] = bool(options["ignore_result"])
    return sent


def user_headers(options: dict[str, Any]) -> dict[str, Any]:
    """The caller's own message headers (correlation ids and the like), as stored."""
    return dict(options.get("headers") or {})


def expires_at(options: dict[str, Any]) -> datetime | None:
    """When the stored call expires (Celery's ``expires``), or ``None``."""
    value = options.get("expires")
    if not value:
        return None
    return parse_datetime(str(value))


def expired(options: dict[str, Any], *, now: datetime) -> bool:
    """Whether the stored call's deadline has passed: such a job is never sent again."""
    deadline = expires_at(options)
    return deadline is not None and deadline <= now


def has_workflow(options: dict[str, Any]) -> bool:
    """Whether anything outside the row waits for this job's outcome (callbacks, chain, chord, a result)."""
    waits = ("link_error", "chain", "chord")
    return any(options.get(key) for key in waits) or options.get("ignore_result") is False


# --- the failure side of a given-up job -------------------------------------------------------------------


def failure_context(job: FailedJob) -> Context:
    """The request of the original call, rebuilt from the row, as Celery's result backend reads it.

    The rest of the call (callbacks, chain) is decrypted for the workflow to go on; the call's own sensitive
    arguments stay masked (the backend may store them: ``result_extended``).
    """
    options = job.options if isinstance(job.options, dict) else {}
    try:
        options = sensitive.reveal(options)
    except sensitive.Undecryptable:
        options = sensitive.shown(options)
    return Context(
        id=job.origin_task_id,
        task=job.task_name,
        args=list(sensitive.shown(job.args or [])),
        kwargs=dict(sensitive.shown(job.kwargs or {})),
        root_id=options.get("root_id") or job.origin_task_id,
        parent_id=options.get("parent_id"),
        group=options.get("group_id"),
        group_index=options.get("group_index"),
        chord=options.get("chord"),
        chain=options.get("chain"),
        callbacks=options.get("link"),
        errbacks=options.get("link_error"),
        ignore_result=options.get("ignore_result", True),
        delivery_info={"routing_key": options.get("routing_key") or job.queue, "priority": options.get("priority")},
        called_directly=False,
    )


def stored_exception(job: FailedJob) -> Exception:
    """The job's last error as an exception of the same (dotted) name, for the result backend and errbacks.

    The class is rebuilt by name, never imported from the stored path (the row is data, not code).
    """
    module, _, name = (job.exception_class or "builtins.Exception").rpartition(".")
    cls: type[Exception] = type(name or "Exception", (Exception,), {"__module__": module or "builtins"})
    return cls(job.exception_message)


def fail_workflow(job: FailedJob) -> None:
    """Tell the workflow a job was given up: error callbacks, chord error, chain results, the stored FAILURE.

    Called once per job, by the lifecycle verb that gives it up (after the commit). A job whose own clone
    failed for the last time is not passed here: that clone re-raised, and Celery did the same in the worker.
    Never raises: the job's state is already written; a broker or backend error is logged.
    """
    options = job.options if isinstance(job.options, dict) else {}  # a tampered row: no workflow to tell
    if not has_workflow(options):
        return
    from queueing.registry import celery_app

    app = celery_app()
    context = failure_context(job)
    store = not options.get("ignore_result", True)
    try:
        app.backend.mark_as_failure(
            job.origin_task_id,
            stored_exception(job),
            traceback=job.traceback or None,
            request=context,
            store_result=store and not _backend_disabled(app),
            call_errbacks=True,
        )
    except Exception:
        logger.exception("job %s: the workflow could not be told it was given up", job.pk)
        return
    logger.info("job %s (%s): workflow told it failed (%s)", job.pk, job.task_name, job.reason_code or job.status)


def _backend_disabled(app: Any) -> bool:
    return str(app.backend.as_uri()).startswith("disabled")
